//! Scenario control for demonstrations: where the hub runs beside simulated machines (the demo
//! region), operators start and stop simulator scenarios ("a bearing wears out") on them from the
//! web platform. The hub only defines the interface; the composition root implements it with the
//! simulators, so the hub never depends on them.

use serde::{Deserialize, Serialize};

use crate::twin::TwinKey;

/// A scenario that can be started on some machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScenarioInfo {
    /// Scenario name.
    pub name: String,
    /// One-line title.
    pub title: String,
    /// What it shows.
    pub description: String,
    /// Twins (`lab/machine`) it can run on.
    pub machines: Vec<String>,
    /// What happens, in order, for the audience ("the outer race of the bearing starts to
    /// pit"), and what to watch.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A scenario running on a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunningScenario {
    /// `lab/machine`.
    pub twin: String,
    /// Scenario name.
    pub scenario: String,
    /// When it was started, ms since the epoch.
    pub started_at: u64,
    /// Who started it.
    pub started_by: String,
    /// Its title.
    #[serde(default)]
    pub title: String,
    /// What happens and what to watch (see [`ScenarioInfo::notes`]).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Why a scenario could not be started or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// No scenario of that name.
    #[error("no scenario {0}")]
    UnknownScenario(String),
    /// The twin is not a simulated machine the scenario can run on.
    #[error("{twin} is not a simulated machine that {scenario} can run on")]
    NotApplicable {
        /// The twin.
        twin: String,
        /// The scenario.
        scenario: String,
    },
    /// Nothing is running on the twin.
    #[error("no scenario is running on {0}")]
    NotRunning(String),
}

/// How much faster than its file a scenario runs when an operator starts it: nobody watches a
/// bearing wear for an hour on a demonstration.
pub const DEMO_SPEEDUP: f64 = 10.0;

/// Starts and stops scenarios on simulated machines.
pub trait ScenarioControl: Send + Sync + std::fmt::Debug {
    /// The scenarios and where they can run.
    fn available(&self) -> Vec<ScenarioInfo>;
    /// What runs now.
    fn running(&self) -> Vec<RunningScenario>;
    /// Starts `scenario` on the machine now at `speed` times its file, replacing whatever ran
    /// there.
    fn start_at_speed(
        &self,
        scenario: &str,
        twin: &TwinKey,
        user: &str,
        now_ms: u64,
        speed: f64,
    ) -> Result<RunningScenario, ScenarioError>;
    /// Starts `scenario` on the machine now at the demo's speed ([`DEMO_SPEEDUP`]).
    fn start(
        &self,
        scenario: &str,
        twin: &TwinKey,
        user: &str,
        now_ms: u64,
    ) -> Result<RunningScenario, ScenarioError> {
        self.start_at_speed(scenario, twin, user, now_ms, DEMO_SPEEDUP)
    }
    /// Stops the machine's scenario and puts back what it changed.
    fn stop(&self, twin: &TwinKey) -> Result<(), ScenarioError>;
}
