//! `compare.json` (every repetition's raw figures and the min/median/max of each) and
//! `compare.md` (the summary tables, with the command that reproduces them).

use std::fmt::Write as _;
use std::process::Command;

use anyhow::Context;
use serde_json::{Value, json};

use crate::PeerKind;
use crate::run::{Outcome, PeerRun, Results, SELF_NAME, Step};

/// Cores, CPU model, kernel, commit and date of the run.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?".to_owned(), |(_, m)| m.trim().to_owned());
    let processors = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let out = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let dirty = out("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "processors_in_cpuinfo": processors,
        "cpu_model": model,
        "kernel": out("uname", &["-r"]),
        "git": out("git", &["rev-parse", "--short", "HEAD"]),
        "git_dirty": dirty,
        "date": out("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    })
}

/// min, median, max.
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((v[0], median, v[n - 1]))
}

fn stat(values: &[f64]) -> Value {
    match spread(values) {
        Some((min, median, max)) => {
            json!({"values": values, "min": min, "median": median, "max": max})
        }
        None => json!({"values": values}),
    }
}

/// `min / median / max`, or one number when they agree, or `–`.
fn cell(values: &[f64], decimals: usize) -> String {
    match spread(values) {
        None => "–".into(),
        Some((a, b, c)) => {
            let f = |x: f64| format!("{x:.decimals$}");
            if f(a) == f(c) {
                f(b)
            } else {
                format!("{} / {} / {}", f(a), f(b), f(c))
            }
        }
    }
}

fn runs_of(results: &Results, peer: PeerKind) -> Vec<&PeerRun> {
    results.runs.iter().filter(|r| r.peer == peer).collect()
}

fn step_at(run: &PeerRun, rate: u32) -> Option<&Step> {
    run.steps.iter().find(|s| s.rate == rate)
}

fn max_kept_up(results: &Results, peer: PeerKind) -> Vec<f64> {
    runs_of(results, peer)
        .iter()
        .map(|r| r.max_kept_up.unwrap_or(0.0))
        .collect()
}

fn max_sustained(results: &Results, peer: PeerKind) -> Vec<f64> {
    runs_of(results, peer)
        .iter()
        .map(|r| f64::from(r.max_sustained.unwrap_or(0)))
        .collect()
}

/// Per repetition, the peer's highest sustained rate over the plain subscriber's.
fn ratios(results: &Results, peer: PeerKind) -> Vec<f64> {
    runs_of(results, peer)
        .iter()
        .filter_map(|r| {
            let plain = results
                .runs
                .iter()
                .find(|p| p.peer == PeerKind::Plain && p.rep == r.rep)?
                .max_sustained?;
            Some(f64::from(r.max_sustained.unwrap_or(0)) / f64::from(plain))
        })
        .collect()
}

/// The phases of the CPU table: idle, then each measuring rate.
fn phases(results: &Results) -> Vec<Option<u32>> {
    let mut rates = results.args.measure_rates.clone();
    rates.sort_unstable();
    rates.dedup();
    std::iter::once(None)
        .chain(rates.into_iter().map(Some))
        .collect()
}

/// A figure of `process` during `phase` (None = idle) over the runs of `peer`.
fn usage_values(
    results: &Results,
    peer: PeerKind,
    process: &str,
    phase: Option<u32>,
    figure: impl Fn(&crate::measure::Usage) -> Option<f64>,
) -> Vec<f64> {
    runs_of(results, peer)
        .iter()
        .filter_map(|r| {
            let usage = match phase {
                None => &r.idle,
                Some(rate) => &step_at(r, rate)?.usage,
            };
            usage.iter().find(|u| u.name == process).and_then(&figure)
        })
        .collect()
}

fn latency_values(
    results: &Results,
    peer: PeerKind,
    rate: u32,
    figure: impl Fn(&crate::latency::Latency) -> Option<f64>,
) -> Vec<f64> {
    runs_of(results, peer)
        .iter()
        .filter_map(|r| step_at(r, rate)?.latency.as_ref().and_then(&figure))
        .collect()
}

