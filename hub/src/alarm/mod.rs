//! Alarms: threshold, rate-of-change, anomaly and offline alarms of every twin.
//!
//! Sans-IO and deterministic: ingest hands the engine live samples with their source timestamps
//! and connectivity changes with the hub's time; the engine answers with [`AlarmEvent`]s for the
//! caller to persist (the records are serde types), stream and expose over REST. Nothing here
//! reads a clock, spawns a task or touches a disk.
//!
//! ```
//! use std::sync::Arc;
//! use demolab_hub::alarm::{AlarmEngine, AlarmEventKind, KindAlarms};
//! use demolab_hub::twin::TwinKey;
//!
//! let rules: KindAlarms = toml::from_str(r#"
//!     [[alarms]]
//!     id = "spindle-overload"
//!     metric = "spindle.power_w"
//!     above = 4500.0
//!     severity = "major"
//! "#).expect("valid rules");
//! let key = TwinKey {
//!     lab: "lab-a".parse().expect("valid lab"),
//!     machine: "mill-1".parse().expect("valid machine"),
//! };
//! let mut engine = AlarmEngine::new();
//! engine.set_rules(&key, Arc::new(rules));
//! let power = "spindle.power_w".parse().expect("valid metric");
//! let outcome = engine.on_sample(&key, 1_000, &[(power, 5000.0)]);
//! assert_eq!(outcome.events[0].kind, AlarmEventKind::Raised);
//! assert_eq!(outcome.events[0].alarm.id, "lab-a/mill-1/spindle-overload/1");
//! ```
//!
//! # Alarm states
//!
//! Like ThingsBoard, an alarm has two independent flags — is its condition still present, and
//! has someone acknowledged it — giving four [`AlarmState`]s:
//!
//! ```text
//!              acknowledge
//! active_unack ──────────► active_ack
//!      │ condition gone         │ condition gone
//!      ▼       acknowledge      ▼
//! cleared_unack ─────────► cleared_ack   (final; pruned after the retention)
//! ```
//!
//! A cleared alarm nobody acknowledged still needs attention: list it with
//! [`AlarmFilter::unacknowledged_only`]. When the condition returns after a clear, a *new* alarm
//! record is raised with the next id; records are never reopened.
//!
//! # Time
//!
//! `raised_at` is the instant the alarm was raised — the first sample at which the condition had
//! held for `for_s` — because that is when operators were told; the start of the condition is
//! kept in `condition_since`. Likewise `cleared_at` is the first sample at which the condition
//! had been gone for `clear_for_s` (default `for_s`), so a signal swinging across its limit every
//! few seconds keeps one alarm instead of flapping.
//!
//! # What tripped it
//!
//! A raised alarm carries the `metric`, the `value` that crossed (the value, its rate, or the
//! anomaly score), the metric's own value as `metric_value`, and the `threshold`; its `message`
//! ends with them, e.g. `Spindle vibration above 4.5 mm/s (ISO 10816 zone C): spindle.vibration_rms
//! 5.12 (limit 4.5)` or `Anomaly score above 5: score 5.3 on spindle.vibration_rms, level 3.41
//! against a learned 2.62`. Samples with a timestamp older than the newest one seen for the
//! machine are ignored (a replay after an outage must not raise or clear live alarms; ingest
//! only passes live samples anyway).
//!
//! # Locking
//!
//! [`MachineAlarms`] owns everything about one machine and has the whole per-machine API;
//! [`AlarmEngine`] is a thin `BTreeMap` of them for single-lock callers and tests. A caller that
//! wants no global lock on ingest keeps `MachineAlarms` in a sharded map (e.g. a `DashMap`
//! keyed by [`TwinKey`](crate::twin::TwinKey)), and finds the machine of an alarm id with
//! [`machine_of_alarm`].

pub mod anomaly;
mod engine;
pub mod rules;

pub use engine::{
    AlarmEngine, EngineSnapshot, MachineAlarms, MachineSnapshot, Pruned, Retention,
    SNAPSHOT_VERSION, SampleOutcome, machine_of_alarm,
};
pub use rules::{AlarmRule, AnomalyConfig, KindAlarms, RuleError, Severity};

use serde::{Deserialize, Serialize};

