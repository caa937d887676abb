//! Guided demonstrations: a playbook is a short sequence of steps an operator runs for visitors
//! — what to say, what to point at on the projector, a scenario to start, and a condition to
//! wait for before the next step ("until the anomaly alarm is raised").
//!
//! One demonstration runs at a time (one projector per hub); the operator starts it on a
//! machine, moves on or lets the conditions move it on, and resets it between visitors, which
//! also takes back any scenario it started. The shipped playbooks (`hub/playbooks/`) are
//! compiled in.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::scenarios::ScenarioControl;
use crate::twin::{TwinKey, TwinRegistry};

const SHIPPED: &[(&str, &str)] = &[
    (
        "predictive-maintenance.toml",
        include_str!("../playbooks/predictive-maintenance.toml"),
    ),
    (
        "energy-waste.toml",
        include_str!("../playbooks/energy-waste.toml"),
    ),
    (
        "virtual-line.toml",
        include_str!("../playbooks/virtual-line.toml"),
    ),
    (
        "cybersecurity.toml",
        include_str!("../playbooks/cybersecurity.toml"),
    ),
];

/// What a step waits for before the next one begins by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum Until {
    /// An alarm of this rule is active on the playbook's machine.
    Alarm {
        /// Rule id, e.g. `anomaly`.
        alarm: String,
    },
    /// A metric of the machine has risen this much since the step began.
    Rises {
        /// The metric.
        metric: String,
        /// By how much, in its unit.
        rises_by: f64,
    },
    /// This many more attempts were refused (broker, logins, wire) since the step began.
    Refused {
        /// How many.
        refused: u64,
    },
}

/// One step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the presenter says (shown on the projector).
    pub say: String,
    /// Danish.
    pub say_da: String,
    /// What to highlight: `card`, `alarms`, `line`, `security`, or a metric of the machine.
    #[serde(default)]
    pub point: Option<String>,
    /// A scenario to start on the machine when the step begins.
    #[serde(default)]
    pub scenario: Option<String>,
    /// What to wait for; without it the operator moves on.
    #[serde(default)]
    pub until: Option<Until>,
}

/// A guided demonstration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Id.
    pub id: String,
    /// English title.
    pub title: String,
    /// Danish title.
    pub title_da: String,
    /// What it shows.
    pub summary: String,
    /// Danish.
    pub summary_da: String,
    /// The machine kind it runs on (none for a line or the whole region).
    #[serde(default)]
    pub kind: Option<String>,
    /// The virtual line it shows.
    #[serde(default)]
    pub line: Option<String>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// A playbook was rejected, or a run request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlaybookError {
    /// A shipped file is wrong.
    #[error("playbook {file}: {key}: {problem}")]
    Invalid {
        /// File.
        file: String,
        /// Key.
        key: String,
        /// Problem.
        problem: String,
    },
    /// No such playbook.
    #[error("no playbook {0}")]
    NotFound(String),
    /// The playbook needs a machine of its kind.
    #[error("{0}")]
    NeedsMachine(String),
    /// Nothing runs.
    #[error("no demonstration is running")]
    NotRunning,
}

impl Playbook {
    /// Parses and checks one playbook.
    pub fn parse(text: &str, file: &str) -> Result<Self, PlaybookError> {
        let invalid = |key: String, problem: String| PlaybookError::Invalid {
            file: file.to_owned(),
            key,
            problem,
        };
        let playbook: Self =
            toml::from_str(text).map_err(|e| invalid("(file)".into(), e.message().to_owned()))?;
        if playbook.steps.is_empty() {
            return Err(invalid("steps".into(), "a playbook needs a step".into()));
        }
        for (i, step) in playbook.steps.iter().enumerate() {
            let machine_bound = step.scenario.is_some()
                || matches!(step.until, Some(Until::Alarm { .. } | Until::Rises { .. }))
                || step
                    .point
                    .as_deref()
                    .is_some_and(|p| p == "card" || p.contains('.'));
            if machine_bound && playbook.kind.is_none() {
                return Err(invalid(
                    format!("steps[{i}]"),
                    "points at, starts or waits on a machine, but the playbook has no `kind`"
                        .into(),
                ));
            }
            if let Some(Until::Rises { rises_by, .. }) = &step.until
                && !(rises_by.is_finite() && *rises_by > 0.0)
            {
                return Err(invalid(
                    format!("steps[{i}].until.rises_by"),
                    "must be above 0".into(),
                ));
            }
        }
        Ok(playbook)
    }
}

/// The shipped playbooks.
pub fn shipped() -> Vec<Playbook> {
    SHIPPED
        .iter()
        .map(|(file, text)| Playbook::parse(text, file))
        .collect::<Result<_, _>>()
        // Compiled in and tested below: a broken file is a build mistake.
        .unwrap_or_else(|err| panic!("{err}"))
}

