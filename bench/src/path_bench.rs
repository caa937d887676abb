//! `path-bench` — the whole path a sample takes, written to `bench/results/path.{md,json}`:
//! simulated sensor nodes publish node frames (QoS 1) to the lab's broker, a gateway running as
//! its own process turns them into Sparkplug DDATA (pipeline, disk buffer, uplink), the hub
//! applies them and streams them to a WebSocket client in this process.
//!
//! 1. **Latency, node → browser**: at each `--rates` (samples/s over all nodes, paced) for
//!    `--step-s`, the time from a node handing its frame to the MQTT client to the WebSocket
//!    client reading the sample (matched by machine and node sequence number; both ends are
//!    `Instant`s of this process, so no clocks need to agree).
//! 2. **Store-and-forward catch-up**: live load at `--live-rate`; the gateway's uplink is cut
//!    for `--cut-s` (a relay between the gateway and the hub's broker drops the connection and
//!    refuses new ones) while nodes keep sending, then restored. Reported: the backlog the
//!    gateway buffered, how long after the link returns the hub has applied everything sent
//!    before it returned, and the rate it applied samples at meanwhile (replay and live
//!    together). At the end every sample sent in the run must have been applied exactly once.
//!
//! `cargo run --release -p demolab-bench --bin path-bench`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use demolab_bench::latency::{self, Latency, Recorder, machine_name};
use demolab_bench::measure::{clock_ticks, cpu_ticks, machine_jiffies};
use demolab_tests::{CuttableProxy, GATEWAY_CHILD_ENV, run_gateway_child, spawn_gateway_process};
use hub::broker::BrokerConfig;
use hub::{BrokerSetting, Hub, HubConfig};
use protocol::node_topic::{self, Direction};
use protocol::{Frame, Hello, MachineId, NodeId, Reading, Samples, codec};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::json;
use simulators::node::{SIM_FIRMWARE, cnc_metric_descriptors};
use tokio::task::JoinSet;

/// The lab every node and the gateway belong to.
const LAB: &str = "bench";
/// The edge index in machine names (`m-0-{i}`), so the latency matcher parses them.
const EDGE: u32 = 0;

/// Measure the whole path from sensor node to browser, and the gateway's catch-up.
#[derive(Debug, Parser)]
#[command(name = "path-bench", about)]
struct Args {
    /// Simulated sensor nodes.
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// Paced rates (samples/s over all nodes) at which latency is measured.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rates: Vec<u32>,
    /// Seconds of each latency step.
    #[arg(long, default_value_t = 10)]
    step_s: u64,
    /// Live rate (samples/s) during the catch-up measurement.
    #[arg(long, default_value_t = 1000)]
    live_rate: u32,
    /// Seconds the gateway's uplink stays cut.
    #[arg(long, default_value_t = 10)]
    cut_s: u64,
    /// The gateway's `buffer.fsync`: `every-batch` (its default) or, to see what durability
    /// costs the path, `never`.
    #[arg(long, default_value = "every-batch")]
    gateway_fsync: String,
    /// Where the results go (`.md`; the `.json` beside it).
    #[arg(long, default_value = "bench/results/path.md")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    if let Ok(config) = std::env::var(GATEWAY_CHILD_ENV) {
        return run_gateway_child(Path::new(&config));
    }
    let args = Args::parse();
    if args.nodes == 0 || args.rates.contains(&0) || args.live_rate == 0 {
        bail!("--nodes, --rates and --live-rate must be at least 1");
    }
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

/// One simulated node: its MQTT client and what it has sent.
struct Node {
    index: u32,
    id: NodeId,
    client: AsyncClient,
    seq: u32,
}

