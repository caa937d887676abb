//! `hub-bench` — ingest throughput of the hub, written to `bench/results/hub.md`.
//!
//! Edge nodes (plain MQTT clients publishing ready-made Sparkplug B messages, so the load
//! generator costs next to nothing) send births and then DDATA as fast as QoS 1 allows:
//! 1. **broker ceiling** — to an embedded broker with a plain subscriber counting them;
//! 2. **the hub** — to a hub, timed until every sample is applied to its twin *and* committed to
//!    the embedded store with its history (acknowledged-means-stored), then one history query.
//!
//! `cargo run --release -p demolab-bench --bin hub-bench -- --edges 10 --machines 10 --samples 200`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use demolab_bench::sparkplug_load::{METRICS, edge_messages, publish_acked};
use hub::broker::{BrokerConfig, EmbeddedBroker};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Measure the hub's ingest against the broker's own ceiling.
#[derive(Debug, Parser)]
#[command(name = "hub-bench", about)]
struct Args {
    /// Edge nodes (gateways) publishing at once.
    #[arg(long, default_value_t = 10)]
    edges: u32,
    /// Machines behind each edge node.
    #[arg(long, default_value_t = 10)]
    machines: u32,
    /// Samples per machine.
    #[arg(long, default_value_t = 200)]
    samples: u32,
    /// Where the results go.
    #[arg(long, default_value = "bench/results/hub.md")]
    out: PathBuf,
}

/// Publishes every edge's messages concurrently (QoS 1), each edge on its own connection.
async fn publish_all(args: &Args, port: u16) -> anyhow::Result<()> {
    let mut edges = tokio::task::JoinSet::new();
    for edge in 0..args.edges {
        let machines: Vec<String> = (0..args.machines)
            .map(|m| format!("m-{edge}-{m}"))
            .collect();
        let messages = edge_messages(
            "lab-bench",
            &format!("gw-{edge}"),
            &machines,
            args.samples,
            0,
        );
        let options = MqttOptions::new(format!("bench-edge-{edge}"), "127.0.0.1", port);
        edges.spawn(publish_acked(options, messages));
    }
    while let Some(result) = edges.join_next().await {
        result??;
    }
    Ok(())
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let machines = u64::from(args.edges) * u64::from(args.machines);
    let total = machines * u64::from(args.samples);
    let messages = total + machines + u64::from(args.edges);
    println!(
        "hub-bench: {} edges × {} machines × {} samples = {total} samples",
        args.edges, args.machines, args.samples
    );

    // 1. The broker ceiling.
    let broker = EmbeddedBroker::start(BrokerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..BrokerConfig::default()
    })
    .await?;
    let port = broker.local_addr().port();
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("bench-counter", "127.0.0.1", port), 1024);
    client.subscribe("spBv1.0/#", QoS::AtLeastOnce).await?;
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0u64);
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(async move {
        let mut subscribed = Some(subscribed_tx);
        let mut count = 0u64;
        while let Ok(event) = events.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(done) = subscribed.take() {
                        let _ = done.send(());
                    }
                }
                Event::Incoming(Packet::Publish(_)) => {
                    count += 1;
                    count_tx.send_replace(count);
                }
                _ => {}
            }
        }
    });
    subscribed_rx.await?;
    let started = Instant::now();
    publish_all(&args, port).await?;
    tokio::time::timeout(
        Duration::from_secs(300),
        count_rx.wait_for(|n| *n >= messages),
    )
    .await??;
    let ceiling = messages as f64 / started.elapsed().as_secs_f64();
    counter.abort();
    broker.shutdown().await?;
    println!("broker ceiling: {ceiling:.0} messages/s");

    // 2. The hub: applied to twins and committed with history.
    let data = tempfile::tempdir()?;
    let hub = demolab_tests::start_hub_with(hub::HubConfig {
        json_topics: false,
        ..demolab_tests::hub_config(data.path())
    })
    .await?;
    let port = hub.mqtt_addr().port();
    let stats = hub.stats().clone();
    let rows = total * METRICS.len() as u64;
    let started = Instant::now();
    publish_all(&args, port).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut report_at = Instant::now() + Duration::from_secs(1);
    while stats.samples_applied() < total || stats.history_rows() < rows {
        if Instant::now() > report_at {
            report_at += Duration::from_secs(1);
            println!(
                "  … {} samples applied, {} history rows committed",
                stats.samples_applied(),
                stats.history_rows()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} samples applied, {} of {rows} history rows committed",
                stats.samples_applied(),
                stats.history_rows()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let hub_rate = total as f64 / elapsed.as_secs_f64();
    let commits = stats.commits();
    println!("hub: {hub_rate:.0} samples/s applied and committed, {commits} commits");

    // One history query over the whole run for one series, as the web platform would ask.
    let now = hub::ingest::now_ms();
    let path = format!(
        "/api/v1/twins/lab-bench/m-0-0/history?metric=spindle.power_w&from={}&to={}",
        now - 3_600_000,
        now + 1
    );
    let query_started = Instant::now();
    let doc = demolab_tests::get_json(hub.http_addr(), &path).await?;
    let query_ms = query_started.elapsed().as_secs_f64() * 1000.0;
    let counted: u64 = doc["buckets"]
        .as_array()
        .context("buckets")?
        .iter()
        .filter_map(|b| b["count"].as_u64())
        .sum();
    if counted != u64::from(args.samples) {
        bail!(
            "the history of m-0-0 holds {counted} samples, not {}",
            args.samples
        );
    }
    let rss = peak_rss_kib();
    hub.shutdown().await?;

    let report = format!(
        "# Hub benchmark\n\n\
         Written by `cargo run --release -p demolab-bench --bin hub-bench -- --edges {edges} --machines {per} --samples {samples}`.\n\
         One run, one machine ({cores} cores); compare the rows with each other, not across machines.\n\n\
         | measure | value |\n|---|---|\n\
         | edge nodes publishing at once | {edges} |\n\
         | machines (twins) | {machines} |\n\
         | samples (QoS 1 DDATA, {metrics} values each) | {total} |\n\
         | broker ceiling: messages/s to a plain subscriber | {ceiling:.0} |\n\
         | hub: samples/s applied to twins and committed with their history | {hub_rate:.0} |\n\
         | hub / ceiling | {ratio:.2} |\n\
         | storage commits (each one fsync, then the PUBACKs) | {commits} |\n\
         | history query, one series, last hour (HTTP round trip) | {query_ms:.1} ms |\n\
         | process peak RSS (hub, broker and load generator) | {rss} KiB |\n\n\
         The hub path is: broker delivery, Sparkplug decoding and session checks, twin update (order by\n\
         node sequence, KPIs, alarm rules and anomaly score), the stream broadcast, then a group commit\n\
         of history rows (through the journal), twins and alarm state in one redb transaction once\n\
         `commit_batch` (256) messages wait or 50 ms passed, and only then the acknowledgements to the\n\
         broker. The embedded broker lets 1000 messages go unacknowledged per client, so a commit\n\
         carries hundreds of them; the JSON topics are off here.\n",
        edges = args.edges,
        per = args.machines,
        samples = args.samples,
        metrics = METRICS.len(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        ratio = hub_rate / ceiling,
        rss = rss.map_or("?".into(), |v| v.to_string()),
    );
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, report)?;
    println!("results written to {}", args.out.display());
    Ok(())
}
