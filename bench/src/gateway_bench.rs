//! `gateway-bench` — throughput and memory of the gateway, written to `bench/results/gateway.md`.
//!
//! Every figure comes from one run on one machine, so read them as ratios:
//! 1. **broker ceiling** — a fleet of simulated nodes publishes node frames (QoS 1) to the hub's
//!    embedded broker and a plain subscriber counts them;
//! 2. **gateway to a plain subscriber** — the same fleet, now through a gateway running as its
//!    own process (pipeline, disk buffer with group commit, Sparkplug uplink) whose uplink goes
//!    to a second embedded broker, where a plain subscriber counts the DDATA: the gateway's own
//!    throughput, without the hub's ingest competing for the machine's cores;
//! 3. **gateway to the hub** — the same gateway path with the uplink to the hub, timed until the
//!    hub has applied every sample.
//!
//! The CPU time of the gateway process and of this process (load generator, brokers, hub) is
//! read from `/proc` for each phase, and the gateway's peak RSS at the end of each.
//!
//! `cargo run --release -p demolab-bench --bin gateway-bench -- --nodes 100 --samples 1000`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use demolab_tests::{ChildProcess, GATEWAY_CHILD_ENV, run_gateway_child, spawn_gateway_process};
use hub::broker::{BrokerConfig, EmbeddedBroker};
use hub::{BrokerSetting, Hub, HubConfig};
use protocol::NodeId;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use simulators::node::{MqttNodeConfig, fresh_boot_id, run_mqtt_node};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

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

/// User plus system CPU seconds of a process (`"self"` for this one), all threads.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// A plain subscriber on `port` that counts the messages on `filter`.
async fn counter(
    port: u16,
    client_id: &str,
    filter: &str,
) -> anyhow::Result<(watch::Receiver<u64>, tokio::task::JoinHandle<()>)> {
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new(client_id, "127.0.0.1", port), 1024);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let (count_tx, count_rx) = watch::channel(0u64);
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _client = client;
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
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .context("no SUBACK for the counter")??;
    Ok((count_rx, task))
}

/// Ends the persistent MQTT session a killed gateway left on the broker at `port`: otherwise the
/// broker keeps queueing the next phase's node frames for it, work no real deployment does.
async fn end_session(port: u16, client_id: &str) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 16);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await? {
                client.disconnect().await?;
                // Poll until the DISCONNECT is out.
                while events.poll().await.is_ok() {}
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("ending a gateway's southbound session timed out")?
}

fn gateway_config(
    dir: &Path,
    gateway: &str,
    uplink_port: u16,
    south_port: u16,
) -> anyhow::Result<PathBuf> {
    Ok(demolab_bench::gateway_toml(
        dir,
        "bench",
        gateway,
        uplink_port,
        south_port,
        &format!("buffer-{gateway}"),
        "every-batch",
    )?)
}

/// What one phase through the gateway measured.
#[derive(Debug)]
struct Phase {
    rate: f64,
    idle_rss: Option<u64>,
    peak_rss: Option<u64>,
    /// CPU seconds of the gateway process during the phase.
    gateway_cpu: Option<f64>,
    /// CPU seconds of this process (load generator, brokers, hub) during the phase.
    bench_cpu: Option<f64>,
    elapsed: Duration,
}

impl Phase {
    fn cpu_per_sample_us(cpu: Option<f64>, total: u64) -> String {
        cpu.map_or("?".into(), |s| format!("{:.1}", s * 1e6 / total as f64))
    }

    /// The rate the machine's `cores` could sustain if they did nothing but this phase's work
    /// (the CPU seconds of the gateway and of this process per sample), and the measured rate
    /// as a share of it.
    fn cpu_bound(&self, cores: usize, total: u64) -> String {
        match (self.gateway_cpu, self.bench_cpu) {
            (Some(gateway), Some(bench)) if gateway + bench > 0.0 => {
                let bound = cores as f64 * total as f64 / (gateway + bench);
                format!("{bound:.0} ({:.0} %)", self.rate * 100.0 / bound)
            }
            _ => "?".into(),
        }
    }

