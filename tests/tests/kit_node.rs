//! Host-run firmware (the real runtime and drivers on simulated chips) → a real pseudo-terminal or
//! MQTT over TCP (the firmware's own client) → the gateway → hub. The node's link is pulled for
//! longer than its ring holds: every sample the ring kept arrives, in order, and the overflow is
//! reported with an exact count.

use std::time::Duration;

use demolab_tests::{gateway_config, start_gateway_with, start_hub, wait_until};
use futures_util::StreamExt;
use gateway::DropReason;
use gateway::source::serial::SerialConfig;
use protocol::NodeId;
use serialport::SerialPort;
use simulators::kit_node::{
    KitNodeConfig, RING_FRAMES, spawn_mqtt_kit_node, spawn_serial_kit_node,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 400;

enum Link {
    Serial,
    Mqtt,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_serial_cable_loses_only_what_the_node_reports_and_the_rest_arrives_in_order()
-> anyhow::Result<()> {
    outage_is_reported_exactly(Link::Serial).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_mqtt_connection_loses_only_what_the_node_reports_and_the_rest_arrives_in_order()
-> anyhow::Result<()> {
    outage_is_reported_exactly(Link::Mqtt).await
}

async fn outage_is_reported_exactly(link: Link) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let (mut master, slave) = serialport::TTYPort::pair()?;
    master.set_timeout(Duration::from_millis(2))?;
    let slave_path = slave
        .name()
        .ok_or_else(|| anyhow::anyhow!("pty without a name"))?;
    let cancel = CancellationToken::new();
    // Serial readers run on blocking threads: stop them even when the test fails early, or the
    // runtime would wait for them forever.
    let _stop_on_failure = cancel.clone().drop_guard();
    let mut config = gateway_config(
        hub.mqtt_addr().port(),
        "lab-tty",
        "gw-tty",
        &data.path().join("buffer"),
    )?;
    config.serial = Some(SerialConfig {
        ports: vec![slave_path.into()],
        ..SerialConfig::default()
    });
    let gateway = start_gateway_with(config, &cancel).await?;
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/v1/stream?lab=lab-tty",
        hub.http_addr()
    ))
    .await?;

    let node_config = KitNodeConfig {
        node: NodeId(0x7717),
        machine: "mill-tty".parse()?,
        boot: 1,
        seed: 9,
        sample_period: Duration::from_secs(1),
        tick_interval: Duration::from_millis(1),
        max_samples: Some(SAMPLES),
    };
    let node = match link {
        Link::Serial => spawn_serial_kit_node(node_config, master),
        Link::Mqtt => spawn_mqtt_kit_node(node_config, hub.mqtt_addr()),
    };
    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-tty".parse()?,
        machine: "mill-tty".parse()?,
    };
    wait_until(Duration::from_secs(20), "samples over the link", || {
        twins.get(&key).is_some_and(|t| t.last_seq >= 1) && node.recorded() >= 50
    })
    .await?;
    node.unplug();
    let at_unplug = node.recorded();
    let outage = 3 * RING_FRAMES as u32;
    wait_until(
        Duration::from_secs(20),
        "an outage longer than the ring",
        || node.recorded() >= at_unplug + outage,
    )
    .await?;
    node.plug();
    wait_until(Duration::from_secs(30), "the node to finish", || {
        node.is_finished()
    })
    .await?;
    let report = node.join();
    assert_eq!(report.recorded, SAMPLES);
    let stats = gateway.stats().clone();
    wait_until(
        Duration::from_secs(20),
        "the last sample at the hub",
        || twins.get(&key).is_some_and(|t| t.last_seq == SAMPLES),
    )
    .await?;

    let delivered = twins.get(&key).map_or(0, |t| t.samples);
    let reported = stats.snapshot().dropped(DropReason::NodeBufferOverflow);
    assert!(reported > 0, "the ring must have overflowed");
    let snapshot = stats.snapshot();
    assert_eq!(
        delivered + reported,
        u64::from(SAMPLES),
        "delivered + reported lost = sampled; gateway {snapshot:?}; hub stale {} unknown {}",
        hub.stats().dropped(hub::stats::IngestDrop::StaleSequence),
        hub.stats().dropped(hub::stats::IngestDrop::UnknownTwin)
    );

    // In order, each once: the stream saw strictly rising sequence numbers.
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < delivered {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next()).await?;
        let Some(Ok(Message::Text(text))) = message else {
            anyhow::bail!("stream ended")
        };
        let change: serde_json::Value = serde_json::from_str(text.as_str())?;
        if change["kind"] == "sample" {
            seqs.push(change["seq"].as_u64().unwrap_or_default());
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    let twin = twins.get(&key).ok_or_else(|| anyhow::anyhow!("twin"))?;
    let (_, power) = report
        .last_readings
        .iter()
        .find(|(i, _)| *i == 0)
        .copied()
        .unwrap_or_default();
    assert_eq!(
        twin.value("spindle.power_w"),
        Some(f64::from(power)),
        "the twin holds the last sample"
    );

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
