//! Scenarios: a lab of simulated machines and a timeline of injected faults and operator
//! actions, in TOML.
//!
//! ```toml
//! name = "predictive-maintenance"
//! title = "A spindle bearing wears out"
//! description = "…"
//! lab = "demo-cnc"
//! duration = "40m"          # simulated; s, m or h
//! sample_period_ms = 1000
//! clock_start = "08:00"     # optional: the time of day at the start, for "22:00" events
//!
//! [[machines]]
//! id = "mill-1"
//! kind = "cnc-mill"         # cnc-mill, 3d-printer, compressor, conveyor, lab-climate
//! node = "5100000000000001"
//! link = "mqtt"             # mqtt (default) or modbus (served by `demolab-sim plc`)
//! params = { break_chance_per_part = 0.0 }
//!
//! [[events]]
//! at = "10m"                # or a time of day, "22:00"
//! machine = "mill-1"
//! param = "bearing_wear"
//! ramp_per_min = 0.05       # or `set = …`
//! to = 1.0
//!
//! [[expect]]                # the effect the scenario promises, checked by the tests
//! machine = "mill-1"
//! metric = "anomaly.score"
//! above = 5.0
//! within = "30m"
//! ```
//!
//! Every machine model is seeded from the run's seed and the machine's position (or its own
//! `seed`), and its node's firmware core builds the frames, so the same seed and scenario give
//! the same frame stream byte for byte ([`Scenario::offline_frames`]).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use firmware::NodeCore;
use protocol::{LabId, MachineId, MetricName, NodeId, codec};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::machines::{Machine, MachineKind};
use crate::node::{
    MqttNodeConfig, NodeLogin, NodeReport, SIM_FIRMWARE, SimError, fresh_boot_id,
    machine_descriptors, machine_readings, run_machine_node,
};
use crate::rng::SimRng;
use crate::timeline::{Change, TimedChange, Timeline};

/// The scenarios shipped in `simulators/scenarios/`, as `(name, TOML)`.
pub const SHIPPED: [(&str, &str); 5] = [
    (
        "predictive-maintenance",
        include_str!("../scenarios/predictive-maintenance.toml"),
    ),
    (
        "energy-waste",
        include_str!("../scenarios/energy-waste.toml"),
    ),
    (
        "quality-drift",
        include_str!("../scenarios/quality-drift.toml"),
    ),
    ("oee", include_str!("../scenarios/oee.toml")),
    (
        "innovation-game",
        include_str!("../scenarios/innovation-game.toml"),
    ),
];

/// One node's encoded frames, in order: its id and the wire bytes of each frame.
pub type NodeFrames = (NodeId, Vec<Vec<u8>>);

/// Why a scenario cannot be loaded; the message names the file and the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not readable.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML for a scenario (unknown keys included).
    #[error("scenario {source_name}: {message}")]
    Parse {
        /// The file or shipped name.
        source_name: String,
        /// The parser's message, with line and key.
        message: String,
    },
    /// A value that cannot be run.
    #[error("scenario {source_name}: `{key}`: {message}")]
    Invalid {
        /// The file or shipped name.
        source_name: String,
        /// The key, e.g. `events[2].param`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Neither a shipped scenario nor a file.
    #[error("no scenario {0:?}: not a shipped name (see list-scenarios) nor a file")]
    NotFound(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    title: String,
    description: String,
    lab: String,
    duration: String,
    #[serde(default = "default_period")]
    sample_period_ms: u64,
    #[serde(default)]
    clock_start: Option<String>,
    machines: Vec<MachineFile>,
    #[serde(default)]
    events: Vec<EventFile>,
    #[serde(default)]
    expect: Vec<ExpectFile>,
}

fn default_period() -> u64 {
    1000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineFile {
    id: String,
    kind: MachineKind,
    node: String,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    link: Link,
    #[serde(default)]
    params: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    at: String,
    machine: String,
    param: String,
    #[serde(default)]
    set: Option<f64>,
    #[serde(default)]
    ramp_per_min: Option<f64>,
    #[serde(default)]
    to: Option<f64>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    machine: String,
    metric: String,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    below: Option<f64>,
    within: String,
    #[serde(default)]
    note: Option<String>,
}

/// How a machine reaches its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// A simulated sensor node publishing node frames to the lab broker.
    #[default]
    Mqtt,
    /// A simulated PLC polled by the gateway's Modbus source (see [`crate::plc`]).
    Modbus,
}

/// One machine of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioMachine {
    /// Twin id.
    pub id: MachineId,
    /// Model.
    pub kind: MachineKind,
    /// The node's hardware id.
    pub node: NodeId,
    /// Own seed, mixed with the run's seed; default its position.
    pub seed: u64,
    /// Link to the gateway.
    pub link: Link,
    /// Parameters set before the start.
    pub params: BTreeMap<String, f64>,
}

