//! Alarm rules of a machine kind, as written in its catalogue file.
//!
//! ```toml
//! [[alarms]]
//! id = "spindle-overload"
//! metric = "spindle.power_w"
//! above = 4500.0
//! hysteresis = 200.0
//! for_s = 5.0
//! severity = "major"
//! message = "Spindle power above 4.5 kW"
//!
//! [[alarms]]
//! id = "coolant-heating-fast"
//! metric = "coolant.temp_c"
//! rate_above_per_min = 2.0
//! severity = "minor"
//!
//! [anomaly]
//! metrics = ["vibration.rms_g", "spindle.power_w"]
//! alpha = 0.02
//! threshold = 4.0
//! warmup_samples = 50
//! state_metric = "state.code"
//! states = ["running"]
//! settle_s = 5.0
//! ```
//!
//! A rule watches either the level of a metric (`above` and/or `below`) or its rate of change
//! (`rate_above_per_min` and/or `rate_below_per_min`), never both: the two have different units,
//! and `hysteresis` is in the unit of what the rule watches. With both bounds the rule fires
//! outside the band `below..above`.
//!
//! A level rule raises once its condition has held for `for_s` and clears once the value has
//! been back inside by the hysteresis for `clear_for_s` (default: `for_s`); see
//! [`AlarmRule::clear_for_s`] for why both. The anomaly section reads `state_metric` and scores
//! only in `states`, each against its own baseline, after `settle_s`; see [`super::anomaly`].
//!
//! Every way in validates: deserializing [`KindAlarms`] directly, or building it with
//! [`KindAlarms::new`] from the `alarms` and `anomaly` keys of a larger catalogue struct (serde's
//! `flatten` does not mix with `deny_unknown_fields`, so the catalogue owns those two keys).

use std::collections::BTreeSet;

use protocol::MetricName;
use serde::{Deserialize, Serialize};

/// Rule ids the engine uses for its built-in alarms.
pub const RESERVED_RULE_IDS: [&str; 2] = [OFFLINE_RULE, ANOMALY_RULE];
/// The built-in alarm raised while a machine is offline.
pub const OFFLINE_RULE: &str = "offline";
/// The built-in alarm raised while the anomaly score is high.
pub const ANOMALY_RULE: &str = "anomaly";

/// The states an anomaly section may list, as the `state.code` metric names them.
pub const STATE_NAMES: [&str; 5] = ["off", "idle", "running", "warming", "fault"];

/// Rate rules look this far back unless they say otherwise: long enough that sample-to-sample
/// noise does not read as a trend.
pub const DEFAULT_RATE_WINDOW_S: f64 = 60.0;

const RULE_ID_MAX: usize = 48;

/// How urgent an alarm is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record.
    Info,
    /// Look at it today.
    Minor,
    /// Look at it now.
    Major,
    /// Stop the machine.
    Critical,
}

impl Severity {
    /// The lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

/// A rule's configuration was rejected; `key` names the offending setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct RuleError {
    /// Path of the setting, e.g. `alarms[1].hysteresis`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl RuleError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// One threshold or rate-of-change rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmRule {
    /// Unique within the kind, `[a-z0-9-]{1,48}`; part of every alarm id it raises.
    pub id: String,
    /// The watched metric.
    pub metric: MetricName,
    /// Fires while the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fires while the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Fires while the value rises faster than this, in units per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_above_per_min: Option<f64>,
    /// Fires while the value changes slower than this (e.g. `-5.0`: falls faster than 5/min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_below_per_min: Option<f64>,
    /// Rate rules: the slope is fitted over this many seconds of samples (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_window_s: Option<f64>,
    /// An active alarm clears only once the value is this far back inside the limit.
    #[serde(default)]
    pub hysteresis: f64,
    /// The condition must hold this long, in source time, before the alarm is raised.
    #[serde(default)]
    pub for_s: f64,
    /// An active alarm clears only once the value has stayed back inside (past the hysteresis)
    /// this long; default `for_s`.
    ///
    /// Hysteresis alone does not stop chatter when the signal itself swings across the whole
    /// band: a mill with a worn bearing is above its vibration limit while roughing and below
    /// it while finishing or loading, every 45 s part cycle. Requiring the absence to last (as
    /// the presence had to, hence the default) keeps one alarm for the whole episode; a few
    /// seconds of quiet in it are not a repair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_for_s: Option<f64>,
    /// How urgent.
    pub severity: Severity,
    /// Shown to operators; a description of the condition when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl AlarmRule {
    /// Whether the rule watches the rate of change rather than the level.
    pub fn is_rate(&self) -> bool {
        self.rate_above_per_min.is_some() || self.rate_below_per_min.is_some()
    }

