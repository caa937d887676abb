//! The InfluxDB sink against a real engine speaking the InfluxDB v2 write API: VictoriaMetrics.
//!
//! Runs when `DEMOLAB_VICTORIA` names the `victoria-metrics` binary (Debian package
//! `victoria-metrics`); the test starts it on a free port with a temporary storage directory.
//! Without the variable it prints "skipped", except under CI (`CI` set), where it fails.
//!
//! `DEMOLAB_VICTORIA=$(command -v victoria-metrics) cargo test -p demolab-tests --test influx_sink`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use demolab_tests::{http_get, wait_until, within};
use hub::history::HistoryRow;
use hub::history::influx::{DropReason, InfluxConfig, InfluxSink};
use hub::twin::TwinKey;
use tokio_util::sync::CancellationToken;

/// A VictoriaMetrics process, killed when dropped (also when the test fails).
struct Victoria {
    child: Child,
    addr: SocketAddr,
    _storage: tempfile::TempDir,
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Victoria {
    /// The engine named by `DEMOLAB_VICTORIA`, started; `None` (the test is skipped) without
    /// it, except under CI, where that is an error.
    async fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(binary) = std::env::var_os("DEMOLAB_VICTORIA") else {
            if std::env::var_os("CI").is_some() {
                bail!("DEMOLAB_VICTORIA is not set: CI must run the VictoriaMetrics test");
            }
            println!(
                "skipped: set DEMOLAB_VICTORIA to the victoria-metrics binary to run this test"
            );
            return Ok(None);
        };
        let binary = binary.to_str().context("DEMOLAB_VICTORIA is not UTF-8")?;
        Self::start(binary).await.map(Some)
    }

