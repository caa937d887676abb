//! The hub process is killed with SIGKILL mid-stream and started again on the same data
//! directory: every twin and its alarms come back, and the history of the stream is complete —
//! what the hub had not committed was never acknowledged, so the broker or the gateway's
//! buffer delivers it again. The hub runs as a real child process behind an external broker
//! (the lab's broker, here an embedded one in the test process), as in production.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    HUB_CHILD_ENV, burst_node, gateway_config, get_json, run_hub_child, spawn_hub_process,
    start_gateway_with, wait_until, within,
};
use hub::broker::{BrokerConfig, EmbeddedBroker};
use simulators::node::run_mqtt_node;
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 3000;

/// Entry point of the child process: runs a hub from the file named by the environment.
#[test]
#[ignore = "the hub process of the kill test; it starts it"]
fn hub_child() -> anyhow::Result<()> {
    let path = std::env::var(HUB_CHILD_ENV).context("run by the kill test only")?;
    run_hub_child(Path::new(&path))
}

fn spawn_hub(config: &Path) -> anyhow::Result<(demolab_tests::ChildProcess, std::net::SocketAddr)> {
    spawn_hub_process(
        &[
            "hub_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
        config,
    )
}

/// Polls a JSON endpoint until `accept` holds, returning the last document.
async fn poll_json(
    addr: std::net::SocketAddr,
    path: &str,
    what: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    within(Duration::from_secs(60), what, async {
        loop {
            if let Ok(doc) = get_json(addr, path).await
                && accept(&doc)
            {
                return doc;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn history_count(doc: &serde_json::Value) -> u64 {
    doc["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["count"].as_u64()).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_comes_back_with_every_twin_alarm_and_sample() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let broker = EmbeddedBroker::start(BrokerConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..BrokerConfig::default()
    })
    .await?;
    let port = broker.local_addr().port();
    let config = data.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\njson_topics = false\n\
             [broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             [[labs]]\nid = \"lab-kill\"\ngateways = [\"gw-kill\"]\n\
             [[labs.machines]]\nid = \"mill-quiet\"\n[[labs.machines]]\nid = \"mill-busy\"\n\
             [auth]\npublic_labs = [\"*\"]\n",
            data.path().join("hub-data").display()
        ),
    )?;
    let (mut hub, http) = spawn_hub(&config)?;

    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let mut gateway = gateway_config(port, "lab-kill", "gw-kill", &data.path().join("buffer"))?;
    gateway.primary_host = Some("demolab-hub".parse()?);
    gateway.liveness_timeout = Duration::from_secs(1);
    let gateway = start_gateway_with(gateway, &cancel).await?;

    // A machine that reports a little and goes quiet: the gateway declares it dead and the hub
    // raises its offline alarm before the kill.
    let quiet = burst_node(port, 0xb0, "mill-quiet", 3, 5)?;
    run_mqtt_node(quiet, cancel.clone()).await?;
    let alarms_path = "/api/v1/alarms?lab=lab-kill&machine=mill-quiet&active=true";
    let before = poll_json(http, alarms_path, "the offline alarm", |doc| {
        doc.as_array().is_some_and(|a| a.len() == 1)
    })
    .await?;
    let alarm_id = before[0]["id"].as_str().context("alarm id")?.to_owned();
    assert_eq!(before[0]["rule"], "offline");

    let mut busy = burst_node(port, 0xb1, "mill-busy", 4, SAMPLES)?;
    busy.tick_interval = Duration::from_millis(1);
    let streaming = tokio::spawn(run_mqtt_node(busy, cancel.clone()));
    let twin_path = "/api/v1/twins/lab-kill/mill-busy";
    poll_json(http, twin_path, "a third of the stream", |doc| {
        doc["samples"]
            .as_u64()
            .is_some_and(|n| n >= u64::from(SAMPLES / 3))
    })
    .await?;
    hub.kill()?;
    hub.wait()?;

    let (mut hub, http) = spawn_hub(&config)?;
    // Everything persisted is back at once, before any new data.
    let restored = get_json(http, twin_path).await?;
    assert!(restored["samples"].as_u64().unwrap_or(0) >= u64::from(SAMPLES / 3) / 2);
    let after = get_json(http, alarms_path).await?;
    assert_eq!(
        after[0]["id"],
        alarm_id.as_str(),
        "the same alarm, still active"
    );

    within(Duration::from_secs(60), "the node to finish", streaming).await???;
    let twin = poll_json(http, twin_path, "every sample at the twin", |doc| {
        doc["samples"].as_u64() == Some(u64::from(SAMPLES))
    })
    .await?;
    assert_eq!(twin["last_seq"].as_u64(), Some(u64::from(SAMPLES)));

    // Every sample is in the history exactly once: nothing lost in the kill, nothing doubled by
    // the redelivery of what was committed but not yet acknowledged.
    // One bucket-aligned range around now, so no bucket is cut by the range's ends.
    let step = 4 * 86_400_000;
    let from = (hub::ingest::now_ms() / step - 1) * step;
    // The twin is in memory; its history is committed within a commit interval.
    let path = format!(
        "{twin_path}/history?metric=spindle.power_w&from={from}&to={}&step={step}",
        from + 3 * step
    );
    let history = poll_json(http, &path, "the stream's history", |doc| {
        history_count(doc) >= u64::from(SAMPLES)
    })
    .await?;
    assert_eq!(history_count(&history), u64::from(SAMPLES), "{history}");
    wait_until(
        Duration::from_secs(10),
        "the gateway buffer to drain",
        || gateway.stats().snapshot().buffer_unsent == 0,
    )
    .await?;

    hub.kill()?;
    hub.wait()?;
    gateway.shutdown().await?;
    broker.shutdown().await?;
    Ok(())
}