    /// How long the condition must be gone before the alarm clears, in milliseconds.
    pub fn clear_hold_ms(&self) -> u64 {
        secs_to_ms(self.clear_for_s.unwrap_or(self.for_s))
    }

    /// The rate window in milliseconds.
    pub fn rate_window_ms(&self) -> u64 {
        secs_to_ms(self.rate_window_s.unwrap_or(DEFAULT_RATE_WINDOW_S))
    }

    /// The configured message, or one describing the condition.
    pub fn message(&self) -> String {
        if let Some(message) = &self.message {
            return message.clone();
        }
        let (what, above, below, unit) = if self.is_rate() {
            (
                "rate of change",
                self.rate_above_per_min,
                self.rate_below_per_min,
                "/min",
            )
        } else {
            ("", self.above, self.below, "")
        };
        let metric = if what.is_empty() {
            self.metric.to_string()
        } else {
            format!("{} {what}", self.metric)
        };
        match (above, below) {
            (Some(above), Some(below)) => format!("{metric} outside {below}..{above}{unit}"),
            (Some(above), None) => format!("{metric} above {above}{unit}"),
            (None, Some(below)) => format!("{metric} below {below}{unit}"),
            (None, None) => metric,
        }
    }

    fn validate(&self, at: &str) -> Result<(), RuleError> {
        let key = |field: &str| format!("{at}.{field}");
        validate_rule_id(&self.id).map_err(|reason| RuleError::new(key("id"), reason))?;
        let level = self.above.is_some() || self.below.is_some();
        if !level && !self.is_rate() {
            return Err(RuleError::new(
                at,
                "needs a condition: above, below, rate_above_per_min or rate_below_per_min",
            ));
        }
        if level && self.is_rate() {
            let field = if self.rate_above_per_min.is_some() {
                "rate_above_per_min"
            } else {
                "rate_below_per_min"
            };
            return Err(RuleError::new(
                key(field),
                "a rule watches either the level (above/below) or the rate, not both; write two rules",
            ));
        }
        for (field, value) in [
            ("above", self.above),
            ("below", self.below),
            ("rate_above_per_min", self.rate_above_per_min),
            ("rate_below_per_min", self.rate_below_per_min),
        ] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(RuleError::new(key(field), "must be a finite number"));
            }
        }
        non_negative(self.hysteresis, || key("hysteresis"))?;
        non_negative(self.for_s, || key("for_s"))?;
        if let Some(clear) = self.clear_for_s {
            non_negative(clear, || key("clear_for_s"))?;
        }
        if let Some(window) = self.rate_window_s {
            if !self.is_rate() {
                return Err(RuleError::new(
                    key("rate_window_s"),
                    "only applies to rate rules",
                ));
            }
            if !(window.is_finite() && window > 0.0) {
                return Err(RuleError::new(key("rate_window_s"), "must be > 0"));
            }
        }
        let (upper, lower, upper_key, lower_key) = if self.is_rate() {
            (
                self.rate_above_per_min,
                self.rate_below_per_min,
                "rate_above_per_min",
                "rate_below_per_min",
            )
        } else {
            (self.above, self.below, "above", "below")
        };
        if let (Some(upper), Some(lower)) = (upper, lower) {
            if lower >= upper {
                return Err(RuleError::new(
                    key(lower_key),
                    format!("must be less than {upper_key} ({upper})"),
                ));
            }
            // Otherwise the clear bands of the two limits overlap and the alarm never clears.
            if 2.0 * self.hysteresis >= upper - lower {
                return Err(RuleError::new(
                    key("hysteresis"),
                    format!("must be less than half the gap between {lower_key} and {upper_key}"),
                ));
            }
        }
        if self.message.as_ref().is_some_and(|m| m.trim().is_empty()) {
            return Err(RuleError::new(key("message"), "must not be empty"));
        }
        Ok(())
    }
}

