//! `compare` — the hub, Node-RED and a plain subscriber, each loaded in turn with the same paced
//! load on the same Mosquitto, in one run; written to `bench/results/compare.{json,md}`.
//!
//! For each consumer and repetition: idle cost with the births done, then paced steps at rising
//! rates until the consumer first falls behind (every message of a step applied within
//! `--sustain-s` after the load stops), CPU and memory of every process per step from `/proc`, and
//! the latency from publishing a sample to a WebSocket client seeing it at the `--measure-rates`.
//!
//! ```text
//! cargo build --release && cargo run --release -p demolab-bench --bin compare -- --reps 3
//! cargo run --release -p demolab-bench --bin compare -- --reps 1 --step-s 3   # smoke run
//! ```

mod hub_process;
use demolab_bench::latency;
mod load;
use demolab_bench::measure;
mod mosquitto;
mod node_red;
mod plain;
mod process;
mod report;
mod run;
mod twins;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Compare the Demolab hub with Node-RED and a plain MQTT subscriber on one Mosquitto broker:
/// highest sustained rate, CPU and memory per process, latency to a WebSocket client.
///
/// Needs `mosquitto` and `mosquitto_passwd` (apt-get install mosquitto), Node.js 20+ with npm
/// (Node-RED 4.1 is installed on first use into --node-red-dir), and the release `demolab-hub`
/// beside this binary (`cargo build --release`). Run from the workspace root.
#[derive(Debug, Clone, Parser)]
#[command(name = "compare", about, long_about)]
pub struct Args {
    /// Repetitions of the whole sequence; figures are min/median/max over them.
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Seconds of load per step.
    #[arg(long, default_value_t = 8.0)]
    pub step_s: f64,
    /// Rates to step through, msg/s in total, ascending; a consumer stops at its first failure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,20000,40000"
    )]
    pub rates: Vec<u32>,
    /// Rates at which CPU per message and latency are reported (run even after a failure).
    /// 5000 is there because Node-RED keeps up with it on 2 cores: at 10000 it falls behind, and
    /// its CPU per message handled then varies from run to run.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pub measure_rates: Vec<u32>,
    /// After the load stops, seconds within which every message must be applied.
    #[arg(long, default_value_t = 2.0)]
    pub sustain_s: f64,
    /// Seconds a consumer that fell behind may take to catch up before a further measuring step;
    /// if it does not, its remaining steps are skipped.
    #[arg(long, default_value_t = 30.0)]
    pub drain_s: f64,
    /// Seconds of idle measurement (births done, no data).
    #[arg(long, default_value_t = 5.0)]
    pub idle_s: f64,
    /// Edge nodes, each its own MQTT connection.
    #[arg(long, default_value_t = 4)]
    pub edges: u32,
    /// Machines per edge node.
    #[arg(long, default_value_t = 25)]
    pub machines: u32,
    /// Consumers to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "plain,hub,node-red")]
    pub peers: Vec<PeerKind>,
    /// Mosquitto's `max_inflight_messages` (unacknowledged QoS 1 messages per client), as
    /// `deploy/mosquitto/mosquitto.conf` sets it; 0 leaves Mosquitto's default of 20.
    #[arg(long, default_value_t = 1000)]
    pub mosquitto_max_inflight: u32,
    /// The hub's `commit_batch`, as `deploy/hub.toml` sets it beside that window (use 16 with
    /// Mosquitto's default window).
    #[arg(long, default_value_t = 256)]
    pub hub_commit_batch: u32,
    /// The hub binary [default: demolab-hub beside this executable].
    #[arg(long)]
    pub hub_bin: Option<PathBuf>,
    /// Where Node-RED is installed with npm (`npm install --prefix`).
    #[arg(long, default_value = "target/bench-node-red")]
    pub node_red_dir: PathBuf,
    /// The Node-RED flow to run.
    #[arg(long, default_value = "bench/node-red/flow.json")]
    pub flow: PathBuf,
    /// Keep the run's temp dir (configs and logs of Mosquitto, the hub and Node-RED) and print
    /// where it is.
    #[arg(long)]
    pub keep_tmp: bool,
    /// Where compare.json and compare.md (and twins.json, twins.md) are written.
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// Hub memory by twin count: for each count a fresh hub, every twin born, then samples at
    /// --twins-rate for --twins-s seconds, RSS read every --twins-every-s (twins.md). With
    /// --reps 0 only this runs.
    #[arg(long, value_delimiter = ',')]
    pub twins: Vec<u32>,
    /// Properties each twin is born with (of which 5 and node.seq are sampled).
    #[arg(long, default_value_t = 20)]
    pub twin_properties: u32,
    /// Messages per second in total while the hub's memory is watched.
    #[arg(long, default_value_t = 10_000)]
    pub twins_rate: u32,
    /// Seconds of data per twin count.
    #[arg(long, default_value_t = 600)]
    pub twins_s: u64,
    /// Seconds between two readings of the hub's memory.
    #[arg(long, default_value_t = 30)]
    pub twins_every_s: u64,
    /// The hub's `release_memory_every_ms` settings to run each twin count with, in turn (0:
    /// free memory stays with the C library); several measure the setting in one run.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub twins_release_ms: Vec<u64>,
}

/// A consumer of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerKind {
    /// In-process rumqttc subscriber that only counts: the ceiling.
    Plain,
    /// The `demolab-hub` process.
    Hub,
    /// Node-RED with bench/node-red/flow.json.
    NodeRed,
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Hub => "hub",
            Self::NodeRed => "node-red",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.reps >= 1 || !args.twins.is_empty(),
        "--reps must be at least 1 (0 only with --twins)"
    );
    anyhow::ensure!(
        args.twins.iter().all(|n| *n >= 1) && args.twins_every_s >= 1 && args.twins_rate >= 1,
        "--twins counts, --twins-rate and --twins-every-s must be at least 1"
    );
    anyhow::ensure!(args.step_s > 0.0, "--step-s must be positive");
    anyhow::ensure!(
        args.edges >= 1 && args.machines >= 1,
        "--edges and --machines must be at least 1"
    );
    anyhow::ensure!(
        args.rates.iter().chain(&args.measure_rates).all(|r| *r > 0),
        "rates must be positive"
    );
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // On Ctrl-C the run is dropped, and with it every child process's guard.
        tokio::select! {
            result = run::run(args) => result,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        }
    })
}