/// Where an alarm is in its life; see the [module docs](self#alarm-states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    /// The condition holds; nobody has acknowledged it.
    ActiveUnack,
    /// The condition holds; acknowledged.
    ActiveAck,
    /// The condition is gone; nobody has acknowledged it.
    ClearedUnack,
    /// The condition is gone and it was acknowledged: closed.
    ClearedAck,
}

impl AlarmState {
    /// Whether the condition still holds.
    pub fn is_active(self) -> bool {
        matches!(self, AlarmState::ActiveUnack | AlarmState::ActiveAck)
    }

    /// Whether someone acknowledged it.
    pub fn is_acknowledged(self) -> bool {
        matches!(self, AlarmState::ActiveAck | AlarmState::ClearedAck)
    }

    fn acknowledged(self) -> Self {
        if self.is_active() {
            AlarmState::ActiveAck
        } else {
            AlarmState::ClearedAck
        }
    }

    fn cleared(self) -> Self {
        if self.is_acknowledged() {
            AlarmState::ClearedAck
        } else {
            AlarmState::ClearedUnack
        }
    }
}

/// One alarm record. Times are ms since the epoch: sample source time for rule and anomaly
/// alarms, the caller's `now_ms` for offline alarms and acknowledgements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alarm {
    /// `{lab}/{machine}/{rule}/{n}`, `n` counting the machine's alarms from 1.
    pub id: String,
    /// The lab.
    pub lab: String,
    /// The machine.
    pub machine: String,
    /// The rule id, or `offline` / `anomaly`.
    pub rule: String,
    /// How urgent.
    pub severity: Severity,
    /// For operators.
    pub message: String,
    /// The metric that crossed (for anomaly alarms: the highest-scoring one).
    pub metric: Option<String>,
    /// The value when raised: the metric's value, its rate per minute, or the anomaly score.
    pub value: Option<f64>,
    /// The metric's own value when raised (for a level rule the same as `value`; for a rate
    /// rule the value, not the rate; for an anomaly its smoothed level, which the score judged).
    /// Absent in records written before it existed.
    #[serde(default)]
    pub metric_value: Option<f64>,
    /// The limit it crossed.
    pub threshold: Option<f64>,
    /// Where it is in its life.
    pub state: AlarmState,
    /// When the condition started holding.
    pub condition_since: u64,
    /// When it was raised (the condition had held for the rule's `for_s`).
    pub raised_at: u64,
    /// When it was acknowledged.
    pub acknowledged_at: Option<u64>,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// When it was cleared: its condition had been gone for the rule's `clear_for_s`.
    pub cleared_at: Option<u64>,
}

/// What happened to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlarmEventKind {
    /// A new alarm.
    Raised,
    /// Its condition went away.
    Cleared,
    /// Someone acknowledged it.
    Acknowledged,
}

/// A change of an alarm, with the record after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlarmEvent {
    /// What happened.
    pub kind: AlarmEventKind,
    /// The alarm after it happened.
    pub alarm: Alarm,
}

/// Why an alarm operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlarmError {
    /// No alarm has this id (or it was pruned). The API answers 404.
    #[error("no alarm {id}")]
    UnknownAlarm {
        /// The id asked for.
        id: String,
    },
    /// The alarm was acknowledged before. The API answers 409.
    #[error("alarm {id} was already acknowledged")]
    AlreadyAcknowledged {
        /// The alarm.
        id: String,
    },
    /// A snapshot written by a different format version.
    #[error("alarm snapshot version {version} is not supported")]
    UnsupportedSnapshot {
        /// Its version.
        version: u32,
    },
}

/// Which alarms [`AlarmEngine::list`] returns; the default is all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmFilter {
    /// Only this lab's.
    pub lab: Option<String>,
    /// Only this machine's (combine with `lab`: machine ids are unique per lab).
    pub machine: Option<String>,
    /// Only alarms whose condition still holds.
    pub active_only: bool,
    /// Only alarms nobody has acknowledged yet (active or cleared).
    pub unacknowledged_only: bool,
}

impl AlarmFilter {
    /// Whether `alarm` passes.
    pub fn matches(&self, alarm: &Alarm) -> bool {
        self.lab.as_ref().is_none_or(|lab| *lab == alarm.lab)
            && self
                .machine
                .as_ref()
                .is_none_or(|machine| *machine == alarm.machine)
            && (!self.active_only || alarm.state.is_active())
            && (!self.unacknowledged_only || !alarm.state.is_acknowledged())
    }
}