/// The streaming anomaly score of a kind and the alarm on it.
///
/// See [`super::anomaly`] for how the score is computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Metrics scored; the machine's score is the highest of theirs.
    pub metrics: Vec<MetricName>,
    /// Smoothing of the current level of each metric (EWMA weight of a new sample).
    pub alpha: f64,
    /// Smoothing of the baseline the level is compared with; default `alpha / 50`, so a drift
    /// over minutes stands out against a baseline that adapts over hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_alpha: Option<f64>,
    /// A score above this raises the `anomaly` alarm.
    pub threshold: f64,
    /// The alarm clears once the score is below `threshold - hysteresis`.
    #[serde(default)]
    pub hysteresis: f64,
    /// The score must stay above the threshold this long before the alarm is raised.
    #[serde(default)]
    pub for_s: f64,
    /// The alarm clears once the score has stayed below `threshold - hysteresis` this long;
    /// default `for_s` (see [`AlarmRule::clear_for_s`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_for_s: Option<f64>,
    /// Samples per metric that only build the baseline; no score before.
    pub warmup_samples: u32,
    /// The metric carrying the machine's operating state as a `state.code` (0 off, 1 idle,
    /// 2 running, 3 warming, 4 fault). With it the score learns and scores only in `states`,
    /// with a baseline per state: a mill that is off or warming up is not scored against what
    /// it does while cutting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_metric: Option<MetricName>,
    /// The states (`off`, `idle`, `running`, `warming`, `fault`) in which the score learns and
    /// scores; needs `state_metric`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<String>,
    /// After the machine starts — its first sample, back online, or on again after `off` or
    /// `fault` — this long in source time neither learns nor scores, so a start-up transient
    /// (a duty-cycle average climbing from 0, a warm-up the state code does not tell from
    /// work) is neither learned as normal nor scored as abnormal. Changes between working
    /// states need none: each state in `states` has its own baseline.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub settle_s: f64,
    /// Severity of the `anomaly` alarm.
    #[serde(default = "default_anomaly_severity")]
    pub severity: Severity,
    /// Shown to operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn default_anomaly_severity() -> Severity {
    Severity::Minor
}

/// The default ratio of level smoothing to baseline smoothing.
pub const BASELINE_ALPHA_DIVISOR: f64 = 50.0;

impl AnomalyConfig {
    /// The baseline smoothing in effect.
    pub fn baseline_alpha(&self) -> f64 {
        self.baseline_alpha
            .unwrap_or(self.alpha / BASELINE_ALPHA_DIVISOR)
    }

    /// How long the score must be low before the alarm clears, in milliseconds.
    pub fn clear_hold_ms(&self) -> u64 {
        secs_to_ms(self.clear_for_s.unwrap_or(self.for_s))
    }

    /// The settling time in milliseconds.
    pub fn settle_ms(&self) -> u64 {
        secs_to_ms(self.settle_s)
    }

    /// Whether the score learns and scores in state `name` (always, without a state metric).
    pub fn scores_in(&self, name: &str) -> bool {
        self.state_metric.is_none() || self.states.iter().any(|s| s == name)
    }

    /// The configured message, or a description of the condition.
    pub fn message(&self) -> String {
        self.message
            .clone()
            .unwrap_or_else(|| format!("Anomaly score above {}", self.threshold))
    }