/// Attempts refused so far, summed: what a security step counts.
pub type RefusalCount = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Debug, Clone)]
struct Run {
    playbook: usize,
    twin: Option<String>,
    step: usize,
    started_by: String,
    step_started_at_ms: u64,
    /// Refusals counted when the step began.
    refused_at_start: u64,
    /// The watched metric's value when the step began.
    value_at_start: Option<f64>,
    /// Scenarios this run started, to take back at the reset.
    started_scenario: bool,
}

/// The running demonstration as the projector shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunView {
    /// Playbook id.
    pub playbook: String,
    /// Its title.
    pub title: String,
    /// Danish title.
    pub title_da: String,
    /// The machine (`lab/machine`), if the playbook has one.
    pub twin: Option<String>,
    /// The virtual line it shows.
    pub line: Option<String>,
    /// Step number, from 0.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// The step.
    pub current: Step,
    /// Whether the step waits for its condition.
    pub waiting: bool,
    /// Who runs it.
    pub started_by: String,
    /// When the step began, ms since the epoch.
    pub step_started_at_ms: u64,
}

/// The hub's playbooks and the demonstration running.
pub struct Playbooks {
    playbooks: Vec<Playbook>,
    scenarios: Option<Arc<dyn ScenarioControl>>,
    twins: Arc<TwinRegistry>,
    refusals: RefusalCount,
    run: Mutex<Option<Run>>,
}

impl std::fmt::Debug for Playbooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playbooks")
            .field("playbooks", &self.playbooks.len())
            .finish_non_exhaustive()
    }
}

impl Playbooks {
    /// The shipped playbooks, over these twins.
    pub fn new(
        scenarios: Option<Arc<dyn ScenarioControl>>,
        twins: Arc<TwinRegistry>,
        refusals: RefusalCount,
    ) -> Self {
        Self {
            playbooks: shipped(),
            scenarios,
            twins,
            refusals,
            run: Mutex::new(None),
        }
    }