fn processes(peer: PeerKind) -> Vec<&'static str> {
    match peer {
        PeerKind::Plain => vec!["mosquitto", SELF_NAME],
        PeerKind::Hub => vec!["hub", "mosquitto"],
        PeerKind::NodeRed => vec!["node-red", "mosquitto"],
    }
}

fn summary(results: &Results) -> Value {
    let peers = &results.args.peers;
    let mut out = serde_json::Map::new();
    for &peer in peers {
        let mut p = serde_json::Map::new();
        p.insert(
            "max_sustained_msg_per_s".into(),
            stat(&max_sustained(results, peer)),
        );
        p.insert(
            "max_achieved_rate_kept_up_msg_per_s".into(),
            stat(&max_kept_up(results, peer)),
        );
        if peer != PeerKind::Plain {
            p.insert("ratio_to_plain".into(), stat(&ratios(results, peer)));
        }
        let mut procs = serde_json::Map::new();
        for process in processes(peer) {
            let mut phases_json = serde_json::Map::new();
            for phase in phases(results) {
                let key = phase.map_or("idle".to_owned(), |r| format!("{r}_msg_per_s"));
                phases_json.insert(
                    key,
                    json!({
                        "cpu_pct_of_one_core": stat(&usage_values(results, peer, process, phase, |u| Some(u.cpu_pct))),
                        "cpu_us_per_msg": stat(&usage_values(results, peer, process, phase, |u| u.cpu_us_per_msg)),
                        "rss_kib": stat(&usage_values(results, peer, process, phase, |u| Some(u.rss_kib as f64))),
                        "hwm_kib": stat(&usage_values(results, peer, process, phase, |u| Some(u.hwm_kib as f64))),
                    }),
                );
            }
            procs.insert(process.into(), phases_json.into());
        }
        p.insert("processes".into(), procs.into());
        let rss_after: Vec<f64> = runs_of(results, peer)
            .iter()
            .filter_map(|r| r.rss_after_kib.map(|(rss, _)| rss as f64))
            .collect();
        p.insert("rss_after_run_kib".into(), stat(&rss_after));
        let mut lat = serde_json::Map::new();
        for phase in phases(results).into_iter().flatten() {
            let sum = |f: fn(&crate::latency::Latency) -> u64| -> u64 {
                runs_of(results, peer)
                    .iter()
                    .filter_map(|r| step_at(r, phase)?.latency.as_ref().map(f))
                    .sum()
            };
            lat.insert(
                format!("{phase}_msg_per_s"),
                json!({
                    "p50_ms": stat(&latency_values(results, peer, phase, |l| l.p50_ms)),
                    "p99_ms": stat(&latency_values(results, peer, phase, |l| l.p99_ms)),
                    "max_ms": stat(&latency_values(results, peer, phase, |l| l.max_ms)),
                    "matched_total": sum(|l| l.matched),
                    "missed_total": sum(|l| l.missed),
                    "unmatched_total": sum(|l| l.unmatched),
                    "lagged_total": sum(|l| l.lagged),
                }),
            );
        }
        p.insert("latency".into(), lat.into());
        out.insert(peer.name().into(), p.into());
    }
    let mut load = serde_json::Map::new();
    for (rate, achieved) in achieved_by_rate(results) {
        load.insert(format!("{rate}_msg_per_s"), stat(&achieved));
    }
    out.insert("load_achieved_msg_per_s".into(), load.into());
    out.into()
}

fn achieved_by_rate(results: &Results) -> Vec<(u32, Vec<f64>)> {
    let mut rates: Vec<u32> = results
        .runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.rate))
        .collect();
    rates.sort_unstable();
    rates.dedup();
    rates
        .into_iter()
        .map(|rate| {
            let v = results
                .runs
                .iter()
                .filter_map(|r| step_at(r, rate).map(|s| s.load.achieved_rate()))
                .collect();
            (rate, v)
        })
        .collect()
}

