//! Faults between a lab and the hub, through real sockets: the gateway's uplink is cut while a
//! node keeps sampling; the disk buffer holds every sample and replays it, flagged historical,
//! in order; a full buffer drops exactly what it reports.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    CuttableProxy, burst_node, collect_stream_samples, gateway_config, start_gateway_with,
    start_hub, wait_until, within,
};
use gateway::{DropReason, MqttEndpoint};
use simulators::node::run_mqtt_node;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uplink_cut_loses_nothing_and_the_backlog_arrives_in_order_flagged_historical()
-> anyhow::Result<()> {
    const SAMPLES: u32 = 4000;
    const BEFORE_CUT: u32 = 300;
    const DURING_CUT: u64 = 3000;
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let proxy = CuttableProxy::start(hub.mqtt_addr()).await?;
    let cancel = CancellationToken::new();
    let mut config = gateway_config(port, "lab-cut", "gw-cut", &data.path().join("buffer"))?;
    config.uplink = MqttEndpoint {
        host: "127.0.0.1".into(),
        port: proxy.addr().port(),
    };
    config.primary_host = Some("demolab-hub".parse()?);
    let gateway = start_gateway_with(config, &cancel).await?;
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/v1/stream?lab=lab-cut",
        hub.http_addr()
    ))
    .await?;

    let mut node = burst_node(port, 0xc07, "mill-cut", 11, SAMPLES)?;
    node.tick_interval = Duration::from_micros(500);
    let sender = tokio::spawn(run_mqtt_node(node, cancel.clone()));

    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-cut".parse()?,
        machine: "mill-cut".parse()?,
    };
    wait_until(Duration::from_secs(20), "samples before the cut", || {
        twins.get(&key).is_some_and(|t| t.last_seq >= BEFORE_CUT)
    })
    .await?;
    proxy.cut();
    let stats = gateway.stats().clone();
    let at_cut = stats.snapshot().frames_received;
    wait_until(
        Duration::from_secs(30),
        "thousands of samples during the cut",
        || stats.snapshot().frames_received >= at_cut + DURING_CUT,
    )
    .await?;
    proxy.restore();
    let report = within(Duration::from_secs(60), "the node", sender).await???;
    assert_eq!(report.sent, SAMPLES);

    let seen: Vec<(String, u32)> =
        collect_stream_samples(&mut stream, SAMPLES as usize, Duration::from_secs(60))
            .await?
            .into_iter()
            .map(|(_, kind, seq)| (kind, seq))
            .collect();
    let seqs: Vec<u32> = seen.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=SAMPLES).collect::<Vec<_>>(),
        "every sample exactly once, in order"
    );
    let historical = seen.iter().filter(|(kind, _)| kind == "historical").count() as u64;
    assert!(
        historical >= DURING_CUT / 2,
        "the backlog is flagged historical ({historical})"
    );
    let twin = twins.get(&key).context("twin")?;
    assert_eq!(
        (twin.samples, twin.historical_samples),
        (u64::from(SAMPLES), historical)
    );
    let snapshot = stats.snapshot();
    assert!(snapshot.uplink_sessions >= 2, "the uplink reconnected");
    for reason in DropReason::ALL {
        assert_eq!(snapshot.dropped(reason), 0, "gateway drops for {reason:?}");
    }

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_the_oldest_and_reports_exactly_what_the_hub_misses()
-> anyhow::Result<()> {
    const SAMPLES: u32 = 3000;
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let proxy = CuttableProxy::start(hub.mqtt_addr()).await?;
    let cancel = CancellationToken::new();
    let mut config = gateway_config(port, "lab-full", "gw-full", &data.path().join("buffer"))?;
    config.uplink = MqttEndpoint {
        host: "127.0.0.1".into(),
        port: proxy.addr().port(),
    };
    config.buffer.max_bytes = 64 << 10;
    config.buffer.segment_bytes = 8 << 10;
    let gateway = start_gateway_with(config, &cancel).await?;

    // The whole run happens while the hub is unreachable: far more than 64 KiB of samples.
    proxy.cut();
    let report = run_mqtt_node(
        burst_node(port, 0xf11, "mill-full", 5, SAMPLES)?,
        cancel.clone(),
    )
    .await?;
    assert_eq!(report.sent, SAMPLES);
    let stats = gateway.stats().clone();
    wait_until(
        Duration::from_secs(20),
        "the gateway to take every sample",
        || stats.snapshot().frames_received > u64::from(SAMPLES),
    )
    .await?;
    let dropped = stats.snapshot().dropped(DropReason::BufferFull);
    assert!(dropped > 0, "the cap must have been hit");
    proxy.restore();

    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-full".parse()?,
        machine: "mill-full".parse()?,
    };
    wait_until(
        Duration::from_secs(30),
        "the last sample at the hub",
        || twins.get(&key).is_some_and(|t| t.last_seq == SAMPLES),
    )
    .await?;
    let received = twins.get(&key).context("twin")?.samples;
    assert_eq!(
        received + dropped,
        u64::from(SAMPLES),
        "dropped = missing at the hub"
    );

    let mut by_reason = BTreeMap::new();
    for (reason, count) in stats.snapshot().drops {
        if count > 0 {
            by_reason.insert(reason.as_str(), count);
        }
    }
    assert_eq!(by_reason, BTreeMap::from([("buffer_full", dropped)]));
    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
