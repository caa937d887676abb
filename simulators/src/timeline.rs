//! A timeline of parameter changes applied to one machine at simulated times: the faults and
//! operator actions of a scenario ("at 10 min: bearing wear grows 5 %/min", "from 22:00:
//! compressor leak").
//!
//! Sans-IO: the node calls [`Timeline::apply_due`] with its simulated uptime before each step,
//! so a scenario unfolds identically at any speed and in offline runs.

use protocol::NodeId;

use crate::machines::{Machine, ParamError};

/// How a parameter changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Set it to this value.
    Set(f64),
    /// Change it linearly from its value at the event's time by `per_min` per simulated minute,
    /// stopping at `limit` if given. A later change of the same parameter ends the ramp.
    Ramp {
        /// Change per simulated minute.
        per_min: f64,
        /// The value where the ramp stops.
        limit: Option<f64>,
    },
}

/// One change at one simulated time.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedChange {
    /// Simulated time since the start, in ms.
    pub at_ms: u64,
    /// The machine parameter.
    pub param: String,
    /// What happens to it.
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq)]
struct Ramp {
    param: String,
    start_ms: u64,
    from: f64,
    per_min: f64,
    limit: Option<f64>,
}

/// The changes of one machine, in time order, and the ramps in progress.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    changes: Vec<TimedChange>,
    next: usize,
    ramps: Vec<Ramp>,
}

impl Timeline {
    /// A timeline of `changes`; changes at the same time apply in the given order.
    pub fn new(mut changes: Vec<TimedChange>) -> Self {
        changes.sort_by_key(|c| c.at_ms);
        Self {
            changes,
            next: 0,
            ramps: Vec::new(),
        }
    }

    /// Whether nothing is left to apply.
    pub fn is_finished(&self) -> bool {
        self.next >= self.changes.len() && self.ramps.is_empty()
    }

