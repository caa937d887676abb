//! Hub memory against the number of twins: a fresh hub per twin count, every twin born with
//! its properties, then samples at a steady rate for a while, the hub's RSS read every
//! `interval`. Written to `twins.json` and `twins.md` beside the comparison's results.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::hub_process::HubProcess;
use crate::latency::Recorder;
use crate::load::{Format, Generator, METRICS};
use crate::measure::memory_kib;
use crate::mosquitto::Mosquitto;

/// Machines behind one edge node: below the hub's default `max_devices_per_edge` (256).
const MACHINES_PER_EDGE: u32 = 250;

/// What one twin count did.
pub struct TwinsRun {
    pub twins: u32,
    /// The hub's `release_memory_every_ms`.
    pub release_ms: u64,
    /// (seconds since the data started, RSS KiB)
    pub rss: Vec<(f64, u64)>,
    pub peak_kib: u64,
    pub sent: u64,
    pub applied: u64,
    pub achieved_rate: f64,
    /// The most messages that waited for storage at once (`demolab_hub_uncommitted_peak`).
    pub uncommitted_peak: u64,
}

impl TwinsRun {
    fn to_json(&self) -> Value {
        json!({
            "twins": self.twins,
            "release_memory_every_ms": self.release_ms,
            "rss_kib": self.rss.iter().map(|(t, kib)| json!({"s": t, "kib": kib})).collect::<Vec<_>>(),
            "peak_kib": self.peak_kib,
            "sent": self.sent,
            "applied": self.applied,
            "achieved_rate": self.achieved_rate,
            "uncommitted_peak": self.uncommitted_peak,
        })
    }
}

pub struct Plan<'a> {
    pub counts: &'a [u32],
    pub properties: u32,
    pub rate: f64,
    pub duration: Duration,
    pub interval: Duration,
    pub commit_batch: u32,
    pub release_ms: &'a [u64],
}

/// Runs every twin count in turn on `broker`.
pub async fn run(
    plan: &Plan<'_>,
    broker: &Mosquitto,
    hub_bin: &Path,
    tmp: &Path,
) -> anyhow::Result<Vec<TwinsRun>> {
    let mut out = Vec::new();
    let runs = plan.counts.iter().flat_map(|twins| {
        plan.release_ms
            .iter()
            .map(move |release| (*twins, *release))
    });
    for (twins, release_ms) in runs {
        let dir = tmp.join(format!("twins-{twins}-release-{release_ms}"));
        std::fs::create_dir_all(&dir)?;
        let hub = HubProcess::start(
            hub_bin,
            &dir,
            broker.port,
            &broker.password,
            &format!(
                "commit_batch = {}\nrelease_memory_every_ms = {release_ms}\n",
                plan.commit_batch
            ),
            Arc::new(Recorder::default()),
        )
        .await?;
        let edges = twins.div_ceil(MACHINES_PER_EDGE);
        let machines = twins / edges;
        let mut load = Generator::connect(
            broker.port,
            &broker.password,
            edges,
            machines,
            Format::Sparkplug,
        )
        .await?;
        load.extra_properties = plan.properties.saturating_sub(METRICS.len() as u32 + 1);
        load.births().await?;
        println!(
            "   twins {twins}, release_memory_every_ms {release_ms}: {edges} edges × {machines} machines born with {} properties; {} msg/s for {} s",
            plan.properties,
            plan.rate,
            plan.duration.as_secs()
        );
        let started = Instant::now();
        let mut rss = Vec::new();
        let mut sent = 0;
        while started.elapsed() < plan.duration {
            let step = load.run_step(plan.rate, plan.interval, None).await?;
            sent += step.sent;
            let (now, _) = memory_kib(hub.pid())?;
            let at = started.elapsed().as_secs_f64();
            println!("     {at:6.0} s: hub RSS {now} KiB");
            rss.push((at, now));
        }
        let elapsed = started.elapsed().as_secs_f64();
        // Applied counts births' samples too (none here: births carry no DDATA).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut applied = hub.applied().await?;
        while applied < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            applied = hub.applied().await?;
        }
        let (_, peak_kib) = memory_kib(hub.pid()).context("the hub's memory")?;
        let uncommitted_peak = hub.metric("demolab_hub_uncommitted_peak").await?;
        load.disconnect();
        hub.stop(broker.port, &broker.password).await?;
        out.push(TwinsRun {
            twins,
            release_ms,
            rss,
            peak_kib,
            sent,
            applied,
            achieved_rate: sent as f64 / elapsed,
            uncommitted_peak,
        });
    }
    Ok(out)
}

/// Writes `twins.json` and `twins.md` into `dir`.
pub fn write(
    dir: &Path,
    plan: &Plan<'_>,
    runs: &[TwinsRun],
    command: &str,
    machine: &Value,
) -> anyhow::Result<()> {
    let doc = json!({
        "command": command,
        "machine": machine,
        "properties": plan.properties,
        "rate": plan.rate,
        "duration_s": plan.duration.as_secs(),
        "runs": runs.iter().map(TwinsRun::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("twins.json"), serde_json::to_string_pretty(&doc)?)?;
    let mut md = format!(
        "# Hub memory by number of twins\n\nWritten by:\n\n```sh\n{command}\n```\n\n\
         Each twin is born with {} properties, then samples of {} values arrive at {:.0} msg/s \
         in total for {} s (QoS 1 through Mosquitto; the hub with JSON topics, history and \
         alarms as deployed). RSS is read from `/proc/<pid>/status` every {} s. \
         \"Most waiting\" is the most messages the hub held at once, accepted and not yet \
         committed (`demolab_hub_uncommitted_peak`): Mosquitto's `max_inflight_messages` should \
         keep it at 1000 or below. \"Release\" is the hub's `release_memory_every_ms` (0: \
         memory the hub freed stays with the C library).\n\n\
         | twins | release, ms | RSS after the first interval, MiB | RSS at the end, MiB | growth, end / first | peak, MiB | samples sent | applied | rate achieved, msg/s | most waiting for storage |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        plan.properties,
        METRICS.len() + 1,
        plan.rate,
        plan.duration.as_secs(),
        plan.interval.as_secs(),
    );
    for run in runs {
        let first = run.rss.first().map_or(0, |(_, kib)| *kib);
        let last = run.rss.last().map_or(0, |(_, kib)| *kib);
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {} | {} | {:.0} | {} |\n",
            run.twins,
            run.release_ms,
            first as f64 / 1024.0,
            last as f64 / 1024.0,
            last as f64 / first.max(1) as f64,
            run.peak_kib as f64 / 1024.0,
            run.sent,
            run.applied,
            run.achieved_rate,
            run.uncommitted_peak,
        ));
    }
    md.push_str("\nRSS over time, MiB:\n\n| twins | release, ms | ");
    md.push_str(
        &runs
            .first()
            .map(|r| {
                r.rss
                    .iter()
                    .map(|(t, _)| format!("{t:.0} s"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .unwrap_or_default(),
    );
    md.push_str(" |\n|---|---|");
    md.push_str(&"---|".repeat(runs.first().map_or(0, |r| r.rss.len())));
    md.push('\n');
    for run in runs {
        md.push_str(&format!("| {} | {} | ", run.twins, run.release_ms));
        md.push_str(
            &run.rss
                .iter()
                .map(|(_, kib)| format!("{:.0}", *kib as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" | "),
        );
        md.push_str(" |\n");
    }
    std::fs::write(dir.join("twins.md"), md)?;
    Ok(())
}
