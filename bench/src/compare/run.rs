//! The sequence of one run: one Mosquitto; for each repetition and consumer, start the consumer,
//! connect the load, births, idle, then the rate steps.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::hub_process::{self, HubProcess};
use crate::latency::{Latency, Recorder};
use crate::load::{Format, Generator, StepLoad};
use crate::measure::{MachineUsage, Usage, Watched, Window, clock_ticks};
use crate::mosquitto::Mosquitto;
use crate::node_red::{self, NodeRed};
use crate::plain::Plain;
use crate::{Args, PeerKind};

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every message applied within the grace time, at the requested rate.
    Sustained,
    /// Not every message applied within the grace time after the load stopped.
    Behind,
    /// The load generator (with the broker) did not reach 95 % of the requested rate: not the
    /// consumer's failure, but no evidence it could take the rate either.
    LoadShort,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sustained => "sustained",
            Self::Behind => "behind",
            Self::LoadShort => "load_short",
        }
    }
}

/// One rate step of one consumer.
#[derive(Debug, Clone)]
pub struct Step {
    pub rate: u32,
    pub load: StepLoad,
    pub applied: u64,
    /// Seconds from the load stopping until the last message was applied (None: not within the
    /// wait).
    pub caught_up_s: Option<f64>,
    pub outcome: Outcome,
    /// Part of the rising ladder (false: a measuring step run after the first failure).
    pub on_ladder: bool,
    pub usage: Vec<Usage>,
    pub machine: Option<MachineUsage>,
    pub latency: Option<Latency>,
}

/// One consumer in one repetition.
#[derive(Debug, Clone)]
pub struct PeerRun {
    pub peer: PeerKind,
    pub rep: u32,
    pub idle: Vec<Usage>,
    pub idle_machine: Option<MachineUsage>,
    pub steps: Vec<Step>,
    /// Highest rate sustained before the first failure; None if the first step failed.
    pub max_sustained: Option<u32>,
    /// Highest achieved load rate (on the ladder) whose messages were all applied in time,
    /// whether or not the load reached the requested rate.
    pub max_kept_up: Option<f64>,
    /// The consumer process's RSS and peak RSS (KiB) after its last step.
    pub rss_after_kib: Option<(u64, u64)>,
    pub load_errors: u64,
    pub error: Option<String>,
}

/// Everything a report needs.
#[derive(Debug)]
pub struct Results {
    pub args: Args,
    pub command: String,
    pub machine: Value,
    pub mosquitto_version: String,
    pub mosquitto_config: String,
    pub node_red_version: Option<(String, String)>,
    pub runs: Vec<PeerRun>,
    pub wall_s: f64,
}

struct Ctx<'a> {
    args: &'a Args,
    broker: &'a Mosquitto,
    tmp: &'a Path,
    hub_bin: Option<PathBuf>,
    red_js: Option<PathBuf>,
    tck: u64,
}

enum Peer {
    Plain(Plain),
    Hub(HubProcess),
    NodeRed(NodeRed),
}

