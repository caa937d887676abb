//! The bug from the lab, for real: the process runs out of file descriptors (RLIMIT_NOFILE
//! lowered to what is open) while a node streams through a running gateway on the real
//! filesystem, then gets them back. The gateway's disk buffer fails meanwhile (new segments,
//! the ledger and directory syncs need descriptors) and the MQTT node must not stay offline:
//! every sample reaches the hub once and in order, none dropped.
//!
//! Its own test binary, because the limit is the whole process's.

use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    burst_node, gateway_config, start_gateway_with, start_hub, wait_until, within,
};
use futures_util::StreamExt;
use gateway::DropReason;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use simulators::node::run_mqtt_node;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 1200;
const BEFORE: u32 = 200;

/// Descriptors open now (the directory listing's own is closed again before returning).
fn open_descriptors() -> anyhow::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64 - 1)
}

/// Puts the original limit back even when the test fails half way.
struct RestoreLimit(Rlimit);

impl Drop for RestoreLimit {
    fn drop(&mut self) {
        let _ = setrlimit(Resource::Nofile, self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_mid_stream_does_not_stall_the_mqtt_nodes()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let mut config = gateway_config(port, "lab-nofile", "gw-nofile", &data.path().join("buffer"))?;
    // Small segments: the stream needs new files while descriptors are out.
    config.buffer.segment_bytes = 16 << 10;
    let gateway = start_gateway_with(config, &cancel).await?;
    let stats = gateway.stats().clone();
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/v1/stream?lab=lab-nofile",
        hub.http_addr()
    ))
    .await?;
    let mut node = burst_node(port, 0xf11e5, "mill-nofile", 9, SAMPLES)?;
    node.tick_interval = Duration::from_micros(500);
    let sender = tokio::spawn(run_mqtt_node(node, cancel.clone()));
    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: "lab-nofile".parse()?,
        machine: "mill-nofile".parse()?,
    };
    wait_until(Duration::from_secs(20), "samples before the limit", || {
        twins.get(&key).is_some_and(|t| t.last_seq >= BEFORE)
    })
    .await?;

    let original = getrlimit(Resource::Nofile);
    let restore = RestoreLimit(original);
    let open = open_descriptors()?;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            // Below what is open: a descriptor closed meanwhile must not free a slot.
            current: Some(open / 2),
            maximum: original.maximum,
        },
    )
    .context("lowering RLIMIT_NOFILE")?;
    let failing = wait_until(
        Duration::from_secs(20),
        "the disk buffer to fail for want of descriptors, and retries",
        || {
            let now = stats.snapshot();
            now.storage_failing == 1 && now.storage_errors >= 4
        },
    )
    .await;
    drop(restore);
    failing?;
    let error = stats.snapshot().storage_error.unwrap_or_default();
    assert!(error.contains("os error 24"), "EMFILE: {error}");

    let report = within(Duration::from_secs(60), "the node", sender).await???;
    assert_eq!(report.sent, SAMPLES);
    wait_until(
        Duration::from_secs(30),
        "the last sample at the hub",
        || twins.get(&key).is_some_and(|t| t.last_seq == SAMPLES),
    )
    .await?;
    let mut seqs = Vec::new();
    within(
        Duration::from_secs(60),
        "every sample on the stream",
        async {
            while seqs.len() < SAMPLES as usize {
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
    assert_eq!(
        seqs,
        (1..=SAMPLES).collect::<Vec<_>>(),
        "every sample once, in order"
    );
    let snapshot = stats.snapshot();
    for reason in DropReason::ALL {
        assert_eq!(snapshot.dropped(reason), 0, "gateway drops for {reason:?}");
    }
    assert_eq!(snapshot.storage_failing, 0, "recovered on its own");
    assert!(snapshot.storage_recoveries >= 1);

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
