//! Demo mode: the shipped simulator scenarios, offered on the demo's simulated machines of the
//! right kind and run through each node's [`LiveControl`] while it keeps streaming.
//!
//! A scenario file describes a whole shift ("from 10 min a bearing wears 5 %/min"). On a live
//! demonstration nobody waits ten minutes for the first event, so a demo scenario starts with
//! its first event at once and runs faster than the file: [`DEMO_SPEEDUP`] times when an
//! operator starts it, a game's own speed when a game stages its fault.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub use hub::scenarios::DEMO_SPEEDUP;
use hub::scenarios::{RunningScenario, ScenarioControl, ScenarioError, ScenarioInfo};
use hub::twin::TwinKey;
use simulators::machines::MachineKind;
use simulators::scenario::{SHIPPED, Scenario};
use simulators::timeline::{Change, LiveControl, TimedChange};

/// A scenario as the demo offers it: one machine kind, changes from time zero at the file's
/// speed.
#[derive(Debug, Clone)]
struct DemoScenario {
    info: ScenarioInfo,
    kind: MachineKind,
    changes: Vec<TimedChange>,
}

/// The shipped scenarios whose events concern a single machine, rebased to start at once.
fn demo_scenarios() -> Vec<DemoScenario> {
    let mut out = Vec::new();
    for (name, text) in SHIPPED {
        let Ok(scenario) = Scenario::parse(text, name) else {
            continue;
        };
        let with_events: Vec<usize> = (0..scenario.machines.len())
            .filter(|i| scenario.changes.get(*i).is_some_and(|c| !c.is_empty()))
            .collect();
        let [index] = with_events[..] else {
            continue; // several machines change together: a lab scenario, not a machine's
        };
        let changes = &scenario.changes[index];
        let first = changes.iter().map(|c| c.at_ms).min().unwrap_or(0);
        out.push(DemoScenario {
            info: ScenarioInfo {
                name: scenario.name.clone(),
                title: scenario.title.clone(),
                description: format!(
                    "{} (in demo mode from its first event on, {DEMO_SPEEDUP}× faster)",
                    scenario.description
                ),
                machines: Vec::new(),
                notes: audience_notes(&scenario, index, first),
            },
            kind: scenario.machines[index].kind,
            changes: changes
                .iter()
                .map(|c| TimedChange {
                    at_ms: c.at_ms - first,
                    param: c.param.clone(),
                    change: c.change,
                })
                .collect(),
        });
    }
    out
}

/// The scenario file's notes for machine `index`, timed from its first event (which the demo
/// runs at once), then what it promises to show.
fn audience_notes(scenario: &Scenario, index: usize, first_ms: u64) -> Vec<String> {
    let events = scenario
        .notes
        .get(index)
        .into_iter()
        .flatten()
        .map(|(at, note)| {
            let after_s = at.saturating_sub(first_ms) / 1000;
            if after_s == 0 {
                format!("At once: {note}")
            } else {
                format!("After {} min of the file's time: {note}", after_s / 60)
            }
        });
    let machine = &scenario.machines[index].id;
    let watch = scenario
        .expectations
        .iter()
        .filter(|x| &x.machine == machine)
        .filter_map(|x| {
            let limit = match (x.above, x.below) {
                (Some(above), _) => format!("above {above}"),
                (_, Some(below)) => format!("below {below}"),
                _ => return None,
            };
            Some(match &x.note {
                Some(note) => format!("Watch {} go {limit}: {note}", x.metric),
                None => format!("Watch {} go {limit}", x.metric),
            })
        });
    events.chain(watch).collect()
}

/// `changes` `speed` times faster: events come sooner and ramps run steeper.
fn sped_up(changes: &[TimedChange], speed: f64) -> Vec<TimedChange> {
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    changes
        .iter()
        .map(|c| TimedChange {
            at_ms: (c.at_ms as f64 / speed) as u64,
            param: c.param.clone(),
            change: match c.change {
                Change::Set(v) => Change::Set(v),
                Change::Ramp { per_min, limit } => Change::Ramp {
                    per_min: per_min * speed,
                    limit,
                },
            },
        })
        .collect()
}

/// The demo's simulated machines and the scenarios running on them.
#[derive(Debug)]
pub struct SimulatedScenarios {
    scenarios: Vec<DemoScenario>,
    machines: BTreeMap<String, (MachineKind, LiveControl)>,
    running: Mutex<HashMap<String, RunningScenario>>,
}