pub fn write(results: &Results) -> anyhow::Result<()> {
    let args = &results.args;
    let doc = json!({
        "command": results.command,
        "machine": results.machine,
        "wall_s": results.wall_s,
        "setup": {
            "reps": args.reps,
            "step_s": args.step_s,
            "rates": args.rates,
            "measure_rates": args.measure_rates,
            "sustain_s": args.sustain_s,
            "drain_s": args.drain_s,
            "idle_s": args.idle_s,
            "edges": args.edges,
            "machines_per_edge": args.machines,
            "consumers": args.peers.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "mosquitto": results.mosquitto_version,
            "mosquitto_conf": results.mosquitto_config,
            "mosquitto_max_inflight_messages": args.mosquitto_max_inflight,
            "hub_commit_batch": args.hub_commit_batch,
            "node_red": results.node_red_version.as_ref().map(|(v, _)| v),
            "node": results.node_red_version.as_ref().map(|(_, n)| n),
            "payload_bytes": {"sparkplug_ddata": crate::load::payload_sizes().0, "json": crate::load::payload_sizes().1},
        },
        "summary": summary(results),
        "runs": results.runs.iter().map(PeerRun::to_json).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let json_path = args.out_dir.join("compare.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")?;
    let md_path = args.out_dir.join("compare.md");
    std::fs::write(&md_path, markdown(results))?;
    println!(
        "results written to {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}

fn markdown(results: &Results) -> String {
    let args = &results.args;
    let m = &results.machine;
    let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Hub, Node-RED and a plain subscriber on one Mosquitto\n\n\
         Written by:\n\n```sh\n{}\n```\n\n\
         {} cores ({}), kernel {}, commit {}{}, {}; {} repetitions, {:.0} s in all.\n\
         Cells are **min / median / max** over the repetitions (one number when they agree).\n\
         Raw figures of every repetition and step: `compare.json`.\n",
        results.command,
        m["cores"],
        s(&m["cpu_model"]),
        s(&m["kernel"]),
        s(&m["git"]),
        if m["git_dirty"] == true {
            " (with uncommitted changes)"
        } else {
            ""
        },
        s(&m["date"]),
        args.reps,
        results.wall_s,
    );
    let (nr, node) = results
        .node_red_version
        .clone()
        .unwrap_or_else(|| ("–".into(), "–".into()));
    let _ = writeln!(
        md,
        "## Setup\n\n\
         - **Broker**: {mq}, one instance for the whole run on 127.0.0.1, password file, \
         `max_queued_messages 1000000` (a lagging subscriber queues instead of losing QoS 1 \
         messages), `set_tcp_nodelay true`; {inflight}.\n\
         - **Load**: {edges} edge nodes × {machines} machines, one MQTT connection per edge node, QoS 1, \
         paced at the step's total rate for {step} s per step. The hub and the plain subscriber get \
         Sparkplug B (NBIRTH, DBIRTHs, then DDATA with `node.seq` and 5 doubles, {spb} bytes, \
         metric names, no aliases); Node-RED gets the same values as {js}-byte JSON on \
         `bench/{{lab}}/{{machine}}`, because it has no built-in Sparkplug decoder — the easier \
         format.\n\
         - **Consumers**, loaded one at a time: *plain* = in-process rumqttc subscriber that counts \
         (the ceiling); *hub* = the `demolab-hub` process with an external broker, its defaults \
         (JSON topics on, 50 ms group commit, history in redb, acknowledging after commit), applied = \
         `demolab_hub_samples_applied_total`; *node-red* = Node-RED {nr} on Node {node} running \
         `bench/node-red/flow.json` (mqtt in → json → last value per machine in flow context → \
         append a line to history.jsonl; and a websocket echo), applied = lines in history.jsonl.\n\
         - **Sustained**: every message of a step applied within {sus} s after the broker \
         acknowledged the step's last message, and the load reached ≥ 95 % of the rate. Stepping \
         stops at a consumer's first failure, except that the measuring rates ({mr:?} msg/s) are \
         always run for the CPU and latency figures.\n\
         - **CPU** from `/proc/<pid>/stat` (utime + stime) over the step until the consumer caught \
         up, as % of one core, and per message the process handled; memory from `/proc/<pid>/status`.\n\
         - **Latency**: publish (handing the DDATA to the MQTT client) → the sample seen by a \
         WebSocket client in this process (hub: `/api/v1/stream?lab=…` after login; Node-RED: its \
         `/ws/echo`), matched by machine and `node.seq`; plain: → the subscriber itself. One clock.\n",
        mq = results.mosquitto_version,
        edges = args.edges,
        machines = args.machines,
        step = args.step_s,
        sus = args.sustain_s,
        mr = args.measure_rates,
        inflight = match args.mosquitto_max_inflight {
            0 => "`max_inflight_messages` left at its default (20 unacknowledged QoS 1 messages \
                  per client)"
                .to_owned(),
            n => format!(
                "`max_inflight_messages {n}` as `deploy/mosquitto/mosquitto.conf` sets it \
                 (Mosquitto's default is 20); the hub with `commit_batch = {}` as `deploy/hub.toml`",
                args.hub_commit_batch
            ),
        },
        spb = crate::load::payload_sizes().0,
        js = crate::load::payload_sizes().1,
    );

    let _ = writeln!(
        md,
        "## Highest sustained rate\n\n| consumer | max sustained msg/s | ratio to plain | highest achieved load fully applied in time, msg/s | steps (S sustained, B behind, L load short; per rep) |\n|---|---|---|---|---|"
    );
    for &peer in &args.peers {
        let ratio = if peer == PeerKind::Plain {
            "1".into()
        } else {
            cell(&ratios(results, peer), 2)
        };
        let mut steps = String::new();
        for run in runs_of(results, peer) {
            if !steps.is_empty() {
                steps.push_str("; ");
            }
            let trail: Vec<String> = run
                .steps
                .iter()
                .map(|st| {
                    let o = match st.outcome {
                        Outcome::Sustained => "S",
                        Outcome::Behind => "B",
                        Outcome::LoadShort => "L",
                    };
                    format!("{}k {o}", f64::from(st.rate) / 1000.0)
                })
                .collect();
            steps.push_str(&trail.join(" "));
            if let Some(err) = &run.error {
                steps.push_str(&format!(" (error: {})", err.replace('|', "/")));
            }
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            peer.name(),
            cell(&max_sustained(results, peer), 0),
            ratio,
            cell(&max_kept_up(results, peer), 0),
            steps
        );
    }

    let _ = writeln!(
        md,
        "\nA step marked L means the load generator with the broker did not reach 95 % of the rate \
         on this machine (the consumer may or may not have kept up: see the column before). When \
         the plain subscriber's top step is L, its maximum is the load's, not its own, and a ratio \
         to it is an upper bound."
    );
    let _ = writeln!(md, "\n## CPU and memory per process\n");
    let mut header = "| consumer run | process | idle: % core |".to_owned();
    let mut rule = "|---|---|---|".to_owned();
    for rate in phases(results).into_iter().flatten() {
        let _ = write!(header, " {rate} msg/s: % core | {rate}: CPU µs/msg |");
        rule.push_str("---|---|");
    }
    header.push_str(" RSS at the last measuring rate, KiB | peak RSS, KiB |");
    rule.push_str("---|---|");
    let _ = writeln!(md, "{header}\n{rule}");
    let last_phase = phases(results).into_iter().flatten().last();
    for &peer in &args.peers {
        for process in processes(peer) {
            let mut row = format!(
                "| {} | {process} | {} |",
                peer.name(),
                cell(
                    &usage_values(results, peer, process, None, |u| Some(u.cpu_pct)),
                    1
                )
            );
            for rate in phases(results).into_iter().flatten() {
                let _ = write!(
                    row,
                    " {} | {} |",
                    cell(
                        &usage_values(results, peer, process, Some(rate), |u| Some(u.cpu_pct)),
                        1
                    ),
                    cell(
                        &usage_values(results, peer, process, Some(rate), |u| u.cpu_us_per_msg),
                        1
                    ),
                );
            }
            let rss = usage_values(results, peer, process, last_phase, |u| {
                Some(u.rss_kib as f64)
            });
            let hwm = usage_values(results, peer, process, last_phase, |u| {
                Some(u.hwm_kib as f64)
            });
            let _ = writeln!(row, " {} | {} |", cell(&rss, 0), cell(&hwm, 0));
            md.push_str(&row);
        }
    }
    for &peer in &args.peers {
        if peer == PeerKind::Plain {
            continue;
        }
        let after: Vec<f64> = runs_of(results, peer)
            .iter()
            .filter_map(|r| r.rss_after_kib.map(|(rss, _)| rss as f64))
            .collect();
        let _ = writeln!(
            md,
            "\n{} RSS after its last step: {} KiB.",
            peer.name(),
            cell(&after, 0)
        );
    }
    let _ = writeln!(
        md,
        "\nThe plain subscriber, the load generator and the WebSocket clients share the bench \
         process, so the plain subscriber's own cost is inside that row."
    );

    let _ = writeln!(
        md,
        "\n## Latency to a WebSocket client\n\n| consumer | rate msg/s | p50 ms | p99 ms | max ms | matched | missed | unmatched | lagged |\n|---|---|---|---|---|---|---|---|---|"
    );
    for &peer in &args.peers {
        for rate in phases(results).into_iter().flatten() {
            let sum = |f: fn(&crate::latency::Latency) -> u64| -> u64 {
                runs_of(results, peer)
                    .iter()
                    .filter_map(|r| step_at(r, rate)?.latency.as_ref().map(f))
                    .sum()
            };
            let _ = writeln!(
                md,
                "| {} | {rate} | {} | {} | {} | {} | {} | {} | {} |",
                if peer == PeerKind::Plain {
                    "plain (subscriber itself)"
                } else {
                    peer.name()
                },
                cell(&latency_values(results, peer, rate, |l| l.p50_ms), 2),
                cell(&latency_values(results, peer, rate, |l| l.p99_ms), 2),
                cell(&latency_values(results, peer, rate, |l| l.max_ms), 1),
                sum(|l| l.matched),
                sum(|l| l.missed),
                sum(|l| l.unmatched),
                sum(|l| l.lagged),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nmatched/missed/unmatched/lagged are totals over the repetitions. missed = sent during the \
         step and never seen by the client (lagged included); lagged = reported by the hub's stream \
         as skipped for a slow client; unmatched = seen but not sent during that step."
    );

    let _ = writeln!(
        md,
        "\n## Was the machine shared?\n\nCPU of programs other than Mosquitto, the consumer and this \
         bench (e.g. another build on the machine), % of one core, during idle and each step.\n\n\
         | consumer | idle | {} |\n|---|---|{}",
        achieved_by_rate(results)
            .iter()
            .map(|(r, _)| format!("{r} msg/s"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(achieved_by_rate(results).len())
    );
    for &peer in &args.peers {
        let runs = runs_of(results, peer);
        let idle: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.idle_machine.map(|m| m.others_pct))
            .collect();
        let mut row = format!("| {} | {} |", peer.name(), cell(&idle, 0));
        for (rate, _) in achieved_by_rate(results) {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| step_at(r, rate)?.machine.map(|m| m.others_pct))
                .collect();
            let _ = write!(row, " {} |", cell(&v, 0));
        }
        let _ = writeln!(md, "{row}");
    }

    let _ = writeln!(
        md,
        "\n## What the load generator achieved\n\n| requested msg/s | achieved msg/s (all consumer runs) |\n|---|---|"
    );
    for (rate, achieved) in achieved_by_rate(results) {
        let _ = writeln!(md, "| {rate} | {} |", cell(&achieved, 0));
    }
    let _ = writeln!(
        md,
        "\nAchieved = messages / time from the step's start until the broker acknowledged the last \
         one. A step below 95 % of its rate is marked L (load short) and not counted for or \
         against the consumer."
    );
    let errors: Vec<String> = results
        .runs
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("- rep {} {}: {e}", r.rep, r.peer.name()))
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\n## Errors\n\n{}", errors.join("\n"));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_of_an_even_count() {
        assert_eq!(spread(&[4.0, 1.0, 3.0, 2.0]), Some((1.0, 2.5, 4.0)));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn a_cell_shows_one_number_when_all_agree() {
        assert_eq!(cell(&[2.0, 2.0], 0), "2");
        assert_eq!(cell(&[1.0, 2.0, 3.0], 1), "1.0 / 2.0 / 3.0");
        assert_eq!(cell(&[], 1), "–");
    }
}
