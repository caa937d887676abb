//! The InfluxDB sink against a real engine speaking the InfluxDB v2 write API: VictoriaMetrics,
//! and the history read back from that engine's own query API beyond the embedded retention.
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
use hub::history::influx::{DropReason, InfluxConfig, InfluxSink};
use hub::history::long_term::LongTermReader;
use hub::history::{Bucket, HistoryRow, Retention, TimeRange};
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
                // Long: the read-back tests write samples from weeks ago.
                "-retentionPeriod=10y",
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

/// Offers `rows` as live samples through `gw-1` and waits until the engine acknowledged them
/// all; returns how many.
async fn write_through(sink: &InfluxSink, rows: &[HistoryRow]) -> anyhow::Result<u64> {
    let total = rows.len() as u64;
    for row in rows {
        sink.offer(row.as_ref(), Some("gw-1"), false);
    }
    wait_until(Duration::from_secs(30), "every point acknowledged", || {
        sink.written() == total
    })
    .await?;
    Ok(total)
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
    let total = write_through(&sink, &rows).await?;
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
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let (gateway, _) =
        one_node_through_a_gateway(&hub, data.path(), &victoria, SAMPLES, &cancel).await?;
    let (_, metrics) = http_get(hub.http_addr(), "/metrics").await?;
    assert!(
        metrics.contains("demolab_influx_points_dropped_total{reason=\"queue_full\"} 0"),
        "{metrics}"
    );
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

/// Buckets as the embedded store defines them: aligned to `step` since the epoch, samples in
/// `[from, to)`, empty buckets left out; computed here from the samples themselves.
fn expected_buckets(points: &[(u64, f64)], range: TimeRange, step: u64) -> Vec<Bucket> {
    let mut buckets: BTreeMap<u64, Vec<(u64, f64)>> = BTreeMap::new();
    for &(t, v) in points {
        if (range.from_ms..range.to_ms).contains(&t) {
            buckets.entry(t - t % step).or_default().push((t, v));
        }
    }
    buckets
        .into_iter()
        .map(|(start_ms, mut samples)| {
            samples.sort_by_key(|s| s.0);
            let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
            let sum: f64 = values.iter().sum();
            Bucket {
                start_ms,
                count: values.len() as u64,
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                mean: sum / values.len() as f64,
                last: values[values.len() - 1],
            }
        })
        .collect()
}

fn long_term_config(victoria: &Victoria) -> InfluxConfig {
    InfluxConfig {
        flush_interval_ms: 50,
        query_url: Some(format!("http://{}", victoria.addr)),
        ..InfluxConfig::new(format!("http://{}", victoria.addr), "demolab", "history")
    }
}

/// Samples from six weeks ago, written through the sink with a machine that moved from one
/// gateway to another (two series of one metric), read back through the engine's query API in
/// buckets of several steps over ranges that cut buckets at both ends: every bucket equals the
/// one computed from the samples.
#[tokio::test]
async fn long_term_buckets_equal_the_samples_they_stand_for() -> anyhow::Result<()> {
    const SAMPLES: u64 = 300;
    let Some(victoria) = Victoria::from_env().await? else {
        return Ok(());
    };
    let cancel = CancellationToken::new();
    let config = long_term_config(&victoria);
    let (sink, task) = InfluxSink::start(config.clone(), cancel.clone())?;
    let reader = LongTermReader::new(&config, Retention::default())?
        .context("query_url is set, so there is a reader")?;

    let now_ms = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let start = now_ms - now_ms % 60_000 - 42 * 86_400_000;
    let key = TwinKey {
        lab: "lab-a".parse()?,
        machine: "lathe-1".parse()?,
    };
    let metric: protocol::MetricName = "spindle.power_w".parse()?;
    let mut points = Vec::new();
    for i in 0..SAMPLES {
        // Irregular spacing; values exactly representable, so sums are exact in any order.
        let timestamp_ms = start + i * 997 + i % 3;
        let value = (i % 17) as f64 * 0.25 - 2.0;
        points.push((timestamp_ms, value));
        let row = HistoryRow {
            key: key.clone(),
            metric: metric.clone(),
            timestamp_ms,
            seq: 0,
            value,
        };
        // Interleaved, so most buckets hold samples of both series.
        sink.offer(
            row.as_ref(),
            Some(if i % 2 == 0 { "gw-1" } else { "gw-2" }),
            true,
        );
    }
    wait_until(Duration::from_secs(30), "every point acknowledged", || {
        sink.written() == SAMPLES
    })
    .await?;

    let whole = TimeRange {
        from_ms: start,
        to_ms: start + SAMPLES * 1000,
    };
    // A new series becomes searchable after a flush; poll until all samples are counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = http_get(victoria.addr, "/internal/force_flush").await?;
        assert_eq!(status, 200);
        let counted: u64 = reader
            .buckets(&key, &metric, whole, 60_000)
            .await?
            .iter()
            .map(|b| b.count)
            .sum();
        if counted == SAMPLES {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{counted} of {SAMPLES} samples searchable after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (from_ms, to_ms, step) in [
        (whole.from_ms, whole.to_ms, 60_000),
        (whole.from_ms + 1_234, whole.to_ms - 4_321, 1_000),
        (whole.from_ms + 500, whole.from_ms + 100_500, 7_000),
        (whole.from_ms + 10_000, whole.from_ms + 10_999, 60_000),
        (whole.from_ms, whole.to_ms, 250),
    ] {
        let range = TimeRange { from_ms, to_ms };
        let got = reader.buckets(&key, &metric, range, step).await?;
        let expected = expected_buckets(&points, range, step);
        assert!(!expected.is_empty());
        assert_eq!(got, expected, "{range:?} in steps of {step} ms");
    }
    assert!(
        reader
            .render_prometheus()
            .contains("demolab_history_long_term_reads_total{outcome=\"failed\"} 0")
    );

    cancel.cancel();
    within(Duration::from_secs(10), "the sink to stop", task).await??;
    Ok(())
}

/// The history API of a hub whose embedded history keeps two seconds: once a node's samples
/// are older than that, the API answers them from VictoriaMetrics, every sample once, with
/// the same buckets the samples make; with the engine gone it says so instead of showing a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_api_reads_past_the_embedded_retention_from_the_long_term_store()
-> anyhow::Result<()> {
    const SAMPLES: u32 = 100;
    let Some(victoria) = Victoria::from_env().await? else {
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let hub = demolab_tests::start_hub_with(hub::HubConfig {
        influx: Some(long_term_config(&victoria)),
        retention: Retention {
            raw_ms: 1_000,
            rollup_step_ms: 1_000,
            rollup_ms: 2_000,
            max_rows_per_call: 20_000,
        },
        ..demolab_tests::hub_config(data.path())
    })
    .await?;
    let from_ms = hub::ingest::now_ms();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    // The truth: what the engine stored, read with its own export API.
    let (gateway, power) =
        one_node_through_a_gateway(&hub, data.path(), &victoria, SAMPLES, &cancel).await?;
    let newest = power.iter().map(|p| p.0).max().context("samples")?;

    let to_ms = newest + 60_000;
    let path = format!(
        "/api/v1/twins/lab-a/mill-1/history?metric=spindle.power_w&from={from_ms}&to={to_ms}&step=1000"
    );
    // Wait until the embedded window has moved past the newest sample.
    let history = within(Duration::from_secs(20), "the samples to age out", async {
        loop {
            let (status, body) = http_get(hub.http_addr(), &path).await?;
            anyhow::ensure!(status == 200, "{status}: {body}");
            let doc: serde_json::Value = serde_json::from_str(&body)?;
            if doc["long_term_until"]
                .as_u64()
                .is_some_and(|until| until > newest)
            {
                return Ok::<_, anyhow::Error>(doc);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    let buckets: Vec<Bucket> = history["buckets"]
        .as_array()
        .context("buckets")?
        .iter()
        .map(|b| {
            Ok(Bucket {
                start_ms: b["start_ms"].as_u64().context("start_ms")?,
                count: b["count"].as_u64().context("count")?,
                min: b["min"].as_f64().context("min")?,
                max: b["max"].as_f64().context("max")?,
                mean: b["mean"].as_f64().context("mean")?,
                last: b["last"].as_f64().context("last")?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let total: u64 = buckets.iter().map(|b| b.count).sum();
    assert_eq!(total, u64::from(SAMPLES), "{history}");
    let expected = expected_buckets(&power, TimeRange { from_ms, to_ms }, 1000);
    assert_eq!(buckets.len(), expected.len(), "{history}");
    for (got, want) in buckets.iter().zip(&expected) {
        assert_eq!(
            (got.start_ms, got.count, got.min, got.max, got.last),
            (want.start_ms, want.count, want.min, want.max, want.last),
        );
        assert!((got.mean - want.mean).abs() <= 1e-9 * want.mean.abs().max(1.0));
    }

    // The engine gone: the API names the failure rather than answering with a gap.
    drop(victoria);
    let (status, body) = http_get(hub.http_addr(), &path).await?;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("long_term_unavailable"), "{body}");
    let (_, metrics) = http_get(hub.http_addr(), "/metrics").await?;
    assert!(
        metrics.contains("demolab_history_long_term_reads_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

/// A gateway `gw-1` and a node `mill-1` that sends `samples` samples through it to `hub`;
/// returns the gateway and the node's `spindle.power_w` points as the engine stored them,
/// checked to be all of them.
async fn one_node_through_a_gateway(
    hub: &hub::Hub,
    dir: &std::path::Path,
    victoria: &Victoria,
    samples: u32,
    cancel: &CancellationToken,
) -> anyhow::Result<(gateway::GatewayHandle, Vec<(u64, f64)>)> {
    let port = hub.mqtt_addr().port();
    let gateway =
        demolab_tests::start_gateway(port, "lab-a", "gw-1", &dir.join("buffer"), cancel).await?;
    let mut node = demolab_tests::burst_node(port, 0x1f, "mill-1", 3, samples)?;
    // Apart in time, so no two samples share the engine's millisecond.
    node.tick_interval = Duration::from_millis(5);
    simulators::node::run_mqtt_node(node, cancel.clone()).await?;
    let power = exported_power(victoria.addr, "mill-1", samples as usize).await?;
    anyhow::ensure!(
        power.len() == samples as usize,
        "{} of {samples} power samples in VictoriaMetrics",
        power.len()
    );
    Ok((gateway, power))
}

/// One machine's `spindle.power_w` points in the engine, polled (with flushes) until `want`
/// are there or 30 s passed.
async fn exported_power(
    addr: SocketAddr,
    machine: &str,
    want: usize,
) -> anyhow::Result<Vec<(u64, f64)>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = http_get(addr, "/internal/force_flush").await?;
        anyhow::ensure!(status == 200, "force_flush answered {status}");
        let power = export(addr)
            .await?
            .remove(&("machine_spindle.power_w".to_owned(), machine.to_owned()))
            .unwrap_or_default();
        if power.len() >= want || tokio::time::Instant::now() > deadline {
            return Ok(power);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `deploy/grafana/demolab-long-term.json` against the data the sink writes: every variable and
/// every panel query runs on VictoriaMetrics' own API the way Grafana sends it, with Grafana's
/// variables filled in, and shows the samples written: the machines, the series, and a sample
/// count per interval that adds up to every sample.
#[tokio::test]
async fn the_grafana_dashboard_queries_the_long_term_store() -> anyhow::Result<()> {
    let Some(victoria) = Victoria::from_env().await? else {
        return Ok(());
    };
    let cancel = CancellationToken::new();
    let (sink, task) = InfluxSink::start(
        InfluxConfig {
            flush_interval_ms: 50,
            ..InfluxConfig::new(format!("http://{}", victoria.addr), "demolab", "history")
        },
        cancel.clone(),
    )?;
    let now_ms = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let start = now_ms - now_ms % 60_000 - 3_600_000;
    let total = write_through(&sink, &rows(start)?.0).await?;

    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/demolab-long-term.json"
    ))?)?;
    // Grafana's variables as it would fill them for this data and a one-hour view.
    let (from_s, to_s) = (start / 1000, start / 1000 + 3_600);
    let fill = |expr: &str| {
        expr.replace("$lab", "lab-a")
            .replace("$machine", "lathe-1|mill-2")
            .replace("$metric", "machine_spindle.power_w")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
    };
    let encode =
        |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let get = |path: String| {
        let addr = victoria.addr;
        async move {
            let (status, body) = http_get(addr, &path).await?;
            anyhow::ensure!(status == 200, "{path} answered {status}: {body}");
            let doc: serde_json::Value = serde_json::from_str(&body)?;
            anyhow::ensure!(doc["status"] == "success", "{path}: {doc}");
            Ok::<_, anyhow::Error>(doc["data"].clone())
        }
    };

    // Variables: `label_values(selector, label)` is Grafana's call of the labels API.
    let mut flushed = false;
    for (variable, expected) in [
        ("lab", vec!["lab-a"]),
        ("machine", vec!["lathe-1", "mill-2"]),
        (
            "metric",
            vec!["machine_axis.temp_c", "machine_spindle.power_w"],
        ),
    ] {
        let query = dashboard["templating"]["list"]
            .as_array()
            .context("templating")?
            .iter()
            .find(|v| v["name"] == variable)
            .and_then(|v| v["query"].as_str())
            .with_context(|| format!("variable {variable}"))?;
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .context("label_values(selector, label)")?;
        let (selector, label) = inner.rsplit_once(", ").context("selector, label")?;
        let path = format!(
            "/api/v1/label/{label}/values?match[]={}&start={from_s}&end={to_s}",
            encode(&fill(selector))
        );
        // New series are searchable after a flush; the first variable waits for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let values = loop {
            if !flushed {
                http_get(victoria.addr, "/internal/force_flush").await?;
            }
            let values = get(path.clone()).await?;
            if values.as_array().is_some_and(|v| !v.is_empty())
                || tokio::time::Instant::now() > deadline
            {
                break values;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        flushed = true;
        assert_eq!(values, serde_json::json!(expected), "variable {variable}");
    }

    // Panels: every target answers with data; the counts add up to every sample written.
    let mut targets = 0;
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            targets += 1;
            let expr = fill(target["expr"].as_str().context("expr")?);
            let data = if target["instant"] == true {
                get(format!("/api/v1/query?query={}&time={to_s}", encode(&expr))).await?
            } else {
                // Windows `(t - 1m, t]` from `from` on tile the hour, the first sample included.
                get(format!(
                    "/api/v1/query_range?query={}&start={from_s}&end={to_s}&step=60",
                    encode(&expr),
                ))
                .await?
            };
            let series = data["result"].as_array().context("result")?;
            assert!(!series.is_empty(), "{}: no data for {expr}", panel["title"]);
            match panel["id"].as_u64() {
                Some(1) => assert_eq!(series[0]["value"][1], "2", "two machines: {data}"),
                Some(2) => {
                    let samples: f64 = series
                        .iter()
                        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                        .filter_map(|v| v[1].as_str().and_then(|n| n.parse::<f64>().ok()))
                        .sum();
                    assert_eq!(samples, total as f64, "samples per interval add up: {data}");
                }
                _ => {}
            }
        }
    }
    assert_eq!(targets, 6);

    cancel.cancel();
    within(Duration::from_secs(10), "the sink to stop", task).await??;
    Ok(())
}