impl Default for SimulatedScenarios {
    fn default() -> Self {
        Self {
            scenarios: demo_scenarios(),
            machines: BTreeMap::new(),
            running: Mutex::default(),
        }
    }
}

impl SimulatedScenarios {
    /// Registers a simulated machine; its node must run with the returned control.
    pub fn add_machine(&mut self, twin: &TwinKey, kind: MachineKind) -> LiveControl {
        let control = LiveControl::default();
        self.machines
            .insert(twin.to_string(), (kind, control.clone()));
        control
    }
}

impl ScenarioControl for SimulatedScenarios {
    fn available(&self) -> Vec<ScenarioInfo> {
        self.scenarios
            .iter()
            .map(|s| {
                let mut info = s.info.clone();
                info.machines = self
                    .machines
                    .iter()
                    .filter(|(_, (kind, _))| *kind == s.kind)
                    .map(|(twin, _)| twin.clone())
                    .collect();
                info
            })
            .filter(|info| !info.machines.is_empty())
            .collect()
    }

    fn running(&self) -> Vec<RunningScenario> {
        let mut running: Vec<RunningScenario> = self
            .running
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        running.sort_by(|a, b| a.twin.cmp(&b.twin));
        running
    }

    fn start_at_speed(
        &self,
        scenario: &str,
        twin: &TwinKey,
        user: &str,
        now_ms: u64,
        speed: f64,
    ) -> Result<RunningScenario, ScenarioError> {
        let chosen = self
            .scenarios
            .iter()
            .find(|s| s.info.name == scenario)
            .ok_or_else(|| ScenarioError::UnknownScenario(scenario.to_owned()))?;
        let id = twin.to_string();
        let control = match self.machines.get(&id) {
            Some((kind, control)) if *kind == chosen.kind => control,
            _ => {
                return Err(ScenarioError::NotApplicable {
                    twin: id,
                    scenario: scenario.to_owned(),
                });
            }
        };
        control.start(sped_up(&chosen.changes, speed));
        let running = RunningScenario {
            twin: id.clone(),
            scenario: scenario.to_owned(),
            started_at: now_ms,
            started_by: user.to_owned(),
            title: chosen.info.title.clone(),
            notes: chosen.info.notes.clone(),
        };
        if let Ok(mut map) = self.running.lock() {
            map.insert(id, running.clone());
        }
        Ok(running)
    }

    fn stop(&self, twin: &TwinKey) -> Result<(), ScenarioError> {
        let id = twin.to_string();
        let removed = self.running.lock().ok().and_then(|mut map| map.remove(&id));
        match (removed, self.machines.get(&id)) {
            (Some(_), Some((_, control))) => {
                control.stop();
                Ok(())
            }
            _ => Err(ScenarioError::NotRunning(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_machine_scenarios_are_offered_on_machines_of_their_kind() {
        let mut control = SimulatedScenarios::default();
        let mill = TwinKey::parse("lab-a/mill-1").expect("key");
        let compressor = TwinKey::parse("lab-a/compressor-1").expect("key");
        control.add_machine(&mill, MachineKind::CncMill);
        control.add_machine(&compressor, MachineKind::Compressor);
        let available = control.available();
        let names: Vec<&str> = available.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"predictive-maintenance"), "{names:?}");
        assert!(names.contains(&"energy-waste"), "{names:?}");
        assert!(
            !names.contains(&"innovation-game"),
            "a whole-lab scenario: {names:?}"
        );
        let wear = available
            .iter()
            .find(|s| s.name == "predictive-maintenance")
            .expect("offered");
        assert_eq!(wear.machines, vec!["lab-a/mill-1".to_owned()]);

        assert!(matches!(
            control.start("energy-waste", &mill, "olga", 1),
            Err(ScenarioError::NotApplicable { .. })
        ));
        assert!(matches!(
            control.start("nope", &mill, "olga", 1),
            Err(ScenarioError::UnknownScenario(_))
        ));
        let running = control
            .start("predictive-maintenance", &mill, "olga", 7)
            .expect("starts");
        assert_eq!(
            (running.started_by.as_str(), running.started_at),
            ("olga", 7)
        );
        assert_eq!(control.running(), vec![running]);
        control.stop(&mill).expect("stops");
        assert!(matches!(
            control.stop(&mill),
            Err(ScenarioError::NotRunning(_))
        ));
    }
}