    /// The playbooks.
    pub fn list(&self) -> &[Playbook] {
        &self.playbooks
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Run>> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a playbook (on `twin`, or the first machine of its kind), replacing any run.
    pub fn start(
        &self,
        id: &str,
        twin: Option<&str>,
        by: &str,
        now_ms: u64,
    ) -> Result<RunView, PlaybookError> {
        let index = self
            .playbooks
            .iter()
            .position(|p| p.id == id)
            .ok_or_else(|| PlaybookError::NotFound(id.to_owned()))?;
        let playbook = &self.playbooks[index];
        let twin = match &playbook.kind {
            None => None,
            Some(kind) => {
                let of_kind = |t: &crate::twin::Twin| &t.kind == kind;
                let chosen = match twin {
                    Some(id) => TwinKey::parse(id)
                        .and_then(|key| self.twins.get(&key))
                        .filter(of_kind),
                    None => self.twins.list(None).into_iter().find(of_kind),
                };
                Some(
                    chosen
                        .ok_or_else(|| {
                            PlaybookError::NeedsMachine(format!(
                                "{id} runs on a {kind}; {} is not one",
                                twin.unwrap_or("the region has none")
                            ))
                        })?
                        .id,
                )
            }
        };
        self.reset();
        let mut run = Run {
            playbook: index,
            twin,
            step: 0,
            started_by: by.to_owned(),
            step_started_at_ms: now_ms,
            refused_at_start: 0,
            value_at_start: None,
            started_scenario: false,
        };
        self.enter(&mut run, now_ms);
        let view = self.view(&run);
        *self.lock() = Some(run);
        Ok(view)
    }

    /// Begins `run.step`: remembers the counters its condition compares with and starts its
    /// scenario.
    fn enter(&self, run: &mut Run, now_ms: u64) {
        let step = &self.playbooks[run.playbook].steps[run.step];
        run.step_started_at_ms = now_ms;
        run.refused_at_start = (self.refusals)();
        run.value_at_start = match &step.until {
            Some(Until::Rises { metric, .. }) => self.value(run, metric),
            _ => None,
        };
        if let (Some(scenario), Some(control), Some(key)) = (
            &step.scenario,
            &self.scenarios,
            run.twin.as_deref().and_then(TwinKey::parse),
        ) {
            match control.start(
                scenario,
                &key,
                &format!("playbook {}", run.started_by),
                now_ms,
            ) {
                Ok(_) => run.started_scenario = true,
                Err(err) => tracing::warn!(%scenario, twin = %key, "playbook scenario: {err}"),
            }
        }
    }

    fn value(&self, run: &Run, metric: &str) -> Option<f64> {
        let twin = self.twins.get(&TwinKey::parse(run.twin.as_deref()?)?)?;
        let (feature, property) = metric.split_once('.')?;
        twin.features
            .get(feature)?
            .properties
            .get(property)?
            .reported
    }

    fn met(&self, run: &Run) -> bool {
        let step = &self.playbooks[run.playbook].steps[run.step];
        match &step.until {
            None => false,
            Some(Until::Alarm { alarm }) => run
                .twin
                .as_deref()
                .and_then(TwinKey::parse)
                .and_then(|key| self.twins.get(&key))
                .is_some_and(|twin| twin.alarms.iter().any(|a| &a.rule == alarm)),
            Some(Until::Rises { metric, rises_by }) => {
                match (run.value_at_start, self.value(run, metric)) {
                    (Some(start), Some(now)) => now - start >= *rises_by,
                    _ => false,
                }
            }
            Some(Until::Refused { refused }) => {
                (self.refusals)().saturating_sub(run.refused_at_start) >= *refused
            }
        }
    }

    fn view(&self, run: &Run) -> RunView {
        let playbook = &self.playbooks[run.playbook];
        let current = playbook.steps[run.step].clone();
        RunView {
            playbook: playbook.id.clone(),
            title: playbook.title.clone(),
            title_da: playbook.title_da.clone(),
            twin: run.twin.clone(),
            line: playbook.line.clone(),
            step: run.step,
            steps: playbook.steps.len(),
            waiting: current.until.is_some(),
            current,
            started_by: run.started_by.clone(),
            step_started_at_ms: run.step_started_at_ms,
        }
    }

    /// The running demonstration.
    pub fn current(&self) -> Option<RunView> {
        self.lock().as_ref().map(|run| self.view(run))
    }

    /// Moves to the next step (the last one stays).
    pub fn next(&self, now_ms: u64) -> Result<RunView, PlaybookError> {
        let mut guard = self.lock();
        let run = guard.as_mut().ok_or(PlaybookError::NotRunning)?;
        if run.step + 1 < self.playbooks[run.playbook].steps.len() {
            run.step += 1;
            self.enter(run, now_ms);
        }
        Ok(self.view(run))
    }

    /// Ends the demonstration and takes back what it started: ready for the next visitors.
    pub fn reset(&self) -> bool {
        let Some(run) = self.lock().take() else {
            return false;
        };
        if run.started_scenario
            && let (Some(control), Some(key)) = (
                &self.scenarios,
                run.twin.as_deref().and_then(TwinKey::parse),
            )
        {
            let _ = control.stop(&key);
        }
        true
    }

    /// Moves a step on whose condition is met; the hub calls it twice a second.
    pub fn tick(&self, now_ms: u64) {
        let mut guard = self.lock();
        if let Some(run) = guard.as_mut()
            && run.step + 1 < self.playbooks[run.playbook].steps.len()
            && self.met(run)
        {
            run.step += 1;
            self.enter(run, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn the_shipped_playbooks_parse() {
        let ids: Vec<String> = shipped().into_iter().map(|p| p.id).collect();
        assert_eq!(
            ids,
            [
                "predictive-maintenance",
                "energy-waste",
                "virtual-line",
                "cybersecurity"
            ]
        );
    }

    #[test]
    fn a_machine_step_needs_a_kind_and_errors_name_the_key() {
        let text = SHIPPED[0].1.replace("kind = \"cnc-mill\"", "");
        let err = Playbook::parse(&text, "x.toml").expect_err("no kind");
        assert!(
            matches!(err, PlaybookError::Invalid { ref key, .. } if key == "steps[0]"),
            "{err}"
        );
        let text = SHIPPED[1].1.replace("rises_by = 2.0", "rises_by = -2.0");
        let err = Playbook::parse(&text, "x.toml").expect_err("negative");
        assert!(err.to_string().contains("steps[2].until.rises_by"), "{err}");
    }

    #[test]
    fn a_security_step_moves_on_when_enough_attempts_are_refused_and_reset_clears() {
        let stats = Arc::new(crate::stats::HubStats::default());
        let twins = Arc::new(TwinRegistry::new(stats, Arc::default()));
        let refused = Arc::new(AtomicU64::new(10));
        let counter = refused.clone();
        let playbooks = Playbooks::new(
            None,
            twins,
            Arc::new(move || counter.load(Ordering::Relaxed)),
        );
        assert!(matches!(
            playbooks.start("predictive-maintenance", None, "olga", 0),
            Err(PlaybookError::NeedsMachine(_))
        ));
        let view = playbooks
            .start("cybersecurity", None, "olga", 0)
            .expect("starts");
        assert_eq!((view.step, view.steps, view.waiting), (0, 3, false));
        playbooks.tick(1);
        assert_eq!(
            playbooks.current().expect("runs").step,
            0,
            "no condition: the operator moves on"
        );
        assert_eq!(playbooks.next(2).expect("next").step, 1);
        refused.store(13, Ordering::Relaxed);
        playbooks.tick(3);
        assert_eq!(
            playbooks.current().expect("runs").step,
            1,
            "3 of 4 refusals"
        );
        refused.store(14, Ordering::Relaxed);
        playbooks.tick(4);
        let view = playbooks.current().expect("runs");
        assert_eq!((view.step, view.step_started_at_ms), (2, 4));
        assert_eq!(
            playbooks.next(5).expect("stays").step,
            2,
            "the last step stays"
        );
        assert!(playbooks.reset());
        assert!(playbooks.current().is_none());
        assert!(matches!(playbooks.next(6), Err(PlaybookError::NotRunning)));
    }
}