impl Peer {
    async fn applied(&mut self) -> anyhow::Result<u64> {
        match self {
            Self::Plain(p) => Ok(p.applied()),
            Self::Hub(h) => h.applied().await,
            Self::NodeRed(n) => n.applied(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Self::Plain(_) => None,
            Self::Hub(h) => Some(h.pid()),
            Self::NodeRed(n) => Some(n.pid()),
        }
    }
}

pub const SELF_NAME: &str = "bench process (load, clients)";

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let command = reproduce_command();
    let hub_bin = if args.peers.contains(&PeerKind::Hub) || !args.twins.is_empty() {
        Some(hub_process::locate(args.hub_bin.as_deref())?)
    } else {
        None
    };
    let red_js = if args.peers.contains(&PeerKind::NodeRed) && args.reps > 0 {
        if !args.flow.is_file() {
            anyhow::bail!(
                "the flow {} is missing: run from the workspace root or pass --flow",
                args.flow.display()
            );
        }
        Some(node_red::ensure_installed(&args.node_red_dir)?)
    } else {
        None
    };
    let node_red_version = red_js.as_deref().map(node_red::versions);
    let tmp = tempfile::Builder::new()
        .prefix("demolab-compare-")
        .tempdir()
        .context("creating a temp dir")?;
    let broker_dir = tmp.path().join("mosquitto");
    std::fs::create_dir_all(&broker_dir)?;
    let broker = Mosquitto::start(&broker_dir, args.mosquitto_max_inflight)?;
    println!(
        "compare: {} on 127.0.0.1:{}; {} edges × {} machines; steps of {} s at {:?} msg/s; {} reps",
        broker.version, broker.port, args.edges, args.machines, args.step_s, args.rates, args.reps
    );
    let ctx = Ctx {
        args: &args,
        broker: &broker,
        tmp: tmp.path(),
        hub_bin,
        red_js,
        tck: clock_ticks(),
    };
    let mut runs = Vec::new();
    for rep in 1..=args.reps {
        for &peer in &args.peers {
            println!("== rep {rep}/{}: {}", args.reps, peer.name());
            let mut run = PeerRun {
                peer,
                rep,
                idle: Vec::new(),
                idle_machine: None,
                steps: Vec::new(),
                max_sustained: None,
                max_kept_up: None,
                rss_after_kib: None,
                load_errors: 0,
                error: None,
            };
            if let Err(err) = run_peer(&ctx, &mut run).await {
                println!("   {} failed: {err:#}", peer.name());
                run.error = Some(format!("{err:#}"));
            }
            runs.push(run);
        }
    }
    if !args.twins.is_empty() {
        println!("== hub memory by twin count");
        let plan = crate::twins::Plan {
            counts: &args.twins,
            properties: args.twin_properties,
            rate: f64::from(args.twins_rate),
            duration: std::time::Duration::from_secs(args.twins_s),
            interval: std::time::Duration::from_secs(args.twins_every_s),
            commit_batch: args.hub_commit_batch,
            release_ms: &args.twins_release_ms,
        };
        let bin = ctx.hub_bin.as_deref().context("no hub binary")?;
        let twins = crate::twins::run(&plan, &broker, bin, tmp.path()).await?;
        std::fs::create_dir_all(&args.out_dir)?;
        crate::twins::write(
            &args.out_dir,
            &plan,
            &twins,
            &command,
            &crate::report::machine(),
        )?;
        println!(
            "hub memory results written to {}",
            args.out_dir.join("twins.md").display()
        );
    }
    if args.reps == 0 {
        return Ok(());
    }
    let results = Results {
        command,
        machine: crate::report::machine(),
        mosquitto_version: broker.version.clone(),
        mosquitto_config: broker.config_text.clone(),
        node_red_version,
        runs,
        wall_s: started.elapsed().as_secs_f64(),
        args,
    };
    drop(broker);
    if results.args.keep_tmp {
        println!("temp dir kept: {}", tmp.keep().display());
    }
    crate::report::write(&results)?;
    Ok(())
}

/// The command that reproduces this run, as the report shows it.
fn reproduce_command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command =
        "cargo build --release && cargo run --release -p demolab-bench --bin compare".to_owned();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    command
}

