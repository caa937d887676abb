//! `gateway-bench` — throughput and memory of the gateway, written to `bench/results/gateway.md`.
//!
//! Both figures come from one run on one machine, so read them as ratios:
//! 1. **broker ceiling** — a fleet of simulated nodes publishes node frames (QoS 1) to the hub's
//!    embedded broker and a plain subscriber counts them;
//! 2. **through the gateway** — the same fleet, now through a gateway running as its own process
//!    (pipeline, disk buffer with group commit, Sparkplug uplink) to the hub, timed until the hub
//!    has applied every sample. The gateway's peak RSS is read from `/proc` at the end.
//!
//! `cargo run --release -p demolab-bench --bin gateway-bench -- --nodes 100 --samples 200`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use demolab_tests::{GATEWAY_CHILD_ENV, run_gateway_child, spawn_gateway_process};
use hub::broker::BrokerConfig;
use hub::{BrokerSetting, Hub, HubConfig};
use protocol::NodeId;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use simulators::node::{MqttNodeConfig, fresh_boot_id, run_mqtt_node};
use tokio_util::sync::CancellationToken;

/// Measure the gateway's throughput and memory against the broker's own ceiling.
#[derive(Debug, Parser)]
#[command(name = "gateway-bench", about)]
struct Args {
    /// Simulated sensor nodes publishing at once.
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// Samples each node sends.
    #[arg(long, default_value_t = 200)]
    samples: u32,
    /// Where the results go.
    #[arg(long, default_value = "bench/results/gateway.md")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    if let Ok(config) = std::env::var(GATEWAY_CHILD_ENV) {
        return run_gateway_child(Path::new(&config));
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(bench(args))
}

fn fleet(args: &Args, port: u16, lab_index: u64) -> Vec<MqttNodeConfig> {
    (0..u64::from(args.nodes))
        .map(|i| {
            let node = NodeId(0xbe00_0000 | lab_index << 20 | i);
            MqttNodeConfig {
                node,
                machine: format!("m-{i}")
                    .parse()
                    .unwrap_or_else(|_| unreachable!("valid id")),
                boot: fresh_boot_id(node),
                seed: i,
                sample_period: Duration::from_secs(1),
                tick_interval: Duration::ZERO,
                max_samples: Some(args.samples),
                broker_host: "127.0.0.1".into(),
                broker_port: port,
                login: None,
            }
        })
        .collect()
}

async fn run_fleet(configs: Vec<MqttNodeConfig>) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut nodes = tokio::task::JoinSet::new();
    for config in configs {
        nodes.spawn(run_mqtt_node(config, cancel.clone()));
    }
    while let Some(result) = nodes.join_next().await {
        result??;
    }
    Ok(())
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = Hub::start(HubConfig {
        http_bind: "127.0.0.1:0".parse()?,
        broker: BrokerSetting::Embedded(BrokerConfig {
            bind: "127.0.0.1:0".parse()?,
            ..BrokerConfig::default()
        }),
        data_dir: data.path().join("hub"),
        // The lab is not configured: this is not about admission.
        accept_unknown: true,
        ..HubConfig::default()
    })
    .await?;
    tokio::time::timeout(Duration::from_secs(10), hub.ready())
        .await
        .context("hub not ready")?;
    let port = hub.mqtt_addr().port();
    let total = u64::from(args.nodes) * u64::from(args.samples);
    println!(
        "gateway-bench: {} nodes × {} samples = {total} samples",
        args.nodes, args.samples
    );

    // 1. The broker ceiling: the same fleet, counted by a plain subscriber.
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("bench-counter", "127.0.0.1", port), 1024);
    client
        .subscribe("demolab/v1/node/+/up", QoS::AtLeastOnce)
        .await?;
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
    run_fleet(fleet(&args, port, 1)).await?;
    // Hellos are frames too: one per node.
    let expected = total + u64::from(args.nodes);
    tokio::time::timeout(
        Duration::from_secs(120),
        count_rx.wait_for(|n| *n >= expected),
    )
    .await??;
    let raw_elapsed = started.elapsed();
    counter.abort();
    let raw_rate = expected as f64 / raw_elapsed.as_secs_f64();
    println!("broker ceiling: {raw_rate:.0} frames/s");

    // 2. Through the gateway, as its own process.
    let config = data.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "lab = \"bench\"\ngateway = \"gw-bench\"\n[uplink]\nhost = \"127.0.0.1\"\nport = {port}\n\
             [southbound]\nhost = \"127.0.0.1\"\nport = {port}\n[buffer]\ndir = \"buffer\"\n[ops]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )?;
    let mut child = spawn_gateway_process(&[], &config)?;
    let pid = child.id();
    let idle_rss = peak_rss_kib(pid);
    let started = Instant::now();
    run_fleet(fleet(&args, port, 2)).await?;
    let stats = hub.stats().clone();
    let deadline = Instant::now() + Duration::from_secs(300);
    while stats.samples_applied() < total {
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} samples reached the hub",
                stats.samples_applied()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gateway_elapsed = started.elapsed();
    let peak_rss = peak_rss_kib(pid);
    child.kill()?;
    child.wait()?;
    let gateway_rate = total as f64 / gateway_elapsed.as_secs_f64();
    println!("through the gateway: {gateway_rate:.0} samples/s, peak RSS {peak_rss:?} KiB");

    let report = format!(
        "# Gateway benchmark\n\n\
         Written by `cargo run --release -p demolab-bench --bin gateway-bench -- --nodes {nodes} --samples {samples}`.\n\
         One run, one machine ({cores} cores); compare the rows with each other, not across machines.\n\n\
         | measure | value |\n|---|---|\n\
         | simulated nodes publishing at once | {nodes} |\n\
         | samples (QoS 1 node frames) | {total} |\n\
         | broker ceiling: frames/s to a plain subscriber | {raw_rate:.0} |\n\
         | through the gateway to the hub's twins: samples/s | {gateway_rate:.0} |\n\
         | gateway / ceiling | {ratio:.2} |\n\
         | gateway process RSS before load | {idle} KiB |\n\
         | gateway process peak RSS with {nodes} nodes | {peak} KiB |\n\n\
         The gateway path includes decoding, validation, the write-ahead disk buffer (one fsync per batch,\n\
         `every-batch`), the acknowledgement of each node message after it is durable, Sparkplug encoding,\n\
         the uplink's QoS 1 round trip and the hub's ingest. The load generator, the broker and the hub share\n\
         the machine with the gateway.\n",
        nodes = args.nodes,
        samples = args.samples,
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        ratio = gateway_rate / raw_rate,
        idle = idle_rss.map_or("?".into(), |v| v.to_string()),
        peak = peak_rss.map_or("?".into(), |v| v.to_string()),
    );
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, report)?;
    println!("results written to {}", args.out.display());
    hub.shutdown().await?;
    Ok(())
}