/// An effect the scenario promises.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// The twin.
    pub machine: MachineId,
    /// The twin property (a metric or a hub-derived one such as `anomaly.score`).
    pub metric: String,
    /// Must rise above this...
    pub above: Option<f64>,
    /// ...or fall below this...
    pub below: Option<f64>,
    /// ...within this simulated time.
    pub within: Duration,
    /// Why.
    pub note: Option<String>,
}

/// A parsed, validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// One-line title.
    pub title: String,
    /// What it shows.
    pub description: String,
    /// Lab (Sparkplug group).
    pub lab: LabId,
    /// Simulated length.
    pub duration: Duration,
    /// Simulated time between samples.
    pub sample_period: Duration,
    /// The machines.
    pub machines: Vec<ScenarioMachine>,
    /// Per machine (same order), its changes.
    pub changes: Vec<Vec<TimedChange>>,
    /// Promised effects.
    pub expectations: Vec<Expectation>,
    /// Per machine (same order), what its events mean for the audience: `(at, note)`.
    pub notes: Vec<Vec<(u64, String)>>,
}

/// Parses `90s`, `10m`, `1.5h` (simulated time).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.trim().parse().ok()?;
    let secs = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Parses `HH:MM` into seconds after midnight.
fn parse_clock(text: &str) -> Option<u64> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 3600 + m * 60)
}