    fn validate(&self) -> Result<(), RuleError> {
        if self.metrics.is_empty() {
            return Err(RuleError::new("anomaly.metrics", "must list a metric"));
        }
        let mut seen = BTreeSet::new();
        for (i, metric) in self.metrics.iter().enumerate() {
            if !seen.insert(metric.as_str()) {
                return Err(RuleError::new(
                    format!("anomaly.metrics[{i}]"),
                    format!("duplicate metric {metric}"),
                ));
            }
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(RuleError::new("anomaly.alpha", "must be in (0, 1]"));
        }
        if let Some(baseline) = self.baseline_alpha
            && !(baseline.is_finite() && baseline > 0.0 && baseline <= self.alpha)
        {
            return Err(RuleError::new(
                "anomaly.baseline_alpha",
                "must be in (0, alpha]",
            ));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(RuleError::new("anomaly.threshold", "must be > 0"));
        }
        non_negative(self.hysteresis, || "anomaly.hysteresis".into())?;
        if self.hysteresis >= self.threshold {
            return Err(RuleError::new(
                "anomaly.hysteresis",
                "must be less than threshold",
            ));
        }
        non_negative(self.for_s, || "anomaly.for_s".into())?;
        if let Some(clear) = self.clear_for_s {
            non_negative(clear, || "anomaly.clear_for_s".into())?;
        }
        non_negative(self.settle_s, || "anomaly.settle_s".into())?;
        match &self.state_metric {
            Some(state) if self.metrics.contains(state) => {
                return Err(RuleError::new(
                    "anomaly.state_metric",
                    format!("{state} is a scored metric; the state is what the score is split by"),
                ));
            }
            Some(_) if self.states.is_empty() => {
                return Err(RuleError::new(
                    "anomaly.states",
                    "must list a state to score in when state_metric is set",
                ));
            }
            None if !self.states.is_empty() => {
                return Err(RuleError::new(
                    "anomaly.states",
                    "needs state_metric (the metric carrying the state code)",
                ));
            }
            _ => {}
        }
        let mut seen = BTreeSet::new();
        for (i, state) in self.states.iter().enumerate() {
            if !STATE_NAMES.contains(&state.as_str()) {
                return Err(RuleError::new(
                    format!("anomaly.states[{i}]"),
                    format!("unknown state {state:?}; known: {}", STATE_NAMES.join(", ")),
                ));
            }
            if !seen.insert(state.as_str()) {
                return Err(RuleError::new(
                    format!("anomaly.states[{i}]"),
                    format!("duplicate state {state}"),
                ));
            }
        }
        // A variance needs at least two samples.
        if self.warmup_samples < 2 {
            return Err(RuleError::new("anomaly.warmup_samples", "must be >= 2"));
        }
        if self.message.as_ref().is_some_and(|m| m.trim().is_empty()) {
            return Err(RuleError::new("anomaly.message", "must not be empty"));
        }
        Ok(())
    }
}

/// The alarm configuration of one machine kind, validated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawKindAlarms")]
pub struct KindAlarms {
    /// Threshold and rate rules.
    pub alarms: Vec<AlarmRule>,
    /// The anomaly score, if the kind has one.
    pub anomaly: Option<AnomalyConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKindAlarms {
    #[serde(default)]
    alarms: Vec<AlarmRule>,
    #[serde(default)]
    anomaly: Option<AnomalyConfig>,
}

impl TryFrom<RawKindAlarms> for KindAlarms {
    type Error = RuleError;
    fn try_from(raw: RawKindAlarms) -> Result<Self, RuleError> {
        KindAlarms::new(raw.alarms, raw.anomaly)
    }
}

impl KindAlarms {
    /// Validates and builds the configuration.
    pub fn new(alarms: Vec<AlarmRule>, anomaly: Option<AnomalyConfig>) -> Result<Self, RuleError> {
        let kind = Self { alarms, anomaly };
        kind.validate()?;
        Ok(kind)
    }

