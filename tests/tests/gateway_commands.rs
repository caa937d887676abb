//! The hub side of Sparkplug talks to nodes: a DCMD reaches the simulated node as a node command,
//! and the node's answer comes back on the twin; a gateway holds data while the primary host's
//! STATE says offline and releases it, historical, when it comes online.

use std::time::Duration;

use demolab_tests::{
    burst_node, gateway_config, start_gateway_with, start_hub, wait_until, within,
};
use prost::Message;
use protocol::sparkplug::{DataType, Metric, MetricValue, Payload};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use simulators::node::run_mqtt_node;
use tokio_util::sync::CancellationToken;

async fn mqtt_client(port: u16, id: &str) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (client, mut events) = AsyncClient::new(MqttOptions::new(id, "127.0.0.1", port), 16);
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    (client, poller)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dcmd_reaches_the_node_and_its_result_shows_on_the_twin() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let gateway = start_gateway_with(
        gateway_config(port, "lab-cmd", "gw-cmd", &data.path().join("buffer"))?,
        &cancel,
    )
    .await?;
    let mut node = burst_node(port, 0xc0d, "mill-cmd", 2, 0)?;
    node.max_samples = None;
    node.tick_interval = Duration::from_millis(20);
    let running = tokio::spawn(run_mqtt_node(node, cancel.clone()));

    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-cmd".parse()?,
        machine: "mill-cmd".parse()?,
    };
    wait_until(Duration::from_secs(10), "the twin", || {
        twins.get(&key).is_some_and(|t| t.samples > 0)
    })
    .await?;

    let (client, poller) = mqtt_client(port, "hub-operator").await;
    let dcmd = |metric: Metric| {
        Payload {
            timestamp: Some(1),
            metrics: vec![metric],
            ..Default::default()
        }
        .encode_to_vec()
    };
    let topic = "spBv1.0/lab-cmd/DCMD/gw-cmd/mill-cmd";
    client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            dcmd(Metric::new(DataType::UInt32, MetricValue::Long(500)).named("node.period_ms")),
        )
        .await?;
    wait_until(
        Duration::from_secs(10),
        "the applied period on the twin",
        || {
            twins.get(&key).is_some_and(|t| {
                t.value("node.period_ms") == Some(500.0) && t.value("command.result") == Some(0.0)
            })
        },
    )
    .await?;

    // Below the firmware's minimum period: the node refuses, the twin says so.
    client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            dcmd(Metric::new(DataType::UInt32, MetricValue::Long(1)).named("node.period_ms")),
        )
        .await?;
    wait_until(Duration::from_secs(10), "the refusal on the twin", || {
        twins.get(&key).is_some_and(|t| {
            t.value("command.result") == Some(1.0) && t.value("node.period_ms") == Some(500.0)
        })
    })
    .await?;

    poller.abort();
    cancel.cancel();
    let report = running.await??;
    assert!(report.commands_handled >= 2);
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_waits_for_the_primary_host_and_then_arrives_historical() -> anyhow::Result<()> {
    const SAMPLES: u32 = 50;
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let mut config = gateway_config(port, "lab-host", "gw-host", &data.path().join("buffer"))?;
    // A host that has not said it is online: everything must wait in the buffer.
    config.primary_host = Some("scada-host".parse()?);
    let gateway = gateway::start(config, cancel.clone())?;
    // The node's Hello must find the gateway subscribed (it is not ready(): its host is away).
    within(
        Duration::from_secs(10),
        "the gateway's node subscription",
        gateway.sources_ready(),
    )
    .await?;
    let report = run_mqtt_node(
        burst_node(port, 0x5ca, "mill-host", 4, SAMPLES)?,
        cancel.clone(),
    )
    .await?;
    assert_eq!(report.sent, SAMPLES);
    let stats = gateway.stats().clone();
    wait_until(
        Duration::from_secs(10),
        "every sample in the buffer",
        || {
            let s = stats.snapshot();
            s.buffer_depth == u64::from(SAMPLES) && s.buffer_unsent == u64::from(SAMPLES)
        },
    )
    .await?;
    let key = hub::twin::TwinKey {
        lab: "lab-host".parse()?,
        machine: "mill-host".parse()?,
    };
    assert!(
        hub.twins().get(&key).is_none(),
        "nothing may reach the hub while its host is offline"
    );

    let (client, poller) = mqtt_client(port, "scada").await;
    client
        .publish(
            "spBv1.0/STATE/scada-host",
            QoS::AtLeastOnce,
            true,
            br#"{"online":true,"timestamp":1}"#.to_vec(),
        )
        .await?;
    let twins = hub.twins().clone();
    wait_until(
        Duration::from_secs(10),
        "the buffered samples at the hub",
        || {
            twins
                .get(&key)
                .is_some_and(|t| t.samples == u64::from(SAMPLES))
        },
    )
    .await?;
    let twin = twins.get(&key).ok_or_else(|| anyhow::anyhow!("twin"))?;
    assert_eq!(twin.historical_samples, u64::from(SAMPLES));
    wait_until(Duration::from_secs(10), "an empty buffer", || {
        stats.snapshot().buffer_depth == 0
    })
    .await?;

    poller.abort();
    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

/// The next topic the watcher saw, or an error naming the wait.
async fn next_topic(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> anyhow::Result<String> {
    within(
        Duration::from_secs(10),
        "the gateway's next message",
        seen.recv(),
    )
    .await
    .map(Option::unwrap_or_default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebirth_request_is_answered_without_reviving_a_machine_gone_silent() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let mut config = gateway_config(port, "lab-live", "gw-live", &data.path().join("buffer"))?;
    config.liveness_timeout = Duration::from_secs(1);
    let gateway = start_gateway_with(config, &cancel).await?;
    run_mqtt_node(
        burst_node(port, 0x1d1e, "mill-quiet", 8, 20)?,
        cancel.clone(),
    )
    .await?;

    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-live".parse()?,
        machine: "mill-quiet".parse()?,
    };
    wait_until(Duration::from_secs(10), "the samples", || {
        twins.get(&key).is_some_and(|t| t.last_seq == 20)
    })
    .await?;
    // The node stopped: after the liveness timeout the gateway sends DDEATH.
    wait_until(Duration::from_secs(10), "the twin to go stale", || {
        twins.get(&key).is_some_and(|t| !t.connectivity.online)
    })
    .await?;

    // Everything the gateway publishes from here on, in its order.
    let mut watcher = MqttOptions::new("lab-watcher", "127.0.0.1", port);
    watcher.set_max_packet_size(1 << 20, 1 << 20);
    let (watch, mut watch_events) = AsyncClient::new(watcher, 64);
    watch
        .subscribe("spBv1.0/lab-live/+/gw-live/#", QoS::AtLeastOnce)
        .await?;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(async move {
        while let Ok(event) = watch_events.poll().await {
            match event {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    let _ = seen_tx.send(String::new());
                }
                // Commands to the gateway match the filter too; only its own messages count.
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))
                    if !p.topic.contains("CMD/") =>
                {
                    let _ = seen_tx.send(p.topic);
                }
                _ => {}
            }
        }
    });
    within(
        Duration::from_secs(10),
        "the watcher's subscription",
        seen.recv(),
    )
    .await?;

    let (client, poller) = mqtt_client(port, "host-tool").await;
    let rebirth = Payload {
        timestamp: Some(1),
        metrics: vec![
            Metric::new(DataType::Boolean, MetricValue::Boolean(true))
                .named("Node Control/Rebirth"),
        ],
        ..Default::default()
    };
    client
        .publish(
            "spBv1.0/lab-live/NCMD/gw-live",
            QoS::AtLeastOnce,
            false,
            rebirth.encode_to_vec(),
        )
        .await?;
    assert_eq!(
        next_topic(&mut seen).await?,
        "spBv1.0/lab-live/NBIRTH/gw-live"
    );
    // A machine that speaks after the rebirth: its DBIRTH is the fence. The silent machine was
    // declared dead, so the rebirth must not have announced it in between.
    run_mqtt_node(
        burst_node(port, 0x1d1f, "mill-fence", 8, 1)?,
        cancel.clone(),
    )
    .await?;
    assert_eq!(
        next_topic(&mut seen).await?,
        "spBv1.0/lab-live/DBIRTH/gw-live/mill-fence",
        "a rebirth announces only the machines still talking"
    );
    assert!(
        twins.get(&key).is_some_and(|t| !t.connectivity.online),
        "the silent machine stays offline"
    );

    // Once it talks again, it is born again.
    run_mqtt_node(
        burst_node(port, 0x1d1e, "mill-quiet", 9, 5)?,
        cancel.clone(),
    )
    .await?;
    wait_until(Duration::from_secs(10), "the twin born again", || {
        twins
            .get(&key)
            .is_some_and(|t| t.connectivity.online && t.last_seq == 5)
    })
    .await?;
    watching.abort();
    poller.abort();
    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
