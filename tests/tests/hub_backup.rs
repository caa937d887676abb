//! An online backup, restored: while a node keeps sending, an admin downloads the hub's
//! database over the API; a new hub started on that file alone has every twin, its history and
//! its counters exactly as of one instant, and the file holds whole commits only (each twin's
//! sample counter equals its history rows, which are committed in the same transaction).

use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    burst_node, cheap_password_hash, http, http_get_bytes, hub_config, start_gateway,
    start_hub_with, wait_until, within,
};
use hub::auth::{AuthConfig, Role, UserConfig};
use hub::twin::TwinKey;
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 150;

fn auth() -> anyhow::Result<AuthConfig> {
    let user = |name: &str, role| -> anyhow::Result<UserConfig> {
        Ok(UserConfig {
            name: name.into(),
            role,
            password_hash: cheap_password_hash(&format!("{name}-secret"))?,
            game: None,
        })
    };
    Ok(AuthConfig {
        public_labs: vec!["*".into()],
        users: vec![user("ada", Role::Admin)?, user("olga", Role::Operator)?],
        ..AuthConfig::default()
    })
}

/// Samples of `machine`'s `spindle.power_w` in the history API, a day either side of now.
async fn history_count(addr: std::net::SocketAddr, machine: &str) -> anyhow::Result<u64> {
    let now = hub::ingest::now_ms();
    let path = format!(
        "/api/v1/twins/lab-a/{machine}/history?metric=spindle.power_w&from={}&to={}&step=86400000",
        now - 86_400_000,
        now + 86_400_000
    );
    let (status, body) = http(addr, "GET", &path, None, None).await?;
    anyhow::ensure!(status == 200, "{path}: {status} {body}");
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    Ok(doc["buckets"]
        .as_array()
        .context("buckets")?
        .iter()
        .filter_map(|b| b["count"].as_u64())
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_whole_commits_on_a_new_hub() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub_with(hub::HubConfig {
        auth: auth()?,
        ..hub_config(&data.path().join("hub"))
    })
    .await?;
    let (addr, port) = (hub.http_addr(), hub.mqtt_addr().port());
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let gateway =
        start_gateway(port, "lab-a", "gw-1", &data.path().join("buffer"), &cancel).await?;

    // mill-1: a finished burst. mill-2: still sending while the backup is taken.
    simulators::node::run_mqtt_node(
        burst_node(port, 0xb1, "mill-1", 1, SAMPLES)?,
        cancel.clone(),
    )
    .await?;
    let mill_1 = TwinKey {
        lab: "lab-a".parse()?,
        machine: "mill-1".parse()?,
    };
    wait_until(
        Duration::from_secs(20),
        "mill-1's burst in its history",
        || {
            hub.twins()
                .get(&mill_1)
                .is_some_and(|t| t.samples == u64::from(SAMPLES))
        },
    )
    .await?;
    within(Duration::from_secs(20), "mill-1's burst committed", async {
        while history_count(addr, "mill-1").await? != u64::from(SAMPLES) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    let mut streaming = burst_node(port, 0xb2, "mill-2", 2, 100_000)?;
    streaming.tick_interval = Duration::from_millis(2);
    let streaming = tokio::spawn(simulators::node::run_mqtt_node(streaming, cancel.clone()));
    let mill_2 = TwinKey {
        lab: "lab-a".parse()?,
        machine: "mill-2".parse()?,
    };
    wait_until(Duration::from_secs(20), "mill-2 streaming", || {
        hub.twins().get(&mill_2).is_some_and(|t| t.samples >= 200)
    })
    .await?;

    // Only an admin may take it.
    let (status, _, _) = http_get_bytes(addr, "/api/v1/admin/backup", None).await?;
    assert_eq!(status, 401);
    let olga = demolab_tests::login(addr, "olga").await?;
    let (status, _, _) = http_get_bytes(addr, "/api/v1/admin/backup", Some(&olga)).await?;
    assert_eq!(status, 403);
    let ada = demolab_tests::login(addr, "ada").await?;
    let (status, head, file) = http_get_bytes(addr, "/api/v1/admin/backup", Some(&ada)).await?;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-demolab-backup-rows: twins=2"), "{head}");
    assert!(!file.is_empty());
    // Nothing is left behind in the data directory.
    let leftovers: Vec<_> = std::fs::read_dir(data.path().join("hub"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("backup-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let live_mill_1 = hub.twins().get(&mill_1).context("mill-1")?;

    cancel.cancel();
    let _ = streaming.await;
    gateway.shutdown().await?;
    hub.shutdown().await?;

    // Restore: the file alone, as hub.redb of a fresh data directory.
    let restored_dir = data.path().join("restored");
    std::fs::create_dir_all(&restored_dir)?;
    std::fs::write(restored_dir.join(hub::store::DB_FILE), &file)?;
    let restored = start_hub_with(hub::HubConfig {
        auth: auth()?,
        ..hub_config(&restored_dir)
    })
    .await?;
    let addr = restored.http_addr();
    let twin_1 = restored.twins().get(&mill_1).context("mill-1 restored")?;
    assert_eq!(twin_1.samples, u64::from(SAMPLES));
    assert_eq!(twin_1.last_seq, live_mill_1.last_seq);
    // Every value as it was; the restored hub has no live session, so they are stale now.
    let values = |twin: &hub::twin::Twin| {
        twin.features
            .iter()
            .flat_map(|(feature, f)| {
                f.properties
                    .iter()
                    .map(move |(name, p)| (format!("{feature}.{name}"), p.reported, p.timestamp))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&twin_1), values(&live_mill_1));
    assert_eq!(values(&twin_1).len(), 7);
    assert_eq!(history_count(addr, "mill-1").await?, u64::from(SAMPLES));
    // mill-2 was mid-stream: the backup holds a prefix of whole commits, so its counter and
    // its history agree exactly.
    let twin_2 = restored.twins().get(&mill_2).context("mill-2 restored")?;
    // What ingest had applied but not yet committed is not in it: a backup is of what is
    // acknowledged.
    assert!(twin_2.samples > 0);
    assert_eq!(history_count(addr, "mill-2").await?, twin_2.samples);
    assert_eq!(u64::from(twin_2.last_seq), twin_2.samples);
    restored.shutdown().await?;
    Ok(())
}