    fn core_share(&self, cpu: Option<f64>) -> String {
        cpu.map_or("?".into(), |s| {
            format!("{:.0} %", s * 100.0 / self.elapsed.as_secs_f64())
        })
    }
}

/// Runs the fleet through a gateway process until `done` says all `total` samples arrived.
async fn through_gateway<F, Fut>(
    args: &Args,
    config: &Path,
    fleet_port: u16,
    lab_index: u64,
    total: u64,
    done: F,
) -> anyhow::Result<(Phase, ChildProcess)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let child = spawn_gateway_process(&[], config)?;
    let pid = child.id();
    let idle_rss = peak_rss_kib(pid);
    let gateway_cpu_before = cpu_seconds(&pid.to_string());
    let bench_cpu_before = cpu_seconds("self");
    let started = Instant::now();
    run_fleet(fleet(args, fleet_port, lab_index)).await?;
    done().await?;
    let elapsed = started.elapsed();
    let diff = |after: Option<f64>, before: Option<f64>| Some(after? - before?);
    let phase = Phase {
        rate: total as f64 / elapsed.as_secs_f64(),
        idle_rss,
        peak_rss: peak_rss_kib(pid),
        gateway_cpu: diff(cpu_seconds(&pid.to_string()), gateway_cpu_before),
        bench_cpu: diff(cpu_seconds("self"), bench_cpu_before),
        elapsed,
    };
    Ok((phase, child))
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
    let (mut count_rx, counter_task) =
        counter(port, "bench-counter", "demolab/v1/node/+/up").await?;
    let bench_cpu_before = cpu_seconds("self");
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
    let raw_bench_cpu = cpu_seconds("self")
        .zip(bench_cpu_before)
        .map(|(a, b)| a - b);
    counter_task.abort();
    let raw_rate = expected as f64 / raw_elapsed.as_secs_f64();
    println!("broker ceiling: {raw_rate:.0} frames/s");

    // 2. Through the gateway, as its own process, to a plain subscriber on a second broker.
    let uplink_broker = EmbeddedBroker::start(BrokerConfig {
        bind: "127.0.0.1:0".parse()?,
        ..BrokerConfig::default()
    })
    .await?;
    let uplink_port = uplink_broker.local_addr().port();
    let (mut ddata_rx, ddata_task) =
        counter(uplink_port, "bench-ddata-counter", "spBv1.0/bench/DDATA/#").await?;
    let config = gateway_config(data.path(), "gw-plain", uplink_port, port)?;
    let (plain, mut child) = through_gateway(&args, &config, port, 2, total, || async {
        tokio::time::timeout(Duration::from_secs(300), ddata_rx.wait_for(|n| *n >= total))
            .await
            .context("not every DDATA reached the plain subscriber")??;
        Ok(())
    })
    .await?;
    child.kill()?;
    child.wait()?;
    ddata_task.abort();
    end_session(port, "gw-plain-south").await?;
    uplink_broker.shutdown().await?;
    println!(
        "gateway to a plain subscriber: {:.0} samples/s, peak RSS {:?} KiB",
        plain.rate, plain.peak_rss
    );

    // 3. Through the gateway to the hub's twins.
    let config = gateway_config(data.path(), "gw-bench", port, port)?;
    let stats = hub.stats().clone();
    let (to_hub, mut child) = through_gateway(&args, &config, port, 3, total, || async {
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
        Ok(())
    })
    .await?;
    child.kill()?;
    child.wait()?;
    println!(
        "through the gateway to the hub: {:.0} samples/s, peak RSS {:?} KiB",
        to_hub.rate, to_hub.peak_rss
    );

    let kib = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let raw_bound = raw_bench_cpu
        .filter(|cpu| *cpu > 0.0)
        .map_or("?".into(), |cpu| {
            let bound = cores as f64 * expected as f64 / cpu;
            format!("{bound:.0} ({:.0} %)", raw_rate * 100.0 / bound)
        });
    let report = format!(
        "# Gateway benchmark\n\n\
         Written by `cargo run --release -p demolab-bench --bin gateway-bench -- --nodes {nodes} --samples {samples}`.\n\
         One run, one machine ({cores} cores); compare the rows with each other, not across machines.\n\n\
         | measure | value |\n|---|---|\n\
         | simulated nodes publishing at once | {nodes} |\n\
         | samples (QoS 1 node frames) | {total} |\n\
         | broker ceiling: frames/s to a plain subscriber | {raw_rate:.0} |\n\
         | through the gateway to a plain subscriber (second broker): samples/s | {plain_rate:.0} |\n\
         | **gateway to plain subscriber / ceiling** | **{plain_ratio:.2}** |\n\
         | through the gateway to the hub's twins: samples/s | {hub_rate:.0} |\n\
         | **gateway to hub / ceiling** | **{hub_ratio:.2}** |\n\
         | gateway process RSS before load | {idle} KiB |\n\
         | gateway process peak RSS with {nodes} nodes (plain / hub phase) | {plain_peak} / {hub_peak} KiB |\n\
         | gateway CPU per sample (plain / hub phase) | {plain_gw_us} / {hub_gw_us} µs |\n\
         | gateway process busy (plain / hub phase), of one core | {plain_gw_share} / {hub_gw_share} |\n\
         | bench process CPU per sample: ceiling / plain / hub phase (load generator, brokers, hub) | {raw_bench_us} / {plain_bench_us} / {hub_bench_us} µs |\n\
         | CPU bound, samples/s, if the {cores} cores did only this work (measured share): ceiling | {raw_bound} |\n\
         | CPU bound (measured share): gateway to plain subscriber | {plain_bound} |\n\
         | CPU bound (measured share): gateway to hub | {hub_bound} |\n\n\
         The gateway path includes decoding, validation, the write-ahead disk buffer (one fsync per batch,\n\
         `every-batch`), the acknowledgement of each node message after it is durable, Sparkplug encoding\n\
         and the uplink's QoS 1 round trip; the hub phase adds the hub's ingest (twins, history, group\n\
         commits). The load generator, the brokers and the hub run in the bench process and share the\n\
         machine with the gateway: the CPU rows show who spends the cores in each phase. A CPU bound is\n\
         the cores divided by the CPU time all processes spent per sample: a measured share near 100 %\n\
         means the phase ran out of cores, not out of gateway. The gateway phases pay for two broker hops\n\
         (nodes → broker → gateway → broker → subscriber) where the ceiling pays for one, in the same\n\
         process as the load generator: with a gateway costing no CPU at all, the plain phase's ratio\n\
         could reach only about ceiling CPU per sample ÷ plain-phase bench CPU per sample.\n",
        nodes = args.nodes,
        samples = args.samples,
        plain_bound = plain.cpu_bound(cores, total),
        hub_bound = to_hub.cpu_bound(cores, total),
        plain_rate = plain.rate,
        plain_ratio = plain.rate / raw_rate,
        hub_rate = to_hub.rate,
        hub_ratio = to_hub.rate / raw_rate,
        idle = kib(plain.idle_rss.or(to_hub.idle_rss)),
        plain_peak = kib(plain.peak_rss),
        hub_peak = kib(to_hub.peak_rss),
        plain_gw_us = Phase::cpu_per_sample_us(plain.gateway_cpu, total),
        hub_gw_us = Phase::cpu_per_sample_us(to_hub.gateway_cpu, total),
        plain_gw_share = plain.core_share(plain.gateway_cpu),
        hub_gw_share = to_hub.core_share(to_hub.gateway_cpu),
        raw_bench_us = Phase::cpu_per_sample_us(raw_bench_cpu, expected),
        plain_bench_us = Phase::cpu_per_sample_us(plain.bench_cpu, total),
        hub_bench_us = Phase::cpu_per_sample_us(to_hub.bench_cpu, total),
    );
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, report)?;
    println!("results written to {}", args.out.display());
    hub.shutdown().await?;
    Ok(())
}
