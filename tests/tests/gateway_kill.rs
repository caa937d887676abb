//! The gateway process is killed with SIGKILL mid-stream and started again: nothing that was
//! acknowledged to it is lost, and the duplicates its restart sends are removed at the hub by
//! sequence number. The gateway runs as a real child process (this test binary, re-executed
//! into the ignored `gateway_child` entry point) so the kill is a real kill.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    GATEWAY_CHILD_ENV, burst_node, run_gateway_child, spawn_gateway_process, start_hub, wait_until,
    within,
};
use futures_util::StreamExt;
use simulators::node::run_mqtt_node;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 3000;

/// Entry point of the child process: runs a gateway from the file named by the environment.
#[test]
#[ignore = "the gateway process of the kill test; it starts it"]
fn gateway_child() -> anyhow::Result<()> {
    let path = std::env::var(GATEWAY_CHILD_ENV).context("run by the kill test only")?;
    run_gateway_child(Path::new(&path))
}

fn spawn_gateway(config: &Path) -> anyhow::Result<demolab_tests::ChildProcess> {
    spawn_gateway_process(
        &[
            "gateway_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
        config,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_loses_nothing_it_acknowledged() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let config = data.path().join("gateway.toml");
    // No serial scan: a node plugged into this machine's USB is none of the test's business.
    std::fs::write(
        &config,
        format!(
            "lab = \"lab-kill\"\ngateway = \"gw-kill\"\nprimary_host = \"demolab-hub\"\n\
             [uplink]\nhost = \"127.0.0.1\"\nport = {port}\n\
             [southbound]\nhost = \"127.0.0.1\"\nport = {port}\n\
             [buffer]\ndir = \"gateway-buffer\"\n\
             [serial]\nscan = false\n"
        ),
    )?;
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/v1/stream?lab=lab-kill",
        hub.http_addr()
    ))
    .await?;
    let mut first = spawn_gateway(&config)?;

    let cancel = CancellationToken::new();
    let mut node = burst_node(port, 0x4177, "mill-kill", 21, SAMPLES)?;
    node.tick_interval = Duration::from_micros(700);
    let sender = tokio::spawn(run_mqtt_node(node, cancel.clone()));
    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-kill".parse()?,
        machine: "mill-kill".parse()?,
    };
    wait_until(
        Duration::from_secs(30),
        "a third of the samples at the hub",
        || twins.get(&key).is_some_and(|t| t.last_seq >= SAMPLES / 3),
    )
    .await?;
    first.kill()?; // SIGKILL: no flush, no NDEATH, no clean disconnect
    first.wait()?;

    let mut second = spawn_gateway(&config)?;
    let report = within(Duration::from_secs(60), "the node", sender).await???;
    assert_eq!(report.sent, SAMPLES);
    wait_until(
        Duration::from_secs(60),
        "the last sample at the hub",
        || twins.get(&key).is_some_and(|t| t.last_seq == SAMPLES),
    )
    .await?;

    let mut seqs = Vec::new();
    within(
        Duration::from_secs(30),
        "every sample on the stream",
        async {
            while seqs.len() < SAMPLES as usize {
                let Some(message) = stream.next().await else {
                    anyhow::bail!("stream closed")
                };
                let Message::Text(text) = message? else {
                    continue;
                };
                let change: serde_json::Value = serde_json::from_str(text.as_str())?;
                if matches!(change["kind"].as_str(), Some("sample" | "historical"))
                    && let Some(seq) = change["seq"].as_u64()
                {
                    seqs.push(seq as u32);
                }
            }
            Ok(())
        },
    )
    .await??;
    assert_eq!(
        seqs,
        (1..=SAMPLES).collect::<Vec<_>>(),
        "every sample exactly once, in order"
    );
    assert_eq!(twins.get(&key).context("twin")?.samples, u64::from(SAMPLES));

    second.kill()?;
    second.wait()?;
    hub.shutdown().await?;
    Ok(())
}
