//! Disk errors under live traffic, through real sockets: a node streams samples over the lab
//! broker while the gateway's disk buffer starts failing (EIO from a failing writer, a full
//! disk, no file descriptors left) and then works again. Every sample either reaches the hub,
//! once and in order, or is counted as dropped; while the disk fails the gateway says so on
//! `/metrics` and `/readyz`, and it recovers on its own.

use std::io::Write;

use serialport::SerialPort;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    burst_node, gateway_config, http_get, serve_ops, start_gateway_with, start_hub, wait_until,
    within,
};
use futures_util::StreamExt;
use gateway::DropReason;
use gateway::buffer::{Fault, FaultSwitch, FaultyFs, FsFactory, RealFs};
use gateway::source::serial::SerialConfig;
use protocol::{Frame, Reading, golden};
use simulators::node::run_mqtt_node;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 1200;
/// Samples at the hub before the fault goes on.
const BEFORE_FAULT: u32 = 200;
/// Failed disk operations (first attempt and retries) to see before the fault goes off.
const FAILURES: u64 = 4;

/// The value of `metric` for this gateway in the Prometheus text.
fn metric(text: &str, metric: &str) -> Option<u64> {
    text.lines()
        .find(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A gateway on the hub's broker whose disk buffer fails when `switch` says.
fn faulty_gateway_config(
    port: u16,
    lab: &str,
    gw: &str,
    dir: &std::path::Path,
    switch: &FaultSwitch,
) -> anyhow::Result<gateway::GatewayConfig> {
    let mut config = gateway_config(port, lab, gw, &dir.join("buffer"))?;
    let faults = switch.clone();
    config.buffer_fs =
        FsFactory::new(move || Box::new(FaultyFs::new(RealFs::new(), faults.clone())));
    // Small segments, so the stream rolls to new files (what EMFILE stops) during the fault.
    config.buffer.segment_bytes = 16 << 10;
    Ok(config)
}

/// Waits until the gateway has found the disk failing and retried it a few times.
async fn wait_for_failing_storage(stats: &gateway::GatewayStats) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(20),
        "the gateway to find the disk failing and retry",
        || {
            let now = stats.snapshot();
            now.storage_failing == 1 && now.storage_errors >= FAILURES
        },
    )
    .await
}

async fn a_disk_error_mid_stream_loses_nothing_silently(
    fault: Fault,
    lab: &str,
    node: u64,
) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let gw = "gw-disk";
    let switch = FaultSwitch::new();
    let config = faulty_gateway_config(port, lab, gw, data.path(), &switch)?;
    let gateway = start_gateway_with(config, &cancel).await?;
    let stats = gateway.stats().clone();
    let ops = serve_ops(&gateway, lab, gw, &cancel).await?;
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/v1/stream?lab={lab}",
        hub.http_addr()
    ))
    .await?;

    let mut node_config = burst_node(port, node, "mill-disk", 7, SAMPLES)?;
    node_config.tick_interval = Duration::from_micros(500);
    let sender = tokio::spawn(run_mqtt_node(node_config, cancel.clone()));
    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: lab.parse()?,
        machine: "mill-disk".parse()?,
    };
    wait_until(Duration::from_secs(20), "samples before the fault", || {
        twins.get(&key).is_some_and(|t| t.last_seq >= BEFORE_FAULT)
    })
    .await?;

    switch.set(Some(fault));
    wait_for_failing_storage(&stats).await?;
    let (status, body) = http_get(ops, "/readyz").await?;
    assert_eq!(status, 503, "not ready while the disk fails: {body}");
    let (_, text) = http_get(ops, "/metrics").await?;
    assert_eq!(metric(&text, "demolab_gateway_storage_failing"), Some(1));
    let node_progress = stats.snapshot().frames_received;
    assert!(
        node_progress < u64::from(SAMPLES),
        "the fault came mid-stream ({node_progress} frames taken)"
    );
    switch.set(None);

    let report = within(Duration::from_secs(60), "the node", sender).await???;
    assert_eq!(report.sent, SAMPLES);
    wait_until(
        Duration::from_secs(30),
        "the last sample at the hub",
        || twins.get(&key).is_some_and(|t| t.last_seq == SAMPLES),
    )
    .await?;
    let seqs = collect_seqs(&mut stream, SAMPLES as usize).await?;

    let snapshot = stats.snapshot();
    let lost: u64 = DropReason::ALL
        .iter()
        .map(|reason| snapshot.dropped(*reason))
        .sum();
    let delivered = twins.get(&key).context("twin")?.samples;
    assert_eq!(
        delivered + lost,
        u64::from(SAMPLES),
        "delivered + counted lost = sent"
    );
    assert_eq!(
        lost, 0,
        "a short disk error loses nothing: {:?}",
        snapshot.drops
    );
    assert_eq!(
        seqs,
        (1..=SAMPLES).collect::<Vec<_>>(),
        "every sample once, in order"
    );
    assert!(
        fault_injected(&switch),
        "the fault must have hit the gateway's disk operations"
    );
    assert_eq!(
        (snapshot.storage_failing, snapshot.storage_held),
        (0, 0),
        "recovered on its own"
    );
    assert!(snapshot.storage_recoveries >= 1);
    let (status, _) = http_get(ops, "/readyz").await?;
    assert_eq!(status, 200, "ready again");
    let (_, text) = http_get(ops, "/metrics").await?;
    assert_eq!(metric(&text, "demolab_gateway_storage_failing"), Some(0));
    assert!(metric(&text, "demolab_gateway_storage_errors_total") >= Some(FAILURES));

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