impl Node {
    async fn connect(index: u32, port: u16, tasks: &mut JoinSet<()>) -> anyhow::Result<Node> {
        let id = NodeId(0xbe10_0000 | u64::from(index));
        let mut options = MqttOptions::new(format!("path-node-{index}"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 256);
        tasks.spawn(async move { while events.poll().await.is_ok() {} });
        Ok(Node {
            index,
            id,
            client,
            seq: 0,
        })
    }

    fn topic(&self) -> String {
        node_topic::format(self.id, Direction::Up).to_string()
    }

    async fn hello(&self, period_ms: u32) -> anyhow::Result<()> {
        let hello = Frame::Hello(Hello {
            node: self.id,
            firmware: SIM_FIRMWARE,
            // Fresh per run, so the gateway does not take these for a replay of a last run.
            boot: std::process::id() ^ self.index,
            machine: Some(MachineId::new(&machine_name(EDGE, self.index))?),
            metrics: cnc_metric_descriptors(period_ms).into_iter().collect(),
        });
        self.publish(&hello).await
    }

    /// The next sample; its send time goes to `recorder` just before the client takes it.
    async fn sample(&mut self, period_ms: u32, recorder: &Recorder) -> anyhow::Result<()> {
        self.seq += 1;
        let phase = (self.seq % 100) as f32;
        let readings = [
            4_000.0 + 10.0 * phase,
            0.5 + phase / 200.0,
            22.0,
            1.0,
            phase,
        ]
        .into_iter()
        .enumerate()
        .map(|(index, value)| Reading {
            index: index as u8,
            value,
        })
        .collect();
        let frame = Frame::Samples(Samples {
            node: self.id,
            seq: self.seq,
            uptime_ms: u64::from(self.seq) * u64::from(period_ms),
            readings,
        });
        recorder.sent((EDGE, self.index, self.seq), Instant::now());
        self.publish(&frame).await
    }

    async fn publish(&self, frame: &Frame) -> anyhow::Result<()> {
        let bytes = codec::encode_to_vec(frame).map_err(|err| anyhow::anyhow!("{err:?}"))?;
        self.client
            .publish(self.topic(), QoS::AtLeastOnce, false, bytes)
            .await?;
        Ok(())
    }
}

/// Samples sent by the fleet in this run.
#[derive(Debug, Default)]
struct Sent(AtomicU64);

/// Every node sends at `rate / nodes` per second until `stop` is set; returns the nodes.
async fn paced(
    nodes: Vec<Node>,
    rate: u32,
    recorder: Arc<Recorder>,
    sent: Arc<Sent>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Node>> {
    let count = nodes.len() as u32;
    let period = Duration::from_secs_f64(f64::from(count) / f64::from(rate));
    let period_ms = period.as_millis().max(1) as u32;
    let mut senders = JoinSet::new();
    for mut node in nodes {
        let (recorder, sent, stop) = (recorder.clone(), sent.clone(), stop.clone());
        senders.spawn(async move {
            // Spread the nodes over the period, so the load is even, not a burst per tick.
            let offset = period.mul_f64(f64::from(node.index) / f64::from(count));
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                node.sample(period_ms, &recorder).await?;
                sent.0.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(node)
        });
    }
    let mut nodes = Vec::new();
    while let Some(node) = senders.join_next().await {
        nodes.push(node??);
    }
    nodes.sort_by_key(|n| n.index);
    Ok(nodes)
}

/// Waits until the hub has applied `want` samples in all (warm-up included).
async fn applied(hub: &Hub, want: u64, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while hub.stats().samples_applied() < want {
        if started.elapsed() > within {
            bail!(
                "the hub applied {} of {want} samples within {within:?}",
                hub.stats().samples_applied()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(started.elapsed())
}

struct Step {
    rate: u32,
    sent: u64,
    latency: Latency,
    cpu: Cpu,
}

/// Where the cores went during a step: the gateway process, this process (nodes, broker, hub,
/// WebSocket client) and the whole machine, each in % of one core.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    gateway: f64,
    bench: f64,
    machine: f64,
}

/// CPU counters at the start of a step.
struct CpuWindow {
    started: Instant,
    gateway: u64,
    bench: u64,
    machine: Option<(u64, u64)>,
}

impl CpuWindow {
    fn open(gateway_pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            started: Instant::now(),
            gateway: cpu_ticks(gateway_pid)?,
            bench: cpu_ticks(std::process::id())?,
            machine: machine_jiffies(),
        })
    }

    fn close(&self, gateway_pid: u32, ticks_per_s: u64, cores: usize) -> anyhow::Result<Cpu> {
        let seconds = self.started.elapsed().as_secs_f64();
        let share = |ticks: u64| ticks as f64 / ticks_per_s as f64 / seconds * 100.0;
        let machine = match (self.machine, machine_jiffies()) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                (busy1 - busy0) as f64 / (total1 - total0) as f64 * 100.0 * cores as f64
            }
            _ => f64::NAN,
        };
        Ok(Cpu {
            gateway: share(cpu_ticks(gateway_pid)? - self.gateway),
            bench: share(cpu_ticks(std::process::id())? - self.bench),
            machine,
        })
    }
}