async fn run_peer(ctx: &Ctx<'_>, run: &mut PeerRun) -> anyhow::Result<()> {
    let args = ctx.args;
    let broker = ctx.broker;
    let dir = ctx.tmp.join(format!("{}-{}", run.peer.name(), run.rep));
    std::fs::create_dir_all(&dir)?;
    let recorder = Arc::new(Recorder::default());
    let format = match run.peer {
        PeerKind::NodeRed => Format::Json,
        _ => Format::Sparkplug,
    };
    let connect = || {
        Generator::connect(
            broker.port,
            &broker.password,
            args.edges,
            args.machines,
            format,
        )
    };
    let (mut peer, mut load) = match run.peer {
        PeerKind::Plain => {
            let plain = Plain::start(broker.port, &broker.password, recorder.clone()).await?;
            (Peer::Plain(plain), connect().await?)
        }
        PeerKind::Hub => {
            let bin = ctx.hub_bin.as_deref().context("no hub binary")?;
            let hub = HubProcess::start(
                bin,
                &dir,
                broker.port,
                &broker.password,
                &format!("commit_batch = {}\n", args.hub_commit_batch),
                recorder.clone(),
            )
            .await?;
            (Peer::Hub(hub), connect().await?)
        }
        PeerKind::NodeRed => {
            let red = ctx.red_js.as_deref().context("no Node-RED")?;
            let mut load = connect().await?;
            let nr = NodeRed::start(
                red,
                &args.flow,
                &dir,
                broker.port,
                &broker.password,
                &mut load,
                recorder.clone(),
            )
            .await?;
            (Peer::NodeRed(nr), load)
        }
    };
    let result = steps(ctx, run, &mut peer, &mut load, &recorder).await;
    run.load_errors = load.errors.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(pid) = peer.pid() {
        run.rss_after_kib = crate::measure::memory_kib(pid).ok();
    }
    load.disconnect();
    if let Peer::Hub(hub) = peer {
        hub.stop(broker.port, &broker.password).await?;
    }
    result
}

