//! The first live path, end to end through real sockets: simulated machines run the firmware core
//! and publish node frames over MQTT → gateway → Sparkplug B → embedded broker → hub → twins →
//! REST and WebSocket. Every sample is counted: exactly once, in order, by sequence number.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{burst_node, get_json, http_get, start_gateway, start_hub, within};
use futures_util::StreamExt;
use gateway::DropReason;
use hub::stats::IngestDrop;
use protocol::MachineId;
use simulators::node::{CNC_METRICS, NodeReport, run_mqtt_node};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const MACHINES: usize = 3;
const SAMPLES: u32 = 200;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_reaches_the_twin_exactly_once_and_in_order() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let http = hub.http_addr();

    let (mut stream, _) =
        tokio_tungstenite::connect_async(format!("ws://{http}/api/v1/stream?lab=lab-e2e"))
            .await
            .context("opening the twin stream")?;

    let cancel = CancellationToken::new();
    let port = hub.mqtt_addr().port();
    let gateway = start_gateway(
        port,
        "lab-e2e",
        "gw-e2e",
        &data.path().join("buffer"),
        &cancel,
    )
    .await?;

    let mut nodes = tokio::task::JoinSet::new();
    for i in 0..MACHINES {
        let config = burst_node(
            port,
            0xe2e0 + i as u64,
            &format!("mill-{i}"),
            7 + i as u64,
            SAMPLES,
        )?;
        let machine = config.machine.clone();
        let node_cancel = cancel.clone();
        nodes.spawn(async move { (machine, run_mqtt_node(config, node_cancel).await) });
    }
    let mut reports: BTreeMap<MachineId, NodeReport> = BTreeMap::new();
    while let Some(joined) = within(
        Duration::from_secs(60),
        "the nodes to finish",
        nodes.join_next(),
    )
    .await?
    {
        let (machine, report) = joined?;
        let report = report.with_context(|| format!("node of {machine}"))?;
        assert_eq!(report.sent, SAMPLES, "{machine} sent");
        reports.insert(machine, report);
    }

    // Collect the stream until every sample of every machine has been seen.
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let total = MACHINES * SAMPLES as usize;
    within(
        Duration::from_secs(30),
        "every sample on the twin stream",
        async {
            while seen.values().map(Vec::len).sum::<usize>() < total {
                let Some(message) = stream.next().await else {
                    anyhow::bail!("stream closed")
                };
                let Message::Text(text) = message? else {
                    continue;
                };
                let change: serde_json::Value = serde_json::from_str(text.as_str())?;
                assert_ne!(
                    change["kind"], "lagged",
                    "the stream must not lag at this rate"
                );
                if change["kind"] == "sample" {
                    let machine = change["machine"].as_str().context("machine")?.to_owned();
                    let seq = change["seq"].as_u64().context("seq")? as u32;
                    seen.entry(machine).or_default().push(seq);
                }
            }
            Ok(())
        },
    )
    .await??;
    let expected: Vec<u32> = (1..=SAMPLES).collect();
    for (machine, seqs) in &seen {
        assert_eq!(
            seqs, &expected,
            "{machine}: every sample exactly once, in order"
        );
    }
    assert_eq!(seen.len(), MACHINES);

    // The twins hold the last samples sent, exactly (f32 → f64 is lossless).
    for (machine, report) in &reports {
        let twin = get_json(http, &format!("/api/v1/twins/lab-e2e/{machine}")).await?;
        let last = report.last.as_ref().context("a last sample")?;
        assert_eq!(twin["last_seq"], SAMPLES);
        assert_eq!(twin["samples"], SAMPLES);
        assert_eq!(twin["connectivity"]["online"], true);
        for reading in &last.readings {
            let name = CNC_METRICS[usize::from(reading.index)].1;
            let (feature, property) = name.split_once('.').context("metric shape")?;
            let reported = &twin["features"][feature]["properties"][property]["reported"];
            assert_eq!(
                reported.as_f64(),
                Some(f64::from(reading.value)),
                "{machine} {name}"
            );
        }
    }
    let list = get_json(http, "/api/v1/twins?lab=lab-e2e").await?;
    assert_eq!(list.as_array().map(Vec::len), Some(MACHINES));

    // Nothing was dropped anywhere on the way. Acknowledgements may trail the deliveries.
    let stats = gateway.stats().clone();
    demolab_tests::wait_until(
        Duration::from_secs(10),
        "every uplink acknowledgement",
        || stats.snapshot().samples_forwarded == total as u64,
    )
    .await?;
    let gateway_stats = gateway.stats().snapshot();
    for reason in DropReason::ALL {
        assert_eq!(
            gateway_stats.dropped(reason),
            0,
            "gateway drops for {reason:?}"
        );
    }
    assert_eq!(hub.stats().samples_applied(), total as u64);
    assert_eq!(hub.stats().dropped(IngestDrop::StaleSequence), 0);
    let (status, metrics) = http_get(http, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("demolab_hub_samples_applied_total {total}")),
        "{metrics}"
    );

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_gateway_that_dies_takes_its_twins_offline_and_a_restart_restores_them()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let cancel = CancellationToken::new();
    let port = hub.mqtt_addr().port();
    let gateway =
        start_gateway(port, "lab-r", "gw-r", &data.path().join("buffer"), &cancel).await?;
    let config = burst_node(port, 0xabc, "press-1", 1, 10)?;
    run_mqtt_node(config, cancel.clone()).await?;
    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-r".parse()?,
        machine: "press-1".parse()?,
    };
    demolab_tests::wait_until(Duration::from_secs(10), "10 samples on the twin", || {
        twins.get(&key).is_some_and(|t| t.last_seq == 10)
    })
    .await?;

    // A clean gateway stop publishes NDEATH: the twin goes offline but keeps its values.
    gateway.shutdown().await?;
    demolab_tests::wait_until(Duration::from_secs(10), "the twin to go offline", || {
        twins.get(&key).is_some_and(|t| !t.connectivity.online)
    })
    .await?;
    let before = twins.get(&key).context("twin")?;
    hub.shutdown().await?;

    let hub = start_hub(data.path()).await?;
    let after = hub
        .twins()
        .get(&key)
        .context("twin restored from storage")?;
    assert_eq!(after, before);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_frames_from_any_mqtt_client_reach_the_twin_and_garbage_is_counted()