    /// Applies every change due by `now_ms` and advances the ramps to `now_ms`; returns the first
    /// error, after applying the rest.
    pub fn try_apply_due(
        &mut self,
        machine: &mut dyn Machine,
        now_ms: u64,
    ) -> Result<(), ParamError> {
        let mut first_error = None;
        while let Some(c) = self.changes.get(self.next).filter(|c| c.at_ms <= now_ms) {
            let c = c.clone();
            self.next += 1;
            self.ramps.retain(|r| r.param != c.param);
            let outcome = match c.change {
                Change::Set(value) => machine.set_param(&c.param, value),
                Change::Ramp { per_min, limit } => match machine.param(&c.param) {
                    Some(from) => {
                        self.ramps.push(Ramp {
                            param: c.param.clone(),
                            start_ms: c.at_ms,
                            from,
                            per_min,
                            limit,
                        });
                        Ok(())
                    }
                    // Setting it produces the error that names the known parameters.
                    None => machine.set_param(&c.param, 0.0),
                },
            };
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        for ramp in &self.ramps {
            let minutes = now_ms.saturating_sub(ramp.start_ms) as f64 / 60_000.0;
            let mut value = ramp.from + ramp.per_min * minutes;
            if let Some(limit) = ramp.limit {
                value = if ramp.per_min >= 0.0 {
                    value.min(limit)
                } else {
                    value.max(limit)
                };
            }
            if let Err(e) = machine.set_param(&ramp.param, value) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`try_apply_due`](Self::try_apply_due), logging an error instead of returning it: a
    /// validated scenario cannot produce one, and a running node should not stop over it.
    pub fn apply_due(&mut self, machine: &mut dyn Machine, now_ms: u64, node: NodeId) {
        if let Err(error) = self.try_apply_due(machine, now_ms) {
            tracing::warn!(%node, %error, "a scenario event could not be applied");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::MachineKind;

    #[test]
    fn sets_and_ramps_apply_at_their_times() {
        let mut mill = MachineKind::CncMill.build(1);
        let mut t = Timeline::new(vec![
            TimedChange {
                at_ms: 600_000,
                param: "bearing_wear".into(),
                change: Change::Ramp {
                    per_min: 0.05,
                    limit: Some(0.9),
                },
            },
            TimedChange {
                at_ms: 60_000,
                param: "bearing_wear".into(),
                change: Change::Set(0.1),
            },
        ]);
        t.try_apply_due(&mut *mill, 0).expect("ok");
        assert_eq!(mill.param("bearing_wear"), Some(0.0));
        t.try_apply_due(&mut *mill, 60_000).expect("ok");
        assert_eq!(mill.param("bearing_wear"), Some(0.1));
        t.try_apply_due(&mut *mill, 600_000).expect("ok");
        assert_eq!(mill.param("bearing_wear"), Some(0.1));
        t.try_apply_due(&mut *mill, 720_000).expect("ok");
        let w = mill.param("bearing_wear").unwrap_or_default();
        assert!((w - 0.2).abs() < 1e-9, "{w}");
        t.try_apply_due(&mut *mill, 3_600_000).expect("ok");
        assert_eq!(mill.param("bearing_wear"), Some(0.9));
        assert!(!t.is_finished(), "a ramp at its limit still holds");
    }

    #[test]
    fn a_set_ends_a_ramp_and_unknown_params_are_reported() {
        let mut c = MachineKind::Compressor.build(1);
        let mut t = Timeline::new(vec![
            TimedChange {
                at_ms: 0,
                param: "leak_l_s".into(),
                change: Change::Ramp {
                    per_min: 1.0,
                    limit: None,
                },
            },
            TimedChange {
                at_ms: 120_000,
                param: "leak_l_s".into(),
                change: Change::Set(0.0),
            },
            TimedChange {
                at_ms: 120_000,
                param: "nonsense".into(),
                change: Change::Set(1.0),
            },
        ]);
        t.try_apply_due(&mut *c, 60_000).expect("ok");
        assert_eq!(c.param("leak_l_s"), Some(1.0));
        let err = t.try_apply_due(&mut *c, 180_000).expect_err("unknown");
        assert!(err.to_string().contains("nonsense"));
        assert_eq!(c.param("leak_l_s"), Some(0.0));
        assert!(t.is_finished());
    }
}

/// A handle that changes a running node's machine while it runs: a scenario's changes start
/// now, or stop (the parameters they touched go back to their values before the start). The
/// node picks requests up before its next step, so they take effect in simulated time too.
#[derive(Debug, Clone, Default)]
pub struct LiveControl(std::sync::Arc<std::sync::Mutex<Requests>>);

#[derive(Debug, Default)]
struct Requests {
    start: Option<Vec<TimedChange>>,
    stop: bool,
}

/// A scenario running on a node through a [`LiveControl`].
#[derive(Debug)]
pub struct LiveScenario {
    timeline: Timeline,
    restore: Vec<(String, f64)>,
}

impl LiveControl {
    /// Starts `changes` (times relative to now), ending any scenario already running.
    pub fn start(&self, changes: Vec<TimedChange>) {
        if let Ok(mut requests) = self.0.lock() {
            requests.stop = true;
            requests.start = Some(changes);
        }
    }

    /// Stops the running scenario and restores what it changed.
    pub fn stop(&self) {
        if let Ok(mut requests) = self.0.lock() {
            requests.stop = true;
            requests.start = None;
        }
    }

    /// Called by the node before each step: applies requests and the running scenario.
    pub fn apply(
        &self,
        active: &mut Option<LiveScenario>,
        machine: &mut dyn Machine,
        now_ms: u64,
        node: NodeId,
    ) {
        let (stop, start) = match self.0.lock() {
            Ok(mut requests) => (std::mem::take(&mut requests.stop), requests.start.take()),
            Err(_) => (false, None),
        };
        if stop && let Some(running) = active.take() {
            for (param, value) in running.restore {
                if let Err(err) = machine.set_param(&param, value) {
                    tracing::warn!(%node, %err, "cannot restore a parameter");
                }
            }
        }
        if let Some(changes) = start {
            let mut restore: Vec<(String, f64)> = Vec::new();
            for change in &changes {
                if !restore.iter().any(|(p, _)| p == &change.param)
                    && let Some(value) = machine.param(&change.param)
                {
                    restore.push((change.param.clone(), value));
                }
            }
            let shifted = changes
                .into_iter()
                .map(|c| TimedChange {
                    at_ms: c.at_ms + now_ms,
                    ..c
                })
                .collect();
            *active = Some(LiveScenario {
                timeline: Timeline::new(shifted),
                restore,
            });
        }
        if let Some(running) = active {
            running.timeline.apply_due(machine, now_ms, node);
        }
    }
}