impl Scenario {
    /// Parses and validates scenario TOML; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            source_name: source_name.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |key: String, message: String| ScenarioError::Invalid {
            source_name: source_name.to_owned(),
            key,
            message,
        };
        let lab: LabId = file
            .lab
            .parse()
            .map_err(|e| invalid("lab".into(), format!("{e}")))?;
        let duration = parse_duration(&file.duration)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                invalid(
                    "duration".into(),
                    format!("{:?} is not a duration like 90s, 10m, 2h", file.duration),
                )
            })?;
        if file.sample_period_ms < u64::from(firmware::MIN_PERIOD_MS)
            || file.sample_period_ms > 3_600_000
        {
            return Err(invalid(
                "sample_period_ms".into(),
                format!(
                    "{} is outside {}..=3600000",
                    file.sample_period_ms,
                    firmware::MIN_PERIOD_MS
                ),
            ));
        }
        let clock_start = match &file.clock_start {
            None => 0,
            Some(c) => parse_clock(c)
                .ok_or_else(|| invalid("clock_start".into(), format!("{c:?} is not HH:MM")))?,
        };
        if file.machines.is_empty() {
            return Err(invalid("machines".into(), "no machines".into()));
        }
        let mut machines = Vec::new();
        let (mut ids, mut nodes) = (HashSet::new(), HashSet::new());
        for (i, m) in file.machines.iter().enumerate() {
            let key = |k: &str| format!("machines[{i}].{k}");
            let id: MachineId =
                m.id.parse()
                    .map_err(|e| invalid(key("id"), format!("{e}")))?;
            if !ids.insert(id.clone()) {
                return Err(invalid(key("id"), format!("{id} appears twice")));
            }
            let node: NodeId = m
                .node
                .parse()
                .map_err(|e| invalid(key("node"), format!("{:?}: {e}", m.node)))?;
            if !nodes.insert(node) {
                return Err(invalid(key("node"), format!("{node} appears twice")));
            }
            let mut model = m.kind.build(0);
            for (name, value) in &m.params {
                model
                    .set_param(name, *value)
                    .map_err(|e| invalid(key(&format!("params.{name}")), e.to_string()))?;
            }
            machines.push(ScenarioMachine {
                id,
                kind: m.kind,
                node,
                seed: m.seed.unwrap_or(i as u64 + 1),
                link: m.link,
                params: m.params.clone(),
            });
        }
        let mut changes = vec![Vec::new(); machines.len()];
        let mut notes = vec![Vec::new(); machines.len()];
        for (i, e) in file.events.iter().enumerate() {
            let key = |k: &str| format!("events[{i}].{k}");
            let at_s = if let Some(clock) = parse_clock(&e.at) {
                // The next time the clock shows this time, from the start.
                (clock + 86_400 - clock_start) % 86_400
            } else {
                parse_duration(&e.at).map(|d| d.as_secs()).ok_or_else(|| {
                    invalid(
                        key("at"),
                        format!(
                            "{:?} is neither a duration (10m) nor a time of day (22:00)",
                            e.at
                        ),
                    )
                })?
            };
            let Some(m) = machines.iter().position(|m| m.id.as_str() == e.machine) else {
                return Err(invalid(
                    key("machine"),
                    format!("{:?} is not one of the scenario's machines", e.machine),
                ));
            };
            let model = machines[m].kind.build(0);
            if model.param(&e.param).is_none() {
                return Err(invalid(
                    key("param"),
                    format!(
                        "{} has no parameter {:?}; it has: {}",
                        machines[m].kind,
                        e.param,
                        model.param_names().join(", ")
                    ),
                ));
            }
            let change = match (e.set, e.ramp_per_min) {
                (Some(v), None) if v.is_finite() && e.to.is_none() => Change::Set(v),
                (None, Some(r)) if r.is_finite() => Change::Ramp {
                    per_min: r,
                    limit: e.to.filter(|t| t.is_finite()),
                },
                _ => {
                    return Err(invalid(
                        key("set"),
                        "give exactly one of `set` or `ramp_per_min` (with an optional `to`), as finite numbers".into(),
                    ));
                }
            };
            if let Some(note) = &e.note {
                notes[m].push((at_s.saturating_mul(1000), note.clone()));
            }
            changes[m].push(TimedChange {
                at_ms: at_s.saturating_mul(1000),
                param: e.param.clone(),
                change,
            });
        }
        let mut expectations = Vec::new();
        for (i, x) in file.expect.iter().enumerate() {
            let key = |k: &str| format!("expect[{i}].{k}");
            let Some(m) = machines.iter().find(|m| m.id.as_str() == x.machine) else {
                return Err(invalid(
                    key("machine"),
                    format!("{:?} is not one of the scenario's machines", x.machine),
                ));
            };
            MetricName::new(&x.metric).map_err(|e| invalid(key("metric"), format!("{e}")))?;
            if x.above.is_none() == x.below.is_none() {
                return Err(invalid(
                    key("above"),
                    "give exactly one of `above` or `below`".into(),
                ));
            }
            let within = parse_duration(&x.within).ok_or_else(|| {
                invalid(key("within"), format!("{:?} is not a duration", x.within))
            })?;
            expectations.push(Expectation {
                machine: m.id.clone(),
                metric: x.metric.clone(),
                above: x.above,
                below: x.below,
                within,
                note: x.note.clone(),
            });
        }
        Ok(Self {
            name: file.name,
            title: file.title,
            description: file.description,
            lab,
            duration,
            sample_period: Duration::from_millis(file.sample_period_ms),
            machines,
            changes,
            expectations,
            notes,
        })
    }

    /// Loads a file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A shipped scenario by name, else a file by path.
    pub fn find(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((name, text)) = SHIPPED.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, name);
        }
        let path = Path::new(name_or_path);
        if path.is_file() {
            return Self::load(path);
        }
        Err(ScenarioError::NotFound(name_or_path.to_owned()))
    }

    /// Samples per node over the whole scenario.
    pub fn samples(&self) -> u32 {
        let n = self.duration.as_millis() / self.sample_period.as_millis().max(1);
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    }

    /// Machine `index`'s model for a run with `seed`, its initial parameters set.
    pub fn build_machine(&self, index: usize, seed: u64) -> Option<Box<dyn Machine>> {
        let m = self.machines.get(index)?;
        // Mixed through the PRNG so neighbouring run seeds give unrelated machines.
        let machine_seed =
            SimRng::new(seed ^ m.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
        let mut model = m.kind.build(machine_seed);
        for (name, value) in &m.params {
            // Validated by `parse`.
            let _ = model.set_param(name, *value);
        }
        Some(model)
    }

    /// Machine `index`'s timeline.
    pub fn timeline(&self, index: usize) -> Timeline {
        Timeline::new(self.changes.get(index).cloned().unwrap_or_default())
    }

    /// Every node's frames for the whole scenario, encoded as on the wire, without a network:
    /// the `Hello`, then one `Samples` frame per period. `boot` stands in for the boot id (which
    /// a live node takes from the clock).
    pub fn offline_frames(&self, seed: u64, boot: u32) -> Result<Vec<NodeFrames>, SimError> {
        let period_ms = u32::try_from(self.sample_period.as_millis()).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        for (i, m) in self.machines.iter().enumerate() {
            let Some(mut model) = self.build_machine(i, seed) else {
                continue;
            };
            let mut timeline = self.timeline(i);
            let mut core = NodeCore::new(
                m.node,
                SIM_FIRMWARE,
                boot,
                Some(m.id.clone()),
                machine_descriptors(&*model, period_ms)
                    .into_iter()
                    .collect(),
            );
            let encode = |frame: &protocol::Frame| {
                codec::encode_to_vec(frame).map_err(|source| SimError::Encode {
                    node: m.node,
                    kind: frame.kind(),
                    source,
                })
            };
            let mut frames = vec![encode(&core.hello())?];
            let mut uptime_ms = 0u64;
            for _ in 0..self.samples() {
                timeline.apply_due(&mut *model, uptime_ms, m.node);
                model.step(self.sample_period);
                uptime_ms += u64::from(period_ms);
                let frame =
                    core.sample(uptime_ms, &machine_readings(&*model))
                        .map_err(|error| SimError::Firmware {
                            node: m.node,
                            error,
                        })?;
                frames.push(encode(&frame)?);
            }
            out.push((m.node, frames));
        }
        Ok(out)
    }

    /// Starts one MQTT node per `mqtt` machine at `speed` times real time; they stop after the
    /// scenario's duration, or on `cancel`. Modbus machines are not started here (see
    /// [`crate::plc`]).
    pub fn spawn(
        &self,
        seed: u64,
        speed: f64,
        broker_host: &str,
        broker_port: u16,
        login: Option<&NodeLogin>,
        cancel: &CancellationToken,
    ) -> JoinSet<Result<NodeReport, SimError>> {
        let mut nodes = JoinSet::new();
        let tick = if speed.is_finite() && speed > 0.0 {
            Duration::try_from_secs_f64(self.sample_period.as_secs_f64() / speed)
                .unwrap_or(Duration::ZERO)
        } else {
            Duration::ZERO
        };
        for (i, m) in self.machines.iter().enumerate() {
            if m.link != Link::Mqtt {
                continue;
            }
            let Some(model) = self.build_machine(i, seed) else {
                continue;
            };
            let config = MqttNodeConfig {
                node: m.node,
                machine: m.id.clone(),
                boot: fresh_boot_id(m.node),
                seed,
                sample_period: self.sample_period,
                tick_interval: tick,
                max_samples: Some(self.samples()),
                broker_host: broker_host.to_owned(),
                broker_port,
                login: login.cloned(),
            };
            nodes.spawn(run_machine_node(
                config,
                model,
                self.timeline(i),
                cancel.clone(),
            ));
        }
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_validates() {
        for (name, text) in SHIPPED {
            let s = Scenario::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.name, name);
            assert!(!s.expectations.is_empty(), "{name} promises nothing");
            assert!(
                s.changes.iter().any(|c| !c.is_empty()),
                "{name} has no events"
            );
        }
    }

    #[test]
    fn errors_name_the_key() {
        let base = r#"
name = "t"
title = "t"
description = "t"
lab = "lab-1"
duration = "10m"
[[machines]]
id = "m-1"
kind = "compressor"
node = "0000000000000001"
"#;
        assert!(Scenario::parse(base, "t").is_ok());
        let cases = [
            ("\nbogus = 1", "bogus"),
            (
                "\n[[events]]\nat = \"1m\"\nmachine = \"m-1\"\nparam = \"bearing_wear\"\nset = 1.0",
                "events[0].param",
            ),
            (
                "\n[[events]]\nat = \"soon\"\nmachine = \"m-1\"\nparam = \"leak_l_s\"\nset = 1.0",
                "events[0].at",
            ),
            (
                "\n[[events]]\nat = \"1m\"\nmachine = \"m-2\"\nparam = \"leak_l_s\"\nset = 1.0",
                "events[0].machine",
            ),
            (
                "\n[[events]]\nat = \"1m\"\nmachine = \"m-1\"\nparam = \"leak_l_s\"",
                "events[0].set",
            ),
        ];
        for (extra, key) in cases {
            let text = if extra.contains("bogus") {
                base.replacen("name = \"t\"", &format!("name = \"t\"{extra}"), 1)
            } else {
                format!("{base}{extra}")
            };
            let err = Scenario::parse(&text, "t.toml").expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
            assert!(err.to_string().contains("t.toml"), "{err}");
        }
        let err = Scenario::parse(&base.replace("10m", "ten"), "t").expect_err("duration");
        assert!(err.to_string().contains("`duration`"), "{err}");
    }

    #[test]
    fn clock_times_count_from_clock_start() {
        let text = r#"
name = "t"
title = "t"
description = "t"
lab = "lab-1"
duration = "12h"
clock_start = "20:00"
[[machines]]
id = "c"
kind = "compressor"
node = "0000000000000001"
[[events]]
at = "22:00"
machine = "c"
param = "leak_l_s"
set = 5.0
[[events]]
at = "06:30"
machine = "c"
param = "leak_l_s"
set = 0.0
"#;
        let s = Scenario::parse(text, "t").expect("valid");
        let at: Vec<_> = s.changes[0].iter().map(|c| c.at_ms / 1000).collect();
        assert_eq!(at, [7200, 10 * 3600 + 1800]);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("-1m"), None);
    }
}