    async fn start(binary: &str) -> anyhow::Result<Self> {
        let storage = tempfile::tempdir()?;
        // VictoriaMetrics cannot report a port it picked: take a free one and hand it over.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(binary)
            .arg(format!("-httpListenAddr={addr}"))
            .arg(format!("-storageDataPath={}", storage.path().display()))
            .args([
                "-retentionPeriod=1d",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=ERROR",
            ])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let victoria = Victoria {
            child,
            addr,
            _storage: storage,
        };
        within(Duration::from_secs(30), "VictoriaMetrics /health", async {
            loop {
                if let Ok((200, _)) = http_get(addr, "/health").await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await?;
        Ok(victoria)
    }
}

const MACHINES: [&str; 2] = ["lathe-1", "mill-2"];
const METRICS: [&str; 2] = ["spindle.power_w", "axis.temp_c"];
const STEPS: u64 = 250;

/// Series name as VictoriaMetrics stores it (`measurement_field`) and machine → points.
type Expected = BTreeMap<(String, String), Vec<(u64, f64)>>;

fn rows(start_ms: u64) -> anyhow::Result<(Vec<HistoryRow>, Expected)> {
    let mut rows = Vec::new();
    let mut expected = Expected::new();
    for (m, machine) in MACHINES.iter().enumerate() {
        for (k, metric) in METRICS.iter().enumerate() {
            for i in 0..STEPS {
                let timestamp_ms = start_ms + i * 1000 + m as u64 * 7 + k as u64;
                // Distinct, exactly representable values, negative and fractional ones too.
                let value = (i as f64 - 100.0) * 0.125 + (m * 1000 + k * 100) as f64;
                rows.push(HistoryRow {
                    key: TwinKey {
                        lab: "lab-a".parse()?,
                        machine: machine.parse()?,
                    },
                    metric: metric.parse()?,
                    timestamp_ms,
                    seq: 0,
                    value,
                });
                expected
                    .entry((format!("machine_{metric}"), (*machine).to_owned()))
                    .or_default()
                    .push((timestamp_ms, value));
            }
        }
    }
    Ok((rows, expected))
}

/// Reads every `machine_*` series back through `/api/v1/export` (JSON lines).
async fn export(addr: SocketAddr) -> anyhow::Result<Expected> {
    let (status, body) = http_get(
        addr,
        "/api/v1/export?match[]=%7B__name__%3D~%22machine_.%2A%22%7D",
    )
    .await?;
    if status != 200 {
        bail!("export answered {status}: {body}");
    }
    let mut got = Expected::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let series: serde_json::Value = serde_json::from_str(line).context("export line")?;
        let labels = &series["metric"];
        let name = labels["__name__"].as_str().context("__name__")?.to_owned();
        let machine = labels["machine"]
            .as_str()
            .context("machine label")?
            .to_owned();
        if labels["lab"] != "lab-a" || labels["gateway"] != "gw-1" {
            bail!("unexpected labels {labels}");
        }
        let values = series["values"].as_array().context("values")?;
        let timestamps = series["timestamps"].as_array().context("timestamps")?;
        let points = got.entry((name, machine)).or_default();
        for (t, v) in timestamps.iter().zip(values) {
            points.push((
                t.as_u64().context("timestamp")?,
                v.as_f64().context("value")?,
            ));
        }
    }
    for points in got.values_mut() {
        points.sort_by_key(|p| p.0);
    }
    Ok(got)
}

#[tokio::test]
async fn points_written_through_the_sink_read_back_exactly() -> anyhow::Result<()> {
    let Some(victoria) = Victoria::from_env().await? else {
        return Ok(());
    };

    let cancel = CancellationToken::new();
    let config = InfluxConfig {
        batch_size: 128,
        flush_interval_ms: 50,
        ..InfluxConfig::new(format!("http://{}", victoria.addr), "demolab", "history")
    };
    let (sink, task) = InfluxSink::start(config, cancel.clone())?;

    // Within the engine's one-day retention, whole seconds in the past.
    let now_ms = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let (rows, expected) = rows(now_ms - now_ms % 1000 - 3_600_000)?;
    let total = rows.len() as u64;
    for row in &rows {
        sink.offer(row, Some("gw-1"), false);
    }
    wait_until(Duration::from_secs(30), "every point acknowledged", || {
        sink.written() == total
    })
    .await?;
    for reason in [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::NonFinite,
    ] {
        assert_eq!(sink.dropped(reason), 0, "{reason:?}");
    }

    // Acknowledged points become searchable after a flush; poll until all are there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        let (status, _) = http_get(victoria.addr, "/internal/force_flush").await?;
        assert_eq!(status, 200);
        let got = export(victoria.addr).await?;
        let count: usize = got.values().map(Vec::len).sum();
        if count as u64 >= total || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let count: usize = got.values().map(Vec::len).sum();
    assert_eq!(count as u64, total, "points read back");
    println!(
        "{count} points read back from VictoriaMetrics at {}",
        victoria.addr
    );
    assert_eq!(got, expected);

    cancel.cancel();
    within(Duration::from_secs(10), "the sink to stop", task).await??;
    Ok(())
}

/// The whole path with the sink configured on the hub: a node's samples through a gateway and
/// the hub reach VictoriaMetrics, each exactly once, tagged with lab, machine and gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_with_influx_configured_writes_every_sample() -> anyhow::Result<()> {
    const SAMPLES: u32 = 100;
    let Some(victoria) = Victoria::from_env().await? else {
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let hub = demolab_tests::start_hub_with(hub::HubConfig {
        influx: Some(InfluxConfig {
            flush_interval_ms: 50,
            ..InfluxConfig::new(format!("http://{}", victoria.addr), "demolab", "history")
        }),
        ..demolab_tests::hub_config(data.path())
    })
    .await?;
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let gateway =
        demolab_tests::start_gateway(port, "lab-a", "gw-1", &data.path().join("buffer"), &cancel)
            .await?;
    let mut node = demolab_tests::burst_node(port, 0x1f, "mill-1", 3, SAMPLES)?;
    // Apart in time, so no two samples share the engine's millisecond.
    node.tick_interval = Duration::from_millis(5);
    simulators::node::run_mqtt_node(node, cancel.clone()).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let power = loop {
        let (status, _) = http_get(victoria.addr, "/internal/force_flush").await?;
        assert_eq!(status, 200);
        let got = export(victoria.addr).await?;
        let power = got
            .get(&("machine_spindle.power_w".to_owned(), "mill-1".to_owned()))
            .cloned()
            .unwrap_or_default();
        if power.len() >= SAMPLES as usize || tokio::time::Instant::now() > deadline {
            break power;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        power.len(),
        SAMPLES as usize,
        "power samples in VictoriaMetrics"
    );
    let (_, metrics) = http_get(hub.http_addr(), "/metrics").await?;
    assert!(
        metrics.contains("demolab_influx_points_dropped_total{reason=\"queue_full\"} 0"),
        "{metrics}"
    );
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