fn fault_injected(switch: &FaultSwitch) -> bool {
    switch.injected() >= FAILURES
}

/// The node sequence numbers of the machine's samples on the hub's stream, until `count`.
async fn collect_seqs(
    stream: &mut (
             impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
             + Unpin
         ),
    count: usize,
) -> anyhow::Result<Vec<u32>> {
    let mut seqs = Vec::new();
    within(
        Duration::from_secs(60),
        "every sample on the stream",
        async {
            while seqs.len() < count {
                let Some(message) = stream.next().await else {
                    anyhow::bail!("stream closed after {} samples", seqs.len())
                };
                let Message::Text(text) = message? else {
                    continue;
                };
                let change: serde_json::Value = serde_json::from_str(text.as_str())?;
                anyhow::ensure!(change["kind"] != "lagged", "the stream lagged");
                if let (Some("sample" | "historical"), Some(seq)) =
                    (change["kind"].as_str(), change["seq"].as_u64())
                {
                    seqs.push(seq as u32);
                }
            }
            Ok(())
        },
    )
    .await??;
    Ok(seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_from_a_failing_writer_mid_stream_loses_nothing() -> anyhow::Result<()> {
    a_disk_error_mid_stream_loses_nothing_silently(Fault::Io, "lab-eio", 0xd15c1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_mid_stream_loses_nothing() -> anyhow::Result<()> {
    a_disk_error_mid_stream_loses_nothing_silently(Fault::NoSpace, "lab-full-disk", 0xd15c2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_mid_stream_loses_nothing() -> anyhow::Result<()> {
    a_disk_error_mid_stream_loses_nothing_silently(Fault::TooManyFiles, "lab-emfile", 0xd15c3).await
}

fn framed(frame: &Frame) -> Vec<u8> {
    let mut buf = [0u8; protocol::cobs::MAX_WIRE_LEN];
    protocol::cobs::encode_framed(frame, &mut buf)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

fn serial_samples(seqs: std::ops::RangeInclusive<u32>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for seq in seqs {
        let mut frame = golden::samples();
        if let Frame::Samples(s) = &mut frame {
            s.seq = seq;
            s.readings[0] = Reading {
                index: 0,
                value: seq as f32,
            };
        }
        bytes.extend(framed(&frame));
    }
    bytes
}

/// A serial line has no redelivery: the samples the gateway read while the disk was full live
/// only in its memory, and must still all arrive once the disk has room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_samples_read_while_the_disk_is_full_are_kept_and_arrive_in_order()
-> anyhow::Result<()> {
    const SERIAL: u32 = 400;
    const BEFORE: u32 = 100;
    let lab = "lab-serial-disk";
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let (mut master, slave) = serialport::TTYPort::pair()?;
    let slave_path = slave
        .name()
        .ok_or_else(|| anyhow::anyhow!("pty without a name"))?;
    let switch = FaultSwitch::new();
    let port = hub.mqtt_addr().port();
    let mut config = faulty_gateway_config(port, lab, "gw-serial-disk", data.path(), &switch)?;
    config.serial = Some(SerialConfig {
        ports: vec![slave_path.into()],
        ..SerialConfig::default()
    });
    config.nodes.insert(golden::NODE, "serial-disk".parse()?);
    let cancel = CancellationToken::new();
    // Serial readers run on blocking threads: stop them even when the test fails early.
    let _stop_on_failure = cancel.clone().drop_guard();
    let gateway = start_gateway_with(config, &cancel).await?;
    let stats = gateway.stats().clone();
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/v1/stream?lab={lab}",
        hub.http_addr()
    ))
    .await?;
    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: lab.parse()?,
        machine: "serial-disk".parse()?,
    };

    let mut first = framed(&golden::hello());
    first.extend(serial_samples(1..=BEFORE));
    master.write_all(&first)?;
    wait_until(
        Duration::from_secs(20),
        "serial samples before the fault",
        || {
            twins
                .get(&key)
                .is_some_and(|t| t.samples == u64::from(BEFORE))
        },
    )
    .await?;

    switch.set(Some(Fault::NoSpace));
    master.write_all(&serial_samples(BEFORE + 1..=SERIAL))?;
    wait_for_failing_storage(&stats).await?;
    assert!(
        stats.snapshot().storage_held >= 1,
        "a serial sample waits in memory"
    );
    switch.set(None);

    wait_until(
        Duration::from_secs(30),
        "every serial sample at the hub",
        || twins.get(&key).is_some_and(|t| t.last_seq == SERIAL),
    )
    .await?;
    let seqs = collect_seqs(&mut stream, SERIAL as usize).await?;
    assert_eq!(
        seqs,
        (1..=SERIAL).collect::<Vec<_>>(),
        "every sample once, in order"
    );
    let snapshot = stats.snapshot();
    for reason in DropReason::ALL {
        assert_eq!(snapshot.dropped(reason), 0, "gateway drops for {reason:?}");
    }
    assert_eq!((snapshot.storage_failing, snapshot.storage_held), (0, 0));

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

/// Stopped while the disk still fails, the gateway counts exactly the serial samples it read and
/// could not store: they exist nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_samples_held_when_the_gateway_stops_on_a_failing_disk_are_counted_lost()
-> anyhow::Result<()> {
    const BEFORE: u32 = 50;
    const DURING: u32 = 40;
    let lab = "lab-serial-stop";
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let (mut master, slave) = serialport::TTYPort::pair()?;
    let slave_path = slave
        .name()
        .ok_or_else(|| anyhow::anyhow!("pty without a name"))?;
    let switch = FaultSwitch::new();
    let port = hub.mqtt_addr().port();
    let mut config = faulty_gateway_config(port, lab, "gw-serial-stop", data.path(), &switch)?;
    config.serial = Some(SerialConfig {
        ports: vec![slave_path.into()],
        ..SerialConfig::default()
    });
    config.nodes.insert(golden::NODE, "serial-stop".parse()?);
    let cancel = CancellationToken::new();
    let _stop_on_failure = cancel.clone().drop_guard();
    let gateway = start_gateway_with(config, &cancel).await?;
    let stats = gateway.stats().clone();
    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: lab.parse()?,
        machine: "serial-stop".parse()?,
    };

    let mut first = framed(&golden::hello());
    first.extend(serial_samples(1..=BEFORE));
    master.write_all(&first)?;
    wait_until(
        Duration::from_secs(20),
        "serial samples before the fault",
        || {
            twins
                .get(&key)
                .is_some_and(|t| t.samples == u64::from(BEFORE))
        },
    )
    .await?;

    switch.set(Some(Fault::Io));
    master.write_all(&serial_samples(BEFORE + 1..=BEFORE + DURING))?;
    wait_for_failing_storage(&stats).await?;
    // The gateway has read every byte off the line (into its memory or its frame channel).
    wait_until(Duration::from_secs(10), "the serial line drained", || {
        master.bytes_to_write().is_ok_and(|n| n == 0)
    })
    .await?;
    cancel.cancel();
    gateway.shutdown().await?;

    let snapshot = stats.snapshot();
    let delivered = twins.get(&key).context("twin")?.samples;
    let lost = snapshot.dropped(DropReason::StorageFailed);
    assert_eq!(
        (delivered, lost),
        (u64::from(BEFORE), u64::from(DURING)),
        "delivered + counted lost = sent, every loss under storage_failed: {:?}",
        snapshot.drops
    );
    hub.shutdown().await?;
    Ok(())
}