    /// Checks every rule; the error names the first offending key.
    pub fn validate(&self) -> Result<(), RuleError> {
        let mut ids = BTreeSet::new();
        for (i, rule) in self.alarms.iter().enumerate() {
            let at = format!("alarms[{i}]");
            rule.validate(&at)?;
            if !ids.insert(rule.id.as_str()) {
                return Err(RuleError::new(
                    format!("{at}.id"),
                    format!("duplicate id {:?}", rule.id),
                ));
            }
        }
        if let Some(anomaly) = &self.anomaly {
            anomaly.validate()?;
        }
        Ok(())
    }
}

fn validate_rule_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > RULE_ID_MAX {
        return Err(format!("must be 1 to {RULE_ID_MAX} characters"));
    }
    if let Some(ch) = id
        .chars()
        .find(|ch| !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || *ch == '-'))
    {
        return Err(format!("{ch:?} is not allowed (a-z, 0-9 and '-')"));
    }
    if RESERVED_RULE_IDS.contains(&id) {
        return Err(format!("{id:?} is reserved for the built-in alarm"));
    }
    Ok(())
}

fn non_negative(value: f64, key: impl Fn() -> String) -> Result<(), RuleError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(RuleError::new(key(), "must be >= 0"))
    }
}

/// Seconds from configuration to milliseconds; validated values are finite and non-negative,
/// and the float-to-int cast saturates on anything else.
pub(crate) fn secs_to_ms(secs: f64) -> u64 {
    (secs * 1000.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [[alarms]]
        id = "spindle-overload"
        metric = "spindle.power_w"
        above = 4500.0
        hysteresis = 200.0
        for_s = 5.0
        severity = "major"
        message = "Spindle power above 4.5 kW"

        [[alarms]]
        id = "coolant-heating-fast"
        metric = "coolant.temp_c"
        rate_above_per_min = 2.0
        severity = "minor"

        [anomaly]
        metrics = ["vibration.rms_g", "spindle.power_w"]
        alpha = 0.02
        threshold = 4.0
        warmup_samples = 50
        state_metric = "state.code"
        states = ["running"]
        settle_s = 5.0
    "#;

    fn parse(text: &str) -> Result<KindAlarms, String> {
        toml::from_str::<KindAlarms>(text).map_err(|e| e.to_string())
    }

    /// The example with `line` appended to the second rule.
    fn with_second_rule(line: &str) -> String {
        EXAMPLE.replace(
            "rate_above_per_min = 2.0",
            &format!("rate_above_per_min = 2.0\n{line}"),
        )
    }

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let kind = parse(EXAMPLE).expect("valid");
        assert_eq!(kind.alarms.len(), 2);
        let overload = &kind.alarms[0];
        assert_eq!(overload.metric.as_str(), "spindle.power_w");
        assert_eq!(
            (overload.above, overload.hysteresis, overload.for_s),
            (Some(4500.0), 200.0, 5.0)
        );
        assert_eq!(overload.severity, Severity::Major);
        let heating = &kind.alarms[1];
        assert!(heating.is_rate());
        assert_eq!(heating.rate_window_ms(), 60_000);
        assert_eq!((heating.hysteresis, heating.for_s), (0.0, 0.0));
        assert_eq!(
            (overload.clear_hold_ms(), heating.clear_hold_ms()),
            (5000, 0)
        );
        assert_eq!(
            heating.message(),
            "coolant.temp_c rate of change above 2/min"
        );
        let anomaly = kind.anomaly.expect("anomaly section");
        assert_eq!(anomaly.baseline_alpha(), 0.02 / 50.0);
        assert_eq!(anomaly.severity, Severity::Minor);
        assert_eq!((anomaly.settle_ms(), anomaly.clear_hold_ms()), (5000, 0));
        assert!(anomaly.scores_in("running") && !anomaly.scores_in("off"));
    }

    #[test]
    fn the_module_doc_example_is_the_tested_one() {
        let doc: String = include_str!("rules.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        assert_eq!(parse(&doc).expect("valid"), parse(EXAMPLE).expect("valid"));
    }

    #[test]
    fn errors_name_the_offending_key() {
        let cases = [
            (
                with_second_rule("hysteresis = -1.0"),
                "alarms[1].hysteresis: must be >= 0",
            ),
            (
                with_second_rule("for_s = -0.5"),
                "alarms[1].for_s: must be >= 0",
            ),
            (
                with_second_rule("clear_for_s = -1.0"),
                "alarms[1].clear_for_s: must be >= 0",
            ),
            (
                EXAMPLE.replace("settle_s = 5.0", "settle_s = -5.0"),
                "anomaly.settle_s: must be >= 0",
            ),
            (
                EXAMPLE.replace("settle_s = 5.0", "settle_s = 5.0\nclear_for_s = inf"),
                "anomaly.clear_for_s: must be >= 0",
            ),
            (
                EXAMPLE.replace("[\"running\"]", "[\"running\", \"runing\"]"),
                "anomaly.states[1]: unknown state \"runing\"; known: off, idle, running",
            ),
            (
                EXAMPLE.replace("[\"running\"]", "[\"idle\", \"idle\"]"),
                "anomaly.states[1]: duplicate state idle",
            ),
            (
                EXAMPLE.replace("[\"running\"]", "[]"),
                "anomaly.states: must list a state",
            ),
            (
                EXAMPLE.replace("state_metric = \"state.code\"", ""),
                "anomaly.states: needs state_metric",
            ),
            (
                EXAMPLE.replace("\"state.code\"", "\"vibration.rms_g\""),
                "anomaly.state_metric: vibration.rms_g is a scored metric",
            ),
            (
                with_second_rule("rate_window_s = 0.0"),
                "alarms[1].rate_window_s: must be > 0",
            ),
            (
                with_second_rule("above = 30.0"),
                "alarms[1].rate_above_per_min: a rule watches either the level",
            ),
            (
                EXAMPLE.replace("rate_above_per_min = 2.0", ""),
                "alarms[1]: needs a condition",
            ),
            (
                EXAMPLE.replace("coolant-heating-fast", "spindle-overload"),
                "alarms[1].id: duplicate id \"spindle-overload\"",
            ),
            (
                EXAMPLE.replace("coolant-heating-fast", "Coolant"),
                "alarms[1].id: 'C' is not allowed",
            ),
            (
                EXAMPLE.replace("coolant-heating-fast", "offline"),
                "alarms[1].id: \"offline\" is reserved",
            ),
            (
                EXAMPLE.replace("above = 4500.0", "above = 4500.0\nbelow = 4600.0"),
                "alarms[0].below: must be less than above (4500)",
            ),
            (
                EXAMPLE.replace("above = 4500.0", "above = 4500.0\nbelow = 4200.0"),
                "alarms[0].hysteresis: must be less than half the gap",
            ),
            (with_second_rule("above_x = 1.0"), "unknown field `above_x`"),
            (
                EXAMPLE.replace("alpha = 0.02", "alpha = 1.5"),
                "anomaly.alpha: must be in (0, 1]",
            ),
            (
                EXAMPLE.replace("warmup_samples = 50", "warmup_samples = 1"),
                "anomaly.warmup_samples: must be >= 2",
            ),
            (
                EXAMPLE.replace("threshold = 4.0", "threshold = 4.0\nhysteresis = 4.0"),
                "anomaly.hysteresis: must be less than threshold",
            ),
            (
                EXAMPLE.replace("\"spindle.power_w\"]", "\"vibration.rms_g\"]"),
                "anomaly.metrics[1]: duplicate metric vibration.rms_g",
            ),
            (
                format!("{EXAMPLE}\nsirens = true"),
                "unknown field `sirens`",
            ),
            (
                EXAMPLE.replace("metric = \"coolant.temp_c\"", "metric = \"coolant\""),
                "coolant",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).expect_err(expected);
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn built_from_catalogue_parts_validates_too() {
        let kind = parse(EXAMPLE).expect("valid");
        let mut rules = kind.alarms.clone();
        rules[0].hysteresis = f64::NAN;
        let error = KindAlarms::new(rules, kind.anomaly.clone()).expect_err("NaN");
        assert_eq!(error.key, "alarms[0].hysteresis");
        assert_eq!(error.to_string(), "alarms[0].hysteresis: must be >= 0");
        assert_eq!(
            KindAlarms::new(kind.alarms.clone(), kind.anomaly.clone()),
            Ok(kind)
        );
    }

    #[test]
    fn a_kind_without_alarms_is_valid() {
        assert_eq!(parse("").expect("empty"), KindAlarms::default());
    }
}