-> anyhow::Result<()> {
    use protocol::golden;
    use protocol::node_topic::{Direction, format};
    use rumqttc::{AsyncClient, MqttOptions, QoS};

    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let gateway =
        start_gateway(port, "lab-g", "gw-g", &data.path().join("buffer"), &cancel).await?;

    // A node written in anything: these are just the golden bytes on the node's topic.
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("raw-node", "127.0.0.1", port), 16);
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let up = format(golden::NODE, Direction::Up);
    client
        .publish(
            up.as_str(),
            QoS::AtLeastOnce,
            false,
            vec![0xde, 0xad, 0xbe, 0xef, 0x00],
        )
        .await?;
    client
        .publish(up.as_str(), QoS::AtLeastOnce, false, golden::HELLO.to_vec())
        .await?;
    client
        .publish(
            up.as_str(),
            QoS::AtLeastOnce,
            false,
            golden::SAMPLES.to_vec(),
        )
        .await?;

    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-g".parse()?,
        machine: "mill-1".parse()?,
    };
    demolab_tests::wait_until(
        Duration::from_secs(10),
        "the golden sample on the twin",
        || twins.get(&key).is_some_and(|t| t.last_seq == 42),
    )
    .await?;
    let twin = get_json(hub.http_addr(), "/api/v1/twins/lab-g/mill-1").await?;
    assert_eq!(
        twin["features"]["spindle"]["properties"]["power_w"]["reported"],
        5321.5
    );
    assert_eq!(
        twin["features"]["spindle"]["properties"]["power_w"]["unit"],
        "W"
    );
    assert_eq!(
        twin["features"]["coolant"]["properties"]["temperature_c"]["reported"],
        24.5
    );
    assert_eq!(twin["state"]["value"], "running");
    assert_eq!(gateway.stats().snapshot().dropped(DropReason::BadFrame), 1);

    poller.abort();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_taken_http_port_is_a_clear_error_naming_it() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let data = tempfile::tempdir()?;
    let config = hub::HubConfig {
        http_bind: addr,
        data_dir: data.path().to_owned(),
        ..hub::HubConfig::default()
    };
    let err = hub::Hub::start(config).await.expect_err("port is taken");
    let message = err.to_string();
    assert!(
        message.contains(&format!("web server to {addr}")),
        "{message}"
    );
    Ok(())
}