struct CatchUp {
    live_rate: u32,
    cut: Duration,
    backlog: u64,
    drain: Duration,
    apply_rate: f64,
    sent: u64,
    applied: u64,
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
        accept_unknown: true,
        // The WebSocket client reads the lab without logging in.
        auth: hub::auth::AuthConfig {
            public_labs: vec![LAB.into()],
            ..hub::auth::AuthConfig::default()
        },
        ..HubConfig::default()
    })
    .await?;
    tokio::time::timeout(Duration::from_secs(10), hub.ready())
        .await
        .context("hub not ready")?;
    let broker = hub.mqtt_addr();
    // The gateway's uplink goes through a relay that the catch-up phase cuts; its southbound
    // side talks to the same broker directly, so the nodes are never cut off.
    let uplink = CuttableProxy::start(broker).await?;
    let buffer = data.path().join("buffer");
    let config = demolab_bench::gateway_toml(
        data.path(),
        LAB,
        "gw-path",
        uplink.addr().port(),
        broker.port(),
        &buffer.display().to_string(),
        &args.gateway_fsync,
    )?;
    let mut gateway = spawn_gateway_process(&[], &config)?;
    println!(
        "path-bench: {} nodes → gateway process {} → hub {} → WebSocket",
        args.nodes,
        gateway.id(),
        hub.http_addr()
    );

    let recorder = Arc::new(Recorder::default());
    let stream = latency::follow(
        format!("ws://{}/api/v1/stream?lab={LAB}", hub.http_addr()),
        recorder.clone(),
    )
    .await?;
    let mut connections = JoinSet::new();
    let mut nodes = Vec::new();
    for index in 0..args.nodes {
        nodes.push(Node::connect(index, broker.port(), &mut connections).await?);
    }
    // A twin is born with its first sample. The gateway may subscribe to its nodes after it
    // says it is ready, and a `Hello` nobody heard is not repeated by the broker: say it again,
    // with a sample, until every twin is born. These warm-up samples are not counted below.
    let born = Instant::now();
    while hub.twins().counts().0 < args.nodes as usize {
        if born.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} of {} twins born within 60 s",
                hub.twins().counts().0,
                args.nodes
            );
        }
        for node in &mut nodes {
            node.hello(100).await?;
            node.sample(100, &recorder).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Counted from here: wait until the warm-up's last samples have settled.
    let mut base = hub.stats().samples_applied();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = hub.stats().samples_applied();
        if now == base {
            break;
        }
        base = now;
    }
    let sent = Arc::new(Sent::default());
    let ticks_per_s = clock_ticks();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut steps = Vec::new();
    for &rate in &args.rates {
        recorder.begin();
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(paced(
            nodes,
            rate,
            recorder.clone(),
            sent.clone(),
            stop.clone(),
        ));
        let before = sent.0.load(Ordering::Relaxed);
        let window = CpuWindow::open(gateway.id())?;
        tokio::time::sleep(Duration::from_secs(args.step_s)).await;
        let cpu = window.close(gateway.id(), ticks_per_s, cores)?;
        stop.store(true, Ordering::Relaxed);
        nodes = load.await??;
        let step_sent = sent.0.load(Ordering::Relaxed) - before;
        applied(
            &hub,
            base + sent.0.load(Ordering::Relaxed),
            Duration::from_secs(60),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while recorder.outstanding() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let latency = recorder.end();
        println!(
            "{rate} samples/s: {step_sent} sent, p50 {:?} p99 {:?} max {:?} ms, {} missed",
            latency.p50_ms, latency.p99_ms, latency.max_ms, latency.missed
        );
        steps.push(Step {
            rate,
            sent: step_sent,
            latency,
            cpu,
        });
    }

    // Store and forward: the uplink goes away under live load and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(paced(
        nodes,
        args.live_rate,
        recorder.clone(),
        sent.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    uplink.cut();
    tokio::time::sleep(Duration::from_secs(args.cut_s)).await;
    let restored_sent = sent.0.load(Ordering::Relaxed);
    let restored_applied = hub.stats().samples_applied();
    uplink.restore();
    let drain = applied(&hub, base + restored_sent, Duration::from_secs(300)).await?;
    let drained_applied = hub.stats().samples_applied();
    stop.store(true, Ordering::Relaxed);
    load.await??;
    let total = sent.0.load(Ordering::Relaxed);
    applied(&hub, base + total, Duration::from_secs(120)).await?;
    // Nothing more arrives: every sample was applied once, none twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let catch_up = CatchUp {
        live_rate: args.live_rate,
        cut: Duration::from_secs(args.cut_s),
        // Everything sent and not applied when the link returns waits in the gateway (or on
        // its way): the backlog.
        backlog: (base + restored_sent).saturating_sub(restored_applied),
        drain,
        apply_rate: (drained_applied - restored_applied) as f64 / drain.as_secs_f64(),
        sent: total,
        applied: hub.stats().samples_applied() - base,
    };
    println!(
        "catch-up: {} buffered in {:?}, everything sent before the link returned applied {:?} later ({:.0} samples/s applied meanwhile); {} sent, {} applied",
        catch_up.backlog,
        catch_up.cut,
        catch_up.drain,
        catch_up.apply_rate,
        catch_up.sent,
        catch_up.applied
    );
    if catch_up.applied != catch_up.sent {
        bail!(
            "{} samples sent but {} applied: not exactly once",
            catch_up.sent,
            catch_up.applied
        );
    }

    write_results(&args, &steps, &catch_up)?;
    stream.abort();
    connections.abort_all();
    gateway.kill()?;
    gateway.wait()?;
    hub.shutdown().await?;
    Ok(())
}