async fn steps(
    ctx: &Ctx<'_>,
    run: &mut PeerRun,
    peer: &mut Peer,
    load: &mut Generator,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<()> {
    let args = ctx.args;
    let name = run.peer.name();
    let mut watched = vec![Watched {
        name: "mosquitto",
        pid: ctx.broker.pid(),
    }];
    if let Some(pid) = peer.pid() {
        watched.insert(0, Watched { name, pid });
    }
    watched.push(Watched {
        name: SELF_NAME,
        pid: std::process::id(),
    });

    load.births().await?;
    // Idle: nothing is sent; the sleep is the measurement, not a synchronisation.
    let window = Window::start(&watched);
    tokio::time::sleep(Duration::from_secs_f64(args.idle_s)).await;
    (run.idle, run.idle_machine) = window.finish(ctx.tck);
    let mut line = format!("   idle {:.1} s:", args.idle_s);
    for u in run.idle.iter().filter(|u| u.name != SELF_NAME) {
        line.push_str(&format!(
            " {} {:.1} % of a core, RSS {} KiB;",
            u.name, u.cpu_pct, u.rss_kib
        ));
    }
    println!("{}", line.trim_end_matches(';'));

    let ladder: BTreeSet<u32> = args
        .rates
        .iter()
        .chain(&args.measure_rates)
        .copied()
        .collect();
    let measuring: BTreeSet<u32> = args.measure_rates.iter().copied().collect();
    let sustain = Duration::from_secs_f64(args.sustain_s);
    let drain = Duration::from_secs_f64(args.drain_s.max(args.sustain_s));
    let mut failed = false;
    for &rate in &ladder {
        let measure = measuring.contains(&rate);
        if failed && !measure {
            continue;
        }
        // Whether a later measuring step needs this consumer to have caught up first.
        let needed = measuring.range(rate + 1..).next().is_some();
        let base = peer.applied().await?;
        if measure {
            recorder.begin();
        }
        let window = Window::start(&watched);
        let step_load = load
            .run_step(
                f64::from(rate),
                Duration::from_secs_f64(args.step_s),
                measure.then(|| recorder.clone()),
            )
            .await?;
        let sent = step_load.sent;
        let mut applied;
        let caught_up_s = loop {
            applied = peer.applied().await?.saturating_sub(base);
            let now = Instant::now();
            if applied >= sent {
                break Some(
                    now.saturating_duration_since(step_load.stopped)
                        .as_secs_f64(),
                );
            }
            let waited = now.saturating_duration_since(step_load.stopped);
            // Past the grace time the step has failed; wait on only if a later measuring step
            // needs the consumer to have caught up.
            if waited > sustain && (!needed || waited > drain) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (mut usage, machine) = window.finish(ctx.tck);
        for u in &mut usage {
            u.per_message(if u.name == name { applied } else { sent });
        }
        let latency = if measure {
            // The stream may trail the applied counter a little.
            let until = Instant::now() + Duration::from_secs(2);
            while recorder.outstanding() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(recorder.end())
        } else {
            None
        };
        let outcome = if step_load.achieved_rate() < 0.95 * f64::from(rate) {
            Outcome::LoadShort
        } else if caught_up_s.is_some_and(|s| s <= args.sustain_s) {
            Outcome::Sustained
        } else {
            Outcome::Behind
        };
        let on_ladder = !failed;
        if on_ladder && outcome == Outcome::Sustained {
            run.max_sustained = Some(rate);
        }
        if on_ladder && caught_up_s.is_some_and(|s| s <= args.sustain_s) {
            let achieved = step_load.achieved_rate();
            run.max_kept_up = Some(run.max_kept_up.map_or(achieved, |m: f64| m.max(achieved)));
        }
        print_step(
            name,
            rate,
            &step_load,
            applied,
            caught_up_s,
            outcome,
            &usage,
            machine,
            latency.as_ref(),
        );
        run.steps.push(Step {
            rate,
            load: step_load,
            applied,
            caught_up_s,
            outcome,
            on_ladder,
            usage,
            machine,
            latency,
        });
        if outcome != Outcome::Sustained {
            failed = true;
        }
        if caught_up_s.is_none() && needed {
            println!(
                "   {name} did not catch up within {:.0} s; its remaining steps are skipped",
                args.drain_s
            );
            break;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_step(
    name: &str,
    rate: u32,
    load: &StepLoad,
    applied: u64,
    caught_up_s: Option<f64>,
    outcome: Outcome,
    usage: &[Usage],
    machine: Option<MachineUsage>,
    latency: Option<&Latency>,
) {
    let took = caught_up_s.map_or_else(
        || "not within the wait".to_owned(),
        |s| format!("in {:.1} s", load.acked_s + s),
    );
    let mut line = format!(
        "   step {rate} msg/s: {name} applied {applied}/{} {took} (load {:.0} msg/s) — {}",
        load.sent,
        load.achieved_rate(),
        outcome.name()
    );
    for u in usage {
        let name = if u.name == SELF_NAME { "bench" } else { u.name };
        line.push_str(&format!("; {name} {:.0} %", u.cpu_pct));
    }
    if let Some(m) = machine {
        line.push_str(&format!("; others {:.0} %", m.others_pct));
    }
    if let Some(l) = latency {
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        line.push_str(&format!(
            "; latency p50 {} p99 {} max {} ms, missed {}",
            ms(l.p50_ms),
            ms(l.p99_ms),
            ms(l.max_ms),
            l.missed
        ));
    }
    println!("{line}");
}

impl Step {
    pub fn to_json(&self) -> Value {
        json!({
            "rate": self.rate,
            "load": self.load.to_json(),
            "applied": self.applied,
            "caught_up_after_load_s": self.caught_up_s,
            "outcome": self.outcome.name(),
            "on_ladder": self.on_ladder,
            "processes": self.usage.iter().map(Usage::to_json).collect::<Vec<_>>(),
            "machine": self.machine.map(MachineUsage::to_json),
            "latency": self.latency.as_ref().map(Latency::to_json),
        })
    }
}

impl PeerRun {
    pub fn to_json(&self) -> Value {
        json!({
            "consumer": self.peer.name(),
            "rep": self.rep,
            "max_sustained_msg_per_s": self.max_sustained,
            "max_achieved_rate_kept_up_msg_per_s": self.max_kept_up,
            "idle": self.idle.iter().map(Usage::to_json).collect::<Vec<_>>(),
            "idle_machine": self.idle_machine.map(MachineUsage::to_json),
            "steps": self.steps.iter().map(Step::to_json).collect::<Vec<_>>(),
            "rss_after_kib": self.rss_after_kib.map(|(r, _)| r),
            "hwm_after_kib": self.rss_after_kib.map(|(_, h)| h),
            "load_connection_errors": self.load_errors,
            "error": self.error,
        })
    }
}