fn write_results(args: &Args, steps: &[Step], catch_up: &CatchUp) -> anyhow::Result<()> {
    let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.2}"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut md = format!(
        "# Whole path: sensor node → gateway → hub → WebSocket\n\n\
         Written by `cargo run --release -p demolab-bench --bin path-bench -- --nodes {nodes} \
         --rates {rates} --step-s {step_s} --live-rate {live} --cut-s {cut} --gateway-fsync {fsync}`. One run on one \
         machine ({cores} cores) that also runs the nodes, the broker, the hub and the WebSocket \
         client; the gateway is its own process.\n\n\
         Latency is from a node handing its QoS 1 frame to its MQTT client to the WebSocket \
         client reading the sample from the hub's stream: broker, gateway (decode, validate, \
         disk buffer with its fsync, Sparkplug), broker again, the hub's ingest and its stream.\n\n\
         | samples/s | sent | matched | p50 ms | p99 ms | max ms | missed | lagged | gateway CPU | bench process CPU | machine busy |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        nodes = args.nodes,
        rates = args
            .rates
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        step_s = args.step_s,
        live = args.live_rate,
        cut = args.cut_s,
        fsync = args.gateway_fsync,
    );
    for step in steps {
        let l = &step.latency;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} % | {:.0} % | {:.0} % of {cores} cores |\n",
            step.rate,
            step.sent,
            l.matched,
            ms(l.p50_ms),
            ms(l.p99_ms),
            ms(l.max_ms),
            l.missed,
            l.lagged,
            step.cpu.gateway,
            step.cpu.bench,
            step.cpu.machine / cores as f64,
        ));
    }
    md.push_str(&format!(
        "\n## Store and forward under live load\n\n\
         | measure | value |\n|---|---|\n\
         | live load | {live} samples/s |\n\
         | uplink cut for | {cut} s |\n\
         | samples the gateway buffered meanwhile | {backlog} |\n\
         | from the link's return until the hub had everything sent before it | {drain:.2} s |\n\
         | samples applied per second meanwhile (replay and live) | {rate:.0} |\n\
         | **catch-up speed, applied ÷ live rate** | **{ratio:.1}×** |\n\
         | samples sent in the whole run / applied by the hub | {sent} / {applied} |\n\n\
         The drain time includes the gateway noticing the link is back and reconnecting \
         (its backoff), its new Sparkplug birth and the hub's rebirth handling. Buffered samples \
         reach the hub flagged historical; live ones queue behind them, in order.\n",
        live = catch_up.live_rate,
        cut = catch_up.cut.as_secs(),
        backlog = catch_up.backlog,
        drain = catch_up.drain.as_secs_f64(),
        rate = catch_up.apply_rate,
        ratio = catch_up.apply_rate / f64::from(catch_up.live_rate),
        sent = catch_up.sent,
        applied = catch_up.applied,
    ));
    let doc = json!({
        "nodes": args.nodes,
        "cores": cores,
        "gateway_fsync": args.gateway_fsync,
        "steps": steps.iter().map(|s| json!({
            "rate": s.rate, "sent": s.sent, "latency": s.latency.to_json(),
            "cpu_percent_of_a_core": {
                "gateway": s.cpu.gateway, "bench_process": s.cpu.bench, "machine": s.cpu.machine,
            },
        })).collect::<Vec<_>>(),
        "catch_up": {
            "live_rate": catch_up.live_rate,
            "cut_s": catch_up.cut.as_secs(),
            "backlog": catch_up.backlog,
            "drain_s": catch_up.drain.as_secs_f64(),
            "apply_rate": catch_up.apply_rate,
            "sent": catch_up.sent,
            "applied": catch_up.applied,
        },
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, md)?;
    std::fs::write(
        args.out.with_extension("json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    println!("results written to {}", args.out.display());
    Ok(())
}
