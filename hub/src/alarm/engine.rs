//! Per-machine alarm state and the map of it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use protocol::{LabId, MachineId, MetricName};
use serde::{Deserialize, Serialize};

use super::anomaly::AnomalyState;
use super::rules::{ANOMALY_RULE, AlarmRule, AnomalyConfig, KindAlarms, OFFLINE_RULE, secs_to_ms};
use super::{Alarm, AlarmError, AlarmEvent, AlarmEventKind, AlarmFilter, AlarmState, Severity};
use crate::twin::TwinKey;

/// The version of [`EngineSnapshot`] this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A rate window keeps about this many points, however fast the samples come.
const RATE_WINDOW_POINTS: u64 = 120;

/// What one sample did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleOutcome {
    /// The machine's anomaly score after the sample, to store as twin property `anomaly.score`;
    /// `None` when its kind has no anomaly section or no scored metric is warmed up yet.
    pub anomaly_score: Option<f64>,
    /// Alarms raised and cleared.
    pub events: Vec<AlarmEvent>,
    /// The sample was older than the newest seen for the machine and was ignored (count it).
    pub ignored_stale: bool,
}

/// How long closed alarms are kept by [`MachineAlarms::prune`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Acknowledged and cleared alarms older than this (since their last change) are dropped.
    pub max_age_ms: u64,
    /// At most this many cleared alarms (acknowledged or not) are kept per machine, newest
    /// first, so a flapping machine nobody watches cannot grow without bound.
    pub max_cleared_per_machine: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age_ms: 7 * 24 * 3600 * 1000,
            max_cleared_per_machine: 1000,
        }
    }
}

/// How many alarms [`MachineAlarms::prune`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Closed (cleared and acknowledged) alarms.
    pub acknowledged: usize,
    /// Cleared alarms nobody acknowledged, dropped over the count limit: log these.
    pub unacknowledged: usize,
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, other: Self) {
        self.acknowledged += other.acknowledged;
        self.unacknowledged += other.unacknowledged;
    }
}

/// Debounce state shared by rules, the anomaly alarm and the offline alarm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Trigger {
    /// Since when the raise condition has held, while waiting out `for_s`.
    pending_since: Option<u64>,
    /// Since when the condition has been gone from an active alarm, while waiting out
    /// `clear_for_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clearing_since: Option<u64>,
    /// The id of the alarm this trigger raised and has not cleared.
    active: Option<String>,
}

/// Where a reading stands relative to a rule's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reading {
    /// Past a limit; carries the limit crossed.
    Raise(f64),
    /// Back inside the limits but not past the hysteresis: neither raises nor clears.
    Band,
    /// Inside the limits by at least the hysteresis.
    Clear,
}

fn read(x: f64, above: Option<f64>, below: Option<f64>, hysteresis: f64) -> Reading {
    if let Some(above) = above
        && x > above
    {
        return Reading::Raise(above);
    }
    if let Some(below) = below
        && x < below
    {
        return Reading::Raise(below);
    }
    let clear = above.is_none_or(|above| x <= above - hysteresis)
        && below.is_none_or(|below| x >= below + hysteresis);
    if clear { Reading::Clear } else { Reading::Band }
}

enum Step {
    Nothing,
    Raise { since: u64, threshold: f64 },
    Clear(String),
}

impl Trigger {
    fn step(&mut self, reading: Reading, t: u64, hold_ms: u64, clear_ms: u64) -> Step {
        if self.active.is_some() {
            if reading != Reading::Clear {
                self.clearing_since = None;
                return Step::Nothing;
            }
            let since = *self.clearing_since.get_or_insert(t);
            if t.saturating_sub(since) >= clear_ms
                && let Some(id) = self.active.take()
            {
                self.clearing_since = None;
                return Step::Clear(id);
            }
            return Step::Nothing;
        }
        let Reading::Raise(threshold) = reading else {
            self.pending_since = None;
            return Step::Nothing;
        };
        let since = *self.pending_since.get_or_insert(t);
        if t.saturating_sub(since) >= hold_ms {
            self.pending_since = None;
            Step::Raise { since, threshold }
        } else {
            Step::Nothing
        }
    }

    /// Nobody saw the condition in between (offline, or a new rule): timers start over.
    fn restart_timers(&mut self) {
        self.pending_since = None;
        self.clearing_since = None;
    }
}

/// Recent samples of a rate rule's metric; the rate is their least-squares slope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct RateWindow {
    points: VecDeque<(u64, f64)>,
}

impl RateWindow {
    fn push(&mut self, t: u64, x: f64, window_ms: u64) {
        // Thinned to a bounded number of points: the newest sample always replaces the last
        // point when that one is closer than the spacing to the point before it.
        let spacing = window_ms / RATE_WINDOW_POINTS;
        let len = self.points.len();
        if len >= 2
            && let Some(&(before, _)) = self.points.get(len - 2)
            && t.saturating_sub(before) < spacing
        {
            self.points.pop_back();
        }
        self.points.push_back((t, x));
        while self
            .points
            .front()
            .is_some_and(|&(first, _)| first.saturating_add(window_ms) < t)
        {
            self.points.pop_front();
        }
    }

    /// Units per minute, once the points span three quarters of the window: fewer would turn
    /// the noise of the first samples into a steep slope.
    fn rate_per_min(&self, window_ms: u64) -> Option<f64> {
        let (&(first, _), &(last, _)) = (self.points.front()?, self.points.back()?);
        if last.saturating_sub(first) < window_ms.saturating_mul(3) / 4 || self.points.len() < 2 {
            return None;
        }
        let n = self.points.len() as f64;
        let minutes = |t: u64| t.saturating_sub(first) as f64 / 60_000.0;
        let mean_t = self.points.iter().map(|&(t, _)| minutes(t)).sum::<f64>() / n;
        let mean_x = self.points.iter().map(|&(_, x)| x).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for &(t, x) in &self.points {
            let dt = minutes(t) - mean_t;
            sxy += dt * (x - mean_x);
            sxx += dt * dt;
        }
        let slope = sxy / sxx;
        slope.is_finite().then_some(slope)
    }

    fn clear(&mut self) {
        self.points.clear();
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RuleState {
    rule: AlarmRule,
    trigger: Trigger,
    window: RateWindow,
}

/// Everything about one machine that a snapshot keeps. The rules are copies, so a machine
/// restored before the catalogue is loaded goes on evaluating what it evaluated before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MachineState {
    log: AlarmLog,
    /// The newest sample timestamp seen.
    last_timestamp: Option<u64>,
    rules: BTreeMap<String, RuleState>,
    anomaly_config: Option<AnomalyConfig>,
    anomaly: AnomalyState,
    anomaly_trigger: Trigger,
    offline: Trigger,
    /// Active alarms whose rule was removed; cleared at the next event with a time.
    orphans: Vec<String>,
}

/// A machine's alarm records and their numbering; apart from the rule state so that raising
/// borrows only this while the rules are iterated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AlarmLog {
    lab: LabId,
    machine: MachineId,
    /// The number of the last alarm raised; alarm ids end in it.
    last_number: u64,
    /// In the order raised.
    alarms: Vec<Alarm>,
}

impl AlarmLog {
    fn raise(&mut self, raise: Raise<'_>) -> AlarmEvent {
        self.last_number = self.last_number.saturating_add(1);
        let alarm = Alarm {
            id: format!(
                "{}/{}/{}/{}",
                self.lab, self.machine, raise.rule, self.last_number
            ),
            lab: self.lab.to_string(),
            machine: self.machine.to_string(),
            rule: raise.rule.to_owned(),
            severity: raise.severity,
            message: raise.message,
            metric: raise.metric,
            // Rules built without validation could carry NaN, which JSON cannot hold.
            value: raise.value.filter(|v| v.is_finite()),
            metric_value: raise.metric_value.filter(|v| v.is_finite()),
            threshold: raise.threshold.filter(|v| v.is_finite()),
            state: AlarmState::ActiveUnack,
            condition_since: raise.since,
            raised_at: raise.at,
            acknowledged_at: None,
            acknowledged_by: None,
            cleared_at: None,
        };
        self.alarms.push(alarm.clone());
        AlarmEvent {
            kind: AlarmEventKind::Raised,
            alarm,
        }
    }

    fn clear(&mut self, id: &str, at: u64) -> Option<AlarmEvent> {
        let alarm = self
            .alarms
            .iter_mut()
            .find(|alarm| alarm.id == id && alarm.state.is_active())?;
        alarm.state = alarm.state.cleared();
        alarm.cleared_at = Some(at);
        Some(AlarmEvent {
            kind: AlarmEventKind::Cleared,
            alarm: alarm.clone(),
        })
    }
}

/// One machine's rules, their state and its alarms. See the [module docs](super#locking).
#[derive(Debug, Clone, PartialEq)]
pub struct MachineAlarms {
    state: MachineState,
    /// Whether `set_rules` was called, as opposed to rules carried over from a snapshot.
    configured: bool,
}

/// A serializable copy of one machine's alarm state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MachineSnapshot(MachineState);

impl MachineSnapshot {
    /// The machine.
    pub fn key(&self) -> TwinKey {
        TwinKey {
            lab: self.0.log.lab.clone(),
            machine: self.0.log.machine.clone(),
        }
    }
}

/// Details of an alarm about to be raised.
struct Raise<'a> {
    rule: &'a str,
    severity: Severity,
    message: String,
    metric: Option<String>,
    value: Option<f64>,
    metric_value: Option<f64>,
    threshold: Option<f64>,
    since: u64,
    at: u64,
}

/// A value for a message: four significant digits at most, no trailing zeros.
fn number(x: f64) -> String {
    let decimals = if x == 0.0 || !x.is_finite() {
        0
    } else {
        (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize
    };
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

impl MachineAlarms {
    /// A machine with no rules and no alarms.
    pub fn new(key: &TwinKey) -> Self {
        Self {
            state: MachineState {
                log: AlarmLog {
                    lab: key.lab.clone(),
                    machine: key.machine.clone(),
                    last_number: 0,
                    alarms: Vec::new(),
                },
                last_timestamp: None,
                rules: BTreeMap::new(),
                anomaly_config: None,
                anomaly: AnomalyState::default(),
                anomaly_trigger: Trigger::default(),
                offline: Trigger::default(),
                orphans: Vec::new(),
            },
            configured: false,
        }
    }

    /// The machine.
    pub fn key(&self) -> TwinKey {
        TwinKey {
            lab: self.state.log.lab.clone(),
            machine: self.state.log.machine.clone(),
        }
    }

    /// The rules in effect.
    pub fn config(&self) -> KindAlarms {
        KindAlarms {
            alarms: self.state.rules.values().map(|s| s.rule.clone()).collect(),
            anomaly: self.state.anomaly_config.clone(),
        }
    }

    /// Sets the rules of the machine's kind (at birth, or when the catalogue changes).
    ///
    /// A rule that is unchanged keeps its state, so a rebirth changes nothing. A changed rule
    /// keeps its active alarm, which clears when a sample is inside the new limits, but waits
    /// out `for_s` again. The active alarm of a removed rule clears at the next sample or
    /// connectivity change (this call has no time). The anomaly baseline of metrics still scored
    /// is kept.
    pub fn set_rules(&mut self, kind: &KindAlarms) {
        self.configured = true;
        let mut old = std::mem::take(&mut self.state.rules);
        for rule in &kind.alarms {
            let state = match old.remove(&rule.id) {
                Some(state) if state.rule == *rule => state,
                Some(state) => RuleState {
                    rule: rule.clone(),
                    trigger: Trigger {
                        active: state.trigger.active,
                        ..Trigger::default()
                    },
                    window: RateWindow::default(),
                },
                None => RuleState {
                    rule: rule.clone(),
                    trigger: Trigger::default(),
                    window: RateWindow::default(),
                },
            };
            self.state.rules.insert(rule.id.clone(), state);
        }
        let removed = old.into_values().filter_map(|state| state.trigger.active);
        self.state.orphans.extend(removed);
        if kind.anomaly != self.state.anomaly_config {
            self.state.anomaly_trigger.restart_timers();
        }
        match &kind.anomaly {
            Some(config) => self.state.anomaly.retain(config),
            None => {
                self.state.anomaly = AnomalyState::default();
                if let Some(id) = self.state.anomaly_trigger.active.take() {
                    self.state.orphans.push(id);
                }
            }
        }
        self.state.anomaly_config = kind.anomaly.clone();
    }

    /// Evaluates one live sample: `values` are the metrics it carries, `timestamp_ms` its
    /// source time. Rules whose metric is absent or not finite in the sample keep their state.
    pub fn on_sample(&mut self, timestamp_ms: u64, values: &[(MetricName, f64)]) -> SampleOutcome {
        if self
            .state
            .last_timestamp
            .is_some_and(|last| timestamp_ms < last)
        {
            return SampleOutcome {
                ignored_stale: true,
                ..SampleOutcome::default()
            };
        }
        self.state.last_timestamp = Some(timestamp_ms);
        let mut events = self.clear_orphans(timestamp_ms);
        let t = timestamp_ms;

        let MachineState { rules, log, .. } = &mut self.state;
        for RuleState {
            rule,
            trigger,
            window,
        } in rules.values_mut()
        {
            // The last value wins if a sample carries a metric twice.
            let Some(x) = values
                .iter()
                .rev()
                .find(|(name, value)| *name == rule.metric && value.is_finite())
                .map(|&(_, value)| value)
            else {
                continue;
            };
            let (value, reading) = if rule.is_rate() {
                let window_ms = rule.rate_window_ms();
                window.push(t, x, window_ms);
                let Some(rate) = window.rate_per_min(window_ms) else {
                    continue;
                };
                let reading = read(
                    rate,
                    rule.rate_above_per_min,
                    rule.rate_below_per_min,
                    rule.hysteresis,
                );
                (rate, reading)
            } else {
                (x, read(x, rule.above, rule.below, rule.hysteresis))
            };
            match trigger.step(reading, t, secs_to_ms(rule.for_s), rule.clear_hold_ms()) {
                Step::Nothing => {}
                Step::Clear(id) => events.extend(log.clear(&id, t)),
                Step::Raise { since, threshold } => {
                    // A default message already names the metric and the limit.
                    let tripped = match (rule.is_rate(), &rule.message) {
                        (true, None) => format!("{}/min, now {}", number(value), number(x)),
                        (false, None) => number(x),
                        (true, Some(_)) => format!(
                            "{} {}/min, now {} (limit {}/min)",
                            rule.metric,
                            number(value),
                            number(x),
                            number(threshold)
                        ),
                        (false, Some(_)) => {
                            format!(
                                "{} {} (limit {})",
                                rule.metric,
                                number(x),
                                number(threshold)
                            )
                        }
                    };
                    let event = log.raise(Raise {
                        rule: &rule.id,
                        severity: rule.severity,
                        message: format!("{}: {tripped}", rule.message()),
                        metric: Some(rule.metric.to_string()),
                        value: Some(value),
                        metric_value: Some(x),
                        threshold: Some(threshold),
                        since,
                        at: t,
                    });
                    trigger.active = Some(event.alarm.id.clone());
                    events.push(event);
                }
            }
        }

        let anomaly_score = self.score_anomaly(t, values, &mut events);
        SampleOutcome {
            anomaly_score,
            events,
            ignored_stale: false,
        }
    }

    fn score_anomaly(
        &mut self,
        t: u64,
        values: &[(MetricName, f64)],
        events: &mut Vec<AlarmEvent>,
    ) -> Option<f64> {
        // Borrowed field by field: the configuration is read on every sample, not cloned.
        let MachineState {
            anomaly_config: Some(config),
            anomaly,
            anomaly_trigger,
            log,
            ..
        } = &mut self.state
        else {
            return None;
        };
        let score = anomaly.update(config, t, values)?;
        let reading = read(score.value, Some(config.threshold), None, config.hysteresis);
        let (hold_ms, clear_ms) = (secs_to_ms(config.for_s), config.clear_hold_ms());
        match anomaly_trigger.step(reading, t, hold_ms, clear_ms) {
            Step::Nothing => {}
            Step::Clear(id) => events.extend(log.clear(&id, t)),
            Step::Raise { since, threshold } => {
                let event = log.raise(Raise {
                    rule: ANOMALY_RULE,
                    severity: config.severity,
                    message: format!(
                        "{}: score {} on {}, level {} against a learned {}",
                        config.message(),
                        number(score.value),
                        score.metric,
                        number(score.level),
                        number(score.baseline)
                    ),
                    metric: Some(score.metric.to_string()),
                    value: Some(score.value),
                    metric_value: Some(score.level),
                    threshold: Some(threshold),
                    since,
                    at: t,
                });
                anomaly_trigger.active = Some(event.alarm.id.clone());
                events.push(event);
            }
        }
        Some(score.value)
    }

    /// The machine went offline (its device or gateway died): raises the `offline` alarm.
    /// Conditions waiting out `for_s` start over when samples return, since nobody saw them
    /// hold in between; active alarms stay active.
    pub fn on_offline(&mut self, now_ms: u64) -> Vec<AlarmEvent> {
        let mut events = self.clear_orphans(now_ms);
        for state in self.state.rules.values_mut() {
            state.trigger.restart_timers();
            state.window.clear();
        }
        self.state.anomaly_trigger.restart_timers();
        self.state.anomaly.forget_state();
        if self.state.offline.active.is_none() {
            let event = self.state.log.raise(Raise {
                rule: OFFLINE_RULE,
                severity: Severity::Major,
                message: "Machine offline".into(),
                metric: None,
                value: None,
                metric_value: None,
                threshold: None,
                since: now_ms,
                at: now_ms,
            });
            self.state.offline.active = Some(event.alarm.id.clone());
            events.push(event);
        }
        events
    }

    /// The machine is back online: clears the `offline` alarm.
    pub fn on_online(&mut self, now_ms: u64) -> Vec<AlarmEvent> {
        let mut events = self.clear_orphans(now_ms);
        if let Some(id) = self.state.offline.active.take() {
            events.extend(self.state.log.clear(&id, now_ms));
        }
        events
    }

    /// Acknowledges one of this machine's alarms.
    pub fn acknowledge(
        &mut self,
        alarm_id: &str,
        user: &str,
        now_ms: u64,
    ) -> Result<AlarmEvent, AlarmError> {
        let alarm = self
            .state
            .log
            .alarms
            .iter_mut()
            .find(|alarm| alarm.id == alarm_id)
            .ok_or_else(|| AlarmError::UnknownAlarm {
                id: alarm_id.to_owned(),
            })?;
        if alarm.state.is_acknowledged() {
            return Err(AlarmError::AlreadyAcknowledged {
                id: alarm_id.to_owned(),
            });
        }
        alarm.state = alarm.state.acknowledged();
        alarm.acknowledged_at = Some(now_ms);
        alarm.acknowledged_by = Some(user.to_owned());
        Ok(AlarmEvent {
            kind: AlarmEventKind::Acknowledged,
            alarm: alarm.clone(),
        })
    }

    /// Every alarm record kept, oldest first.
    pub fn alarms(&self) -> &[Alarm] {
        &self.state.log.alarms
    }

    /// The alarms whose condition holds, newest first (the twin's `alarms`).
    pub fn active(&self) -> Vec<Alarm> {
        let mut active: Vec<Alarm> = self
            .state
            .log
            .alarms
            .iter()
            .filter(|alarm| alarm.state.is_active())
            .cloned()
            .collect();
        sort_newest_first(&mut active);
        active
    }

    #[cfg(test)]
    fn snapshot_anomaly(&self) -> &AnomalyState {
        &self.state.anomaly
    }

    /// The current anomaly score, without a new sample.
    pub fn anomaly_score(&self) -> Option<f64> {
        let config = self.state.anomaly_config.as_ref()?;
        self.state.anomaly.score(config).map(|score| score.value)
    }

    /// Drops old closed alarms; active and unacknowledged ones stay unless over the count.
    pub fn prune(&mut self, now_ms: u64, retention: &Retention) -> Pruned {
        let mut pruned = Pruned::default();
        let cutoff = now_ms.saturating_sub(retention.max_age_ms);
        self.state.log.alarms.retain(|alarm| {
            let last_change = alarm
                .cleared_at
                .unwrap_or(alarm.raised_at)
                .max(alarm.acknowledged_at.unwrap_or(0));
            let expired = alarm.state == AlarmState::ClearedAck && last_change < cutoff;
            pruned.acknowledged += usize::from(expired);
            !expired
        });
        let cleared = self
            .state
            .log
            .alarms
            .iter()
            .filter(|alarm| !alarm.state.is_active())
            .count();
        let mut excess = cleared.saturating_sub(retention.max_cleared_per_machine);
        // Oldest first, as the records are kept in the order raised.
        self.state.log.alarms.retain(|alarm| {
            if excess == 0 || alarm.state.is_active() {
                return true;
            }
            excess -= 1;
            if alarm.state.is_acknowledged() {
                pruned.acknowledged += 1;
            } else {
                pruned.unacknowledged += 1;
            }
            false
        });
        pruned
    }

    /// A serializable copy of the state.
    pub fn snapshot(&self) -> MachineSnapshot {
        MachineSnapshot(self.state.clone())
    }

    /// The machine as it was in `snapshot`.
    pub fn from_snapshot(snapshot: MachineSnapshot) -> Self {
        Self {
            state: snapshot.0,
            configured: false,
        }
    }

    fn clear_orphans(&mut self, at: u64) -> Vec<AlarmEvent> {
        std::mem::take(&mut self.state.orphans)
            .iter()
            .filter_map(|id| self.state.log.clear(id, at))
            .collect()
    }
}

/// The machine an alarm id belongs to (`{lab}/{machine}/…`), for callers that shard
/// [`MachineAlarms`] themselves.
pub fn machine_of_alarm(alarm_id: &str) -> Option<TwinKey> {
    let mut parts = alarm_id.splitn(3, '/');
    let lab = parts.next()?.parse().ok()?;
    let machine = parts.next()?.parse().ok()?;
    Some(TwinKey { lab, machine })
}

/// Newest raised first; among alarms raised together the higher number first.
fn sort_newest_first(alarms: &mut [Alarm]) {
    let number = |alarm: &Alarm| {
        alarm
            .id
            .rsplit('/')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    alarms.sort_by(|a, b| (b.raised_at, number(b), &b.id).cmp(&(a.raised_at, number(a), &a.id)));
}

/// A serializable copy of the whole engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// The format version, [`SNAPSHOT_VERSION`] when written by this build.
    pub version: u32,
    /// Every machine.
    pub machines: Vec<MachineSnapshot>,
}

/// Every machine's [`MachineAlarms`] in one map, for callers content with one lock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlarmEngine {
    machines: BTreeMap<TwinKey, MachineAlarms>,
}

impl AlarmEngine {
    /// No machines.
    pub fn new() -> Self {
        Self::default()
    }

    /// One machine, created if new.
    pub fn machine_mut(&mut self, key: &TwinKey) -> &mut MachineAlarms {
        self.machines
            .entry(key.clone())
            .or_insert_with(|| MachineAlarms::new(key))
    }

    /// One machine.
    pub fn machine(&self, key: &TwinKey) -> Option<&MachineAlarms> {
        self.machines.get(key)
    }

    /// See [`MachineAlarms::set_rules`].
    pub fn set_rules(&mut self, key: &TwinKey, rules: Arc<KindAlarms>) {
        self.machine_mut(key).set_rules(&rules);
    }

    /// See [`MachineAlarms::on_sample`].
    pub fn on_sample(
        &mut self,
        key: &TwinKey,
        timestamp_ms: u64,
        values: &[(MetricName, f64)],
    ) -> SampleOutcome {
        self.machine_mut(key).on_sample(timestamp_ms, values)
    }

    /// See [`MachineAlarms::on_offline`].
    pub fn on_offline(&mut self, key: &TwinKey, now_ms: u64) -> Vec<AlarmEvent> {
        self.machine_mut(key).on_offline(now_ms)
    }

    /// See [`MachineAlarms::on_online`].
    pub fn on_online(&mut self, key: &TwinKey, now_ms: u64) -> Vec<AlarmEvent> {
        self.machine_mut(key).on_online(now_ms)
    }

    /// Acknowledges an alarm by id.
    pub fn acknowledge(
        &mut self,
        alarm_id: &str,
        user: &str,
        now_ms: u64,
    ) -> Result<AlarmEvent, AlarmError> {
        machine_of_alarm(alarm_id)
            .and_then(|key| self.machines.get_mut(&key))
            .ok_or_else(|| AlarmError::UnknownAlarm {
                id: alarm_id.to_owned(),
            })?
            .acknowledge(alarm_id, user, now_ms)
    }

    /// The alarms passing `filter`, newest first.
    pub fn list(&self, filter: &AlarmFilter) -> Vec<Alarm> {
        let mut alarms: Vec<Alarm> = self
            .machines
            .iter()
            .filter(|(key, _)| {
                filter
                    .lab
                    .as_ref()
                    .is_none_or(|lab| lab == key.lab.as_str())
                    && filter
                        .machine
                        .as_ref()
                        .is_none_or(|machine| machine == key.machine.as_str())
            })
            .flat_map(|(_, machine)| machine.alarms())
            .filter(|alarm| filter.matches(alarm))
            .cloned()
            .collect();
        sort_newest_first(&mut alarms);
        alarms
    }

    /// The active alarms of one machine, newest first.
    pub fn active_for(&self, key: &TwinKey) -> Vec<Alarm> {
        self.machines
            .get(key)
            .map(MachineAlarms::active)
            .unwrap_or_default()
    }

    /// Prunes every machine with the default [`Retention`].
    pub fn prune(&mut self, now_ms: u64) -> Pruned {
        self.prune_with(now_ms, &Retention::default())
    }

    /// Prunes every machine.
    pub fn prune_with(&mut self, now_ms: u64, retention: &Retention) -> Pruned {
        let mut pruned = Pruned::default();
        for machine in self.machines.values_mut() {
            pruned += machine.prune(now_ms, retention);
        }
        pruned
    }

    /// A serializable copy of every machine.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            machines: self
                .machines
                .values()
                .map(MachineAlarms::snapshot)
                .collect(),
        }
    }

    /// Loads a snapshot. Machines in it replace the engine's; a machine whose rules were set
    /// before keeps those rules (reconciled as by `set_rules`), so the order of loading the
    /// catalogue and the snapshot does not matter.
    pub fn restore(&mut self, snapshot: EngineSnapshot) -> Result<(), AlarmError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(AlarmError::UnsupportedSnapshot {
                version: snapshot.version,
            });
        }
        for machine in snapshot.machines {
            let key = machine.key();
            let mut restored = MachineAlarms::from_snapshot(machine);
            if let Some(current) = self.machines.get(&key).filter(|m| m.configured) {
                restored.set_rules(&current.config());
            }
            self.machines.insert(key, restored);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::anomaly::tests::{Noise, config as anomaly_config};

    const T0: u64 = 1_700_000_000_000;
    const SEC: u64 = 1000;

    fn key(machine: &str) -> TwinKey {
        TwinKey {
            lab: "lab-a".parse().expect("valid"),
            machine: machine.parse().expect("valid"),
        }
    }

    fn metric(name: &str) -> MetricName {
        name.parse().expect("valid")
    }

    fn rules(text: &str) -> Arc<KindAlarms> {
        Arc::new(toml::from_str(text).expect("valid rules"))
    }

    const OVERLOAD: &str = r#"
        [[alarms]]
        id = "spindle-overload"
        metric = "spindle.power_w"
        above = 4500.0
        hysteresis = 200.0
        severity = "major"
    "#;

    fn engine_with(text: &str) -> AlarmEngine {
        let mut engine = AlarmEngine::new();
        engine.set_rules(&key("mill-1"), rules(text));
        engine
    }

    /// Feeds `spindle.power_w` at 1 Hz from `start_s`; returns the events as (kind, id, time).
    fn feed(
        engine: &mut AlarmEngine,
        metric_name: &str,
        start_s: u64,
        values: &[f64],
    ) -> Vec<(AlarmEventKind, String, u64)> {
        let mut events = Vec::new();
        for (i, &value) in values.iter().enumerate() {
            let t = T0 + (start_s + i as u64) * SEC;
            let outcome = engine.on_sample(&key("mill-1"), t, &[(metric(metric_name), value)]);
            events.extend(outcome.events.into_iter().map(|e| (e.kind, e.alarm.id, t)));
        }
        events
    }

    fn at(s: u64) -> u64 {
        T0 + s * SEC
    }

    use AlarmEventKind::{Acknowledged, Cleared, Raised};

    #[test]
    fn the_module_doc_example_works() {
        let key = key("mill-1");
        let mut engine = AlarmEngine::new();
        engine.set_rules(&key, rules(OVERLOAD));
        let outcome = engine.on_sample(&key, 1_000, &[(metric("spindle.power_w"), 5000.0)]);
        assert_eq!(outcome.events[0].kind, Raised);
        assert_eq!(
            outcome.events[0].alarm.id,
            "lab-a/mill-1/spindle-overload/1"
        );
    }

    #[test]
    fn hysteresis_keeps_noise_around_the_threshold_from_flapping() {
        let mut engine = engine_with(OVERLOAD);
        let events = feed(
            &mut engine,
            "spindle.power_w",
            0,
            &[
                4400.0, 4510.0, 4490.0, 4505.0, 4350.0, 4520.0, 4301.0, 4300.0, 4499.0, 4501.0,
            ],
        );
        assert_eq!(
            events,
            vec![
                (Raised, "lab-a/mill-1/spindle-overload/1".into(), at(1)),
                (Cleared, "lab-a/mill-1/spindle-overload/1".into(), at(7)),
                (Raised, "lab-a/mill-1/spindle-overload/2".into(), at(9)),
            ]
        );
        let alarm = &engine.active_for(&key("mill-1"))[0];
        assert_eq!(
            (
                alarm.value,
                alarm.threshold,
                alarm.severity,
                alarm.metric.as_deref()
            ),
            (
                Some(4501.0),
                Some(4500.0),
                Severity::Major,
                Some("spindle.power_w")
            )
        );
        // The message names the value that tripped it; the record carries it too.
        assert_eq!(alarm.message, "spindle.power_w above 4500: 4501");
        assert_eq!(alarm.metric_value, Some(4501.0));
    }

    #[test]
    fn a_condition_must_hold_for_s_and_raised_at_is_when_it_had() {
        let mut engine = engine_with(&OVERLOAD.replace("hysteresis = 200.0", "for_s = 5.0"));
        // 3 s over the limit (samples at 10..=13), then back: nothing.
        let mut power = vec![4000.0; 10];
        power.extend([5000.0; 4]);
        power.extend([4000.0; 6]);
        // From 20 s on it stays over: held 5 s at 25 s.
        power.extend([5000.0; 7]);
        let events = feed(&mut engine, "spindle.power_w", 0, &power);
        assert_eq!(
            events,
            vec![(Raised, "lab-a/mill-1/spindle-overload/1".into(), at(25))]
        );
        let alarm = &engine.active_for(&key("mill-1"))[0];
        assert_eq!((alarm.condition_since, alarm.raised_at), (at(20), at(25)));
    }

    #[test]
    fn below_rules_fire_under_the_limit_and_clear_above_it_plus_hysteresis() {
        let mut engine = engine_with(
            r#"
            [[alarms]]
            id = "coolant-cold"
            metric = "coolant.temp_c"
            below = 10.0
            hysteresis = 1.0
            severity = "info"
            "#,
        );
        let events = feed(
            &mut engine,
            "coolant.temp_c",
            0,
            &[12.0, 9.9, 10.5, 9.0, 10.9, 11.0],
        );
        assert_eq!(
            events,
            vec![
                (Raised, "lab-a/mill-1/coolant-cold/1".into(), at(1)),
                (Cleared, "lab-a/mill-1/coolant-cold/1".into(), at(5)),
            ]
        );
    }

    #[test]
    fn a_band_rule_fires_on_either_side() {
        let mut engine = engine_with(
            r#"
            [[alarms]]
            id = "coolant-range"
            metric = "coolant.temp_c"
            above = 30.0
            below = 10.0
            hysteresis = 1.0
            severity = "minor"
            "#,
        );
        let events = feed(
            &mut engine,
            "coolant.temp_c",
            0,
            &[20.0, 31.0, 29.5, 28.0, 9.0, 11.0],
        );
        let kinds: Vec<_> = events.iter().map(|(kind, _, t)| (*kind, *t)).collect();
        assert_eq!(
            kinds,
            vec![
                (Raised, at(1)),
                (Cleared, at(3)),
                (Raised, at(4)),
                (Cleared, at(5))
            ]
        );
        let alarms = engine.list(&AlarmFilter::default());
        assert_eq!(alarms[0].threshold, Some(10.0));
        assert_eq!(alarms[1].threshold, Some(30.0));
    }

    const HEATING: &str = r#"
        [[alarms]]
        id = "coolant-heating-fast"
        metric = "coolant.temp_c"
        rate_above_per_min = 2.0
        hysteresis = 0.5
        severity = "minor"
    "#;

    #[test]
    fn a_rate_rule_sees_a_trend_over_its_window_not_sample_noise() {
        let mut engine = engine_with(HEATING);
        let mut noise = Noise::new(7);
        // Ten minutes flat with noise and one 5 °C glitch; then 3 °C/min for five minutes; then
        // flat again.
        let mut temps: Vec<f64> = (0..600).map(|_| 20.0 + 0.2 * noise.normal()).collect();
        temps[300] = 25.0;
        temps.extend((1..=300).map(|s| 20.0 + 3.0 * s as f64 / 60.0 + 0.2 * noise.normal()));
        temps.extend((0..300).map(|_| 35.0 + 0.2 * noise.normal()));
        let events = feed(&mut engine, "coolant.temp_c", 0, &temps);
        assert_eq!(events.len(), 2, "{events:?}");
        let (raised, cleared) = (events[0].2, events[1].2);
        assert_eq!((events[0].0, events[1].0), (Raised, Cleared));
        // The fitted slope reaches 2/min once about two thirds of the window is on the ramp.
        assert!(
            (at(620)..=at(660)).contains(&raised),
            "raised {}",
            (raised - T0) / SEC
        );
        assert!(
            (at(920)..=at(960)).contains(&cleared),
            "cleared {}",
            (cleared - T0) / SEC
        );
        let alarm = &engine.list(&AlarmFilter::default())[0];
        assert_eq!(alarm.threshold, Some(2.0));
        assert!(
            alarm.value.is_some_and(|rate| rate > 2.0 && rate < 3.5),
            "{alarm:?}"
        );
    }

    #[test]
    fn a_rate_is_not_judged_before_three_quarters_of_the_window_and_stays_bounded() {
        let mut engine = engine_with(HEATING);
        // Steep from the first sample, but only 44 s of samples: no rate yet.
        let steep: Vec<f64> = (0..45).map(|s| 20.0 + s as f64).collect();
        assert!(feed(&mut engine, "coolant.temp_c", 0, &steep).is_empty());
        assert_eq!(
            feed(&mut engine, "coolant.temp_c", 45, &[65.0]),
            vec![(Raised, "lab-a/mill-1/coolant-heating-fast/1".into(), at(45))]
        );
        // 100 Hz for two minutes keeps about RATE_WINDOW_POINTS points.
        let mut window = RateWindow::default();
        for i in 0..12_000u64 {
            window.push(T0 + i * 10, 1.0, 60_000);
        }
        assert!(
            window.points.len() <= RATE_WINDOW_POINTS as usize + 3,
            "{}",
            window.points.len()
        );
        assert_eq!(window.rate_per_min(60_000), Some(0.0));
    }

    #[test]
    fn a_falling_rate_rule_fires_on_a_fast_drop() {
        let mut engine = engine_with(
            r#"
            [[alarms]]
            id = "air-pressure-dropping"
            metric = "air.pressure_bar"
            rate_below_per_min = -0.5
            rate_window_s = 20.0
            severity = "major"
            "#,
        );
        let mut pressure: Vec<f64> = vec![6.0; 30];
        // -1 bar/min from 30 s on.
        pressure.extend((1..=30).map(|s| 6.0 - s as f64 / 60.0));
        let events = feed(&mut engine, "air.pressure_bar", 0, &pressure);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, Raised);
        assert!((at(35)..=at(50)).contains(&events[0].2), "{events:?}");
        let alarm = &engine.list(&AlarmFilter::default())[0];
        assert_eq!(alarm.threshold, Some(-0.5));
        assert_eq!(
            alarm.message,
            "air.pressure_bar rate of change below -0.5/min: -0.5714/min, now 5.817"
        );
        assert_eq!(alarm.metric_value, Some(6.0 - 11.0 / 60.0));
    }

    #[test]
    fn alarm_records_round_trip_through_json_with_snake_case_states() {
        let mut engine = engine_with(OVERLOAD);
        feed(&mut engine, "spindle.power_w", 0, &[5000.0]);
        let alarm = engine.active_for(&key("mill-1")).remove(0);
        let json = serde_json::to_value(&alarm).expect("serializes");
        assert_eq!(json["state"], "active_unack");
        assert_eq!(json["severity"], "major");
        assert_eq!(json["acknowledged_at"], serde_json::Value::Null);
        assert_eq!(
            serde_json::from_value::<Alarm>(json).expect("deserializes"),
            alarm
        );
    }

    #[test]
    fn offline_raises_once_and_online_clears_it() {
        let mut engine = AlarmEngine::new();
        let mill = key("mill-1");
        let events = engine.on_offline(&mill, 5_000);
        assert_eq!(events.len(), 1);
        let alarm = &events[0].alarm;
        assert_eq!(
            (
                events[0].kind,
                alarm.id.as_str(),
                alarm.rule.as_str(),
                alarm.severity
            ),
            (Raised, "lab-a/mill-1/offline/1", "offline", Severity::Major)
        );
        assert_eq!(
            (alarm.condition_since, alarm.raised_at, alarm.state),
            (5_000, 5_000, AlarmState::ActiveUnack)
        );
        assert!(
            engine.on_offline(&mill, 6_000).is_empty(),
            "already offline"
        );
        let events = engine.on_online(&mill, 9_000);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind, events[0].alarm.cleared_at),
            (Cleared, Some(9_000))
        );
        assert_eq!(events[0].alarm.state, AlarmState::ClearedUnack);
        assert!(engine.on_online(&mill, 10_000).is_empty(), "already online");
        assert_eq!(
            engine.on_offline(&mill, 11_000)[0].alarm.id,
            "lab-a/mill-1/offline/2"
        );
    }

    #[test]
    fn going_offline_restarts_a_pending_condition() {
        let mut engine = engine_with(&OVERLOAD.replace("hysteresis = 200.0", "for_s = 5.0"));
        let mill = key("mill-1");
        assert!(feed(&mut engine, "spindle.power_w", 0, &[5000.0; 4]).is_empty());
        engine.on_offline(&mill, at(4));
        engine.on_online(&mill, at(20));
        // Held from 20 s, not from 0 s.
        let events = feed(&mut engine, "spindle.power_w", 20, &[5000.0; 6]);
        assert_eq!(
            events,
            vec![(Raised, "lab-a/mill-1/spindle-overload/2".into(), at(25))]
        );
    }

    #[test]
    fn acknowledge_then_clear_keeps_the_ack_and_a_return_is_a_new_alarm() {
        let mut engine = engine_with(OVERLOAD);
        feed(&mut engine, "spindle.power_w", 0, &[5000.0]);
        let id = "lab-a/mill-1/spindle-overload/1";
        let event = engine.acknowledge(id, "ada", at(1)).expect("known");
        assert_eq!(event.kind, Acknowledged);
        assert_eq!(event.alarm.state, AlarmState::ActiveAck);
        assert_eq!(
            (
                event.alarm.acknowledged_at,
                event.alarm.acknowledged_by.as_deref()
            ),
            (Some(at(1)), Some("ada"))
        );
        let events = feed(&mut engine, "spindle.power_w", 2, &[4000.0, 5000.0]);
        assert_eq!(
            events,
            vec![
                (Cleared, id.into(), at(2)),
                (Raised, "lab-a/mill-1/spindle-overload/2".into(), at(3)),
            ]
        );
        let all = engine.list(&AlarmFilter::default());
        assert_eq!(
            all.iter()
                .map(|a| (a.id.as_str(), a.state))
                .collect::<Vec<_>>(),
            vec![
                ("lab-a/mill-1/spindle-overload/2", AlarmState::ActiveUnack),
                (id, AlarmState::ClearedAck),
            ]
        );
        assert_eq!(all[1].acknowledged_by.as_deref(), Some("ada"));
    }

    #[test]
    fn acknowledging_an_unknown_or_acknowledged_alarm_is_refused() {
        let mut engine = engine_with(OVERLOAD);
        feed(&mut engine, "spindle.power_w", 0, &[5000.0, 4000.0]);
        let id = "lab-a/mill-1/spindle-overload/1";
        for unknown in [
            "lab-a/mill-1/spindle-overload/9",
            "lab-a/lathe-2/x/1",
            "nonsense",
            "",
        ] {
            assert_eq!(
                engine.acknowledge(unknown, "ada", at(5)),
                Err(AlarmError::UnknownAlarm { id: unknown.into() })
            );
        }
        // Cleared but never acknowledged: still acknowledgeable.
        let event = engine.acknowledge(id, "ada", at(5)).expect("needs ack");
        assert_eq!(event.alarm.state, AlarmState::ClearedAck);
        assert_eq!(
            engine.acknowledge(id, "bob", at(6)),
            Err(AlarmError::AlreadyAcknowledged { id: id.into() })
        );
    }

    #[test]
    fn list_filters_and_sorts_newest_first() {
        let mut engine = engine_with(OVERLOAD);
        let lathe = key("lathe-2");
        let other_lab = TwinKey {
            lab: "lab-b".parse().expect("valid"),
            machine: "mill-1".parse().expect("valid"),
        };
        engine.set_rules(&lathe, rules(OVERLOAD));
        feed(&mut engine, "spindle.power_w", 0, &[5000.0, 4000.0]);
        engine.on_sample(&lathe, at(3), &[(metric("spindle.power_w"), 5000.0)]);
        engine.on_offline(&other_lab, at(5));
        engine.on_offline(&lathe, at(4));
        let ids = |engine: &AlarmEngine, filter: AlarmFilter| -> Vec<String> {
            engine.list(&filter).into_iter().map(|a| a.id).collect()
        };
        assert_eq!(
            ids(&engine, AlarmFilter::default()),
            [
                "lab-b/mill-1/offline/1",
                "lab-a/lathe-2/offline/2",
                "lab-a/lathe-2/spindle-overload/1",
                "lab-a/mill-1/spindle-overload/1",
            ]
        );
        assert_eq!(
            ids(
                &engine,
                AlarmFilter {
                    lab: Some("lab-a".into()),
                    active_only: true,
                    ..Default::default()
                }
            ),
            [
                "lab-a/lathe-2/offline/2",
                "lab-a/lathe-2/spindle-overload/1"
            ]
        );
        assert_eq!(
            ids(
                &engine,
                AlarmFilter {
                    machine: Some("mill-1".into()),
                    ..Default::default()
                }
            ),
            ["lab-b/mill-1/offline/1", "lab-a/mill-1/spindle-overload/1"]
        );
        engine
            .acknowledge("lab-a/lathe-2/offline/2", "ada", at(6))
            .expect("known");
        assert_eq!(
            ids(
                &engine,
                AlarmFilter {
                    lab: Some("lab-a".into()),
                    unacknowledged_only: true,
                    ..Default::default()
                }
            ),
            [
                "lab-a/lathe-2/spindle-overload/1",
                "lab-a/mill-1/spindle-overload/1"
            ]
        );
        assert_eq!(engine.active_for(&lathe).len(), 2);
        assert!(engine.active_for(&key("nowhere")).is_empty());
    }

    #[test]
    fn stale_samples_are_ignored() {
        let mut engine = engine_with(OVERLOAD);
        let mill = key("mill-1");
        engine.on_sample(&mill, at(10), &[(metric("spindle.power_w"), 4000.0)]);
        let outcome = engine.on_sample(&mill, at(9), &[(metric("spindle.power_w"), 9000.0)]);
        assert_eq!(
            outcome,
            SampleOutcome {
                ignored_stale: true,
                ..Default::default()
            }
        );
        // The same timestamp is not older: a sample split over two messages.
        let outcome = engine.on_sample(&mill, at(10), &[(metric("spindle.power_w"), 9000.0)]);
        assert_eq!(outcome.events.len(), 1);
        // Non-finite values and other metrics leave the rule alone.
        let outcome = engine.on_sample(
            &mill,
            at(11),
            &[
                (metric("spindle.power_w"), f64::NAN),
                (metric("coolant.temp_c"), 1.0),
            ],
        );
        assert!(outcome.events.is_empty() && !outcome.ignored_stale);
        assert_eq!(engine.active_for(&mill).len(), 1);
    }

    #[test]
    fn new_rules_keep_unchanged_state_and_clear_alarms_of_removed_rules() {
        let both = format!(
            "{OVERLOAD}{}",
            OVERLOAD
                .replace("spindle-overload", "spindle-high")
                .replace("4500.0", "4000.0")
                .replace("hysteresis = 200.0", "for_s = 5.0")
        );
        let mut engine = engine_with(&both);
        let mill = key("mill-1");
        feed(&mut engine, "spindle.power_w", 0, &[5000.0; 3]);
        // A rebirth sets the same rules: the pending `spindle-high` still counts from 0 s.
        engine.set_rules(&mill, rules(&both));
        let events = feed(&mut engine, "spindle.power_w", 3, &[4400.0; 3]);
        assert_eq!(
            events,
            vec![(Raised, "lab-a/mill-1/spindle-high/2".into(), at(5))]
        );
        // The catalogue drops `spindle-overload`: its alarm clears at the next sample.
        engine.set_rules(
            &mill,
            rules(&both.replace("\"spindle-overload\"", "\"spindle-peak\"")),
        );
        let events = feed(&mut engine, "spindle.power_w", 6, &[4400.0]);
        assert_eq!(
            events,
            vec![(Cleared, "lab-a/mill-1/spindle-overload/1".into(), at(6))]
        );
        assert_eq!(engine.active_for(&mill)[0].rule, "spindle-high");
    }

    #[test]
    fn a_snapshot_round_trip_keeps_pending_and_active_state() {
        let text = format!(
            "{OVERLOAD}{}{HEATING}",
            OVERLOAD
                .replace("spindle-overload", "spindle-high")
                .replace("4500.0", "4000.0")
                .replace("hysteresis = 200.0", "for_s = 5.0")
        );
        let mill = key("mill-1");
        let mut engine = engine_with(&text);
        engine.set_rules(&mill, rules(&text.replace("[[alarms]]\n        id = \"spindle-overload\"", "[anomaly]\nmetrics = [\"vibration.rms_g\"]\nalpha = 0.02\nthreshold = 4.0\nwarmup_samples = 50\n\n[[alarms]]\n        id = \"spindle-overload\"")));
        let mut noise = Noise::new(3);
        for s in 0..100 {
            engine.on_sample(
                &mill,
                at(s),
                &[
                    (metric("coolant.temp_c"), 20.0 + 0.01 * s as f64),
                    (metric("vibration.rms_g"), 1.0 + 0.05 * noise.normal()),
                ],
            );
        }
        // `spindle-overload` active, `spindle-high` pending since 100 s.
        feed(&mut engine, "spindle.power_w", 100, &[4600.0, 4600.0]);
        engine.on_offline(&key("lathe-2"), at(50));
        let json = serde_json::to_string(&engine.snapshot()).expect("serializes");

        // Restored before the catalogue is loaded, and after: both carry on the same way.
        let mut before = AlarmEngine::new();
        before
            .restore(serde_json::from_str(&json).expect("deserializes"))
            .expect("same version");
        let mut after = AlarmEngine::new();
        after.set_rules(&mill, rules(&text));
        after
            .restore(serde_json::from_str(&json).expect("deserializes"))
            .expect("same version");
        assert_eq!(before.snapshot(), engine.snapshot());
        for restored in [&mut before, &mut after] {
            assert_eq!(
                restored.list(&AlarmFilter::default()),
                engine.list(&AlarmFilter::default())
            );
            let events = feed(restored, "spindle.power_w", 102, &[4100.0; 4]);
            assert_eq!(
                events,
                vec![
                    (Cleared, "lab-a/mill-1/spindle-overload/1".into(), at(102)),
                    (Raised, "lab-a/mill-1/spindle-high/2".into(), at(105)),
                ]
            );
            assert_eq!(restored.on_online(&key("lathe-2"), at(200)).len(), 1);
        }
        // The baseline survived where the catalogue had not replaced it.
        assert_eq!(
            before.machine(&mill).and_then(MachineAlarms::anomaly_score),
            engine.machine(&mill).and_then(MachineAlarms::anomaly_score)
        );
        assert!(
            before
                .machine(&mill)
                .and_then(MachineAlarms::anomaly_score)
                .is_some()
        );
        assert_eq!(
            after.machine(&mill).and_then(MachineAlarms::anomaly_score),
            None
        );

        let mut old = engine.snapshot();
        old.version = 0;
        assert_eq!(
            AlarmEngine::new().restore(old),
            Err(AlarmError::UnsupportedSnapshot { version: 0 })
        );
    }

    #[test]
    fn prune_drops_old_closed_alarms_and_caps_the_count() {
        let mut engine = engine_with(OVERLOAD);
        let day = 24 * 3600 * SEC;
        // Alarms 1..=3 closed, 4 cleared unacknowledged, 5 active.
        for i in 0..5u64 {
            feed(&mut engine, "spindle.power_w", i * 10, &[5000.0, 4000.0]);
        }
        feed(&mut engine, "spindle.power_w", 60, &[5000.0]);
        for n in 1..=3 {
            let id = format!("lab-a/mill-1/spindle-overload/{n}");
            engine
                .acknowledge(&id, "ada", at(n * 10 + 2))
                .expect("known");
        }
        // Last changes: acknowledged at 12, 22 and 32 s.
        assert_eq!(
            engine.prune(at(12) + 7 * day),
            Pruned::default(),
            "not old enough"
        );
        assert_eq!(
            engine.prune(at(22) + 7 * day + 1),
            Pruned {
                acknowledged: 2,
                unacknowledged: 0
            }
        );
        let retention = Retention {
            max_age_ms: 7 * day,
            max_cleared_per_machine: 1,
        };
        assert_eq!(
            engine.prune_with(at(40), &retention),
            Pruned {
                acknowledged: 1,
                unacknowledged: 1
            }
        );
        let left: Vec<String> = engine
            .list(&AlarmFilter::default())
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(
            left,
            [
                "lab-a/mill-1/spindle-overload/6",
                "lab-a/mill-1/spindle-overload/5"
            ]
        );
    }

    /// Vibration around 1 g and spindle power around 3 kW, both with 5 % / 2 % seeded noise.
    fn normal_sample(noise: &mut Noise, vibration_factor: f64) -> [(MetricName, f64); 2] {
        [
            (
                metric("vibration.rms_g"),
                vibration_factor * 1.0 + 0.05 * noise.normal(),
            ),
            (metric("spindle.power_w"), 3000.0 + 60.0 * noise.normal()),
        ]
    }

    fn anomaly_engine() -> AlarmEngine {
        let mut engine = AlarmEngine::new();
        engine.set_rules(
            &key("mill-1"),
            Arc::new(KindAlarms::new(vec![], Some(anomaly_config())).expect("valid")),
        );
        engine
    }

    #[test]
    fn an_hour_of_ordinary_noise_stays_below_the_anomaly_threshold() {
        let mut engine = anomaly_engine();
        let mut noise = Noise::new(42);
        let mut max: f64 = 0.0;
        for s in 0..3600 {
            let outcome = engine.on_sample(&key("mill-1"), at(s), &normal_sample(&mut noise, 1.0));
            assert!(outcome.events.is_empty(), "at {s} s: {:?}", outcome.events);
            assert_eq!(outcome.anomaly_score.is_some(), s >= 49, "at {s} s");
            max = max.max(outcome.anomaly_score.unwrap_or(0.0));
        }
        eprintln!("noise, seed 42: highest anomaly score over an hour at 1 Hz = {max:.2}");
        assert!(max < 4.0, "{max}");

        // Over other seeds the score touches 4 for a second now and then (it is a z-score
        // sampled 3600 times); `for_s = 30` keeps that from raising the alarm.
        let mut max: f64 = 0.0;
        for seed in 1..=20 {
            let mut engine = anomaly_engine();
            let mut noise = Noise::new(seed);
            for s in 0..3600 {
                let outcome =
                    engine.on_sample(&key("mill-1"), at(s), &normal_sample(&mut noise, 1.0));
                assert!(outcome.events.is_empty(), "seed {seed} at {s} s");
                max = max.max(outcome.anomaly_score.unwrap_or(0.0));
            }
        }
        eprintln!("noise, seeds 1-20: highest anomaly score = {max:.2}, no alarm");
    }

    #[test]
    fn a_drift_of_five_percent_a_minute_raises_the_anomaly_alarm_within_minutes() {
        let mut engine = anomaly_engine();
        let mut noise = Noise::new(42);
        for s in 0..900 {
            engine.on_sample(&key("mill-1"), at(s), &normal_sample(&mut noise, 1.0));
        }
        let mut crossed = None;
        let mut raised = None;
        for s in 0..600u64 {
            let factor = 1.0 + 0.05 * s as f64 / 60.0;
            let outcome = engine.on_sample(
                &key("mill-1"),
                at(900 + s),
                &normal_sample(&mut noise, factor),
            );
            if crossed.is_none() && outcome.anomaly_score.is_some_and(|score| score > 4.0) {
                crossed = Some(s);
            }
            if let Some(event) = outcome.events.into_iter().find(|e| e.kind == Raised) {
                assert!(raised.is_none(), "raised twice");
                raised = Some((s, event.alarm));
            }
        }
        let crossed = crossed.expect("the drift crosses the threshold");
        let (raised_s, alarm) = raised.expect("the anomaly alarm is raised");
        eprintln!(
            "drift: score crossed 4.0 after {crossed} s (+{:.1} %), alarm raised after {raised_s} s",
            5.0 * crossed as f64 / 60.0
        );
        assert!(crossed < 180, "{crossed}");
        // The first crossings may dip back within the 30 s `for_s` asks for.
        assert!(
            (crossed + 30..crossed + 90).contains(&raised_s),
            "{raised_s}"
        );
        assert_eq!(
            (
                alarm.rule.as_str(),
                alarm.metric.as_deref(),
                alarm.threshold
            ),
            ("anomaly", Some("vibration.rms_g"), Some(4.0))
        );
        assert_eq!(
            (alarm.condition_since, alarm.raised_at),
            (at(900 + raised_s - 30), at(900 + raised_s))
        );
    }

    #[test]
    fn a_lasting_new_normal_raises_once_and_clears_as_the_baseline_adapts() {
        let mut engine = anomaly_engine();
        let mut noise = Noise::new(9);
        let mut events = Vec::new();
        for s in 0..6 * 3600u64 {
            let factor = if s < 1800 { 1.0 } else { 1.2 };
            let outcome =
                engine.on_sample(&key("mill-1"), at(s), &normal_sample(&mut noise, factor));
            events.extend(outcome.events.into_iter().map(|e| (e.kind, s)));
        }
        eprintln!("step +20 % at 1800 s: {events:?}");
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!((events[0].0, events[1].0), (Raised, Cleared));
        assert!(events[0].1 < 1800 + 60, "{events:?}");
        assert!(events[1].1 < 1800 + 3 * 3600, "{events:?}");
    }

    #[test]
    fn clear_for_s_keeps_one_alarm_through_dips_and_clears_after_a_lasting_absence() {
        // Above the limit for 20 s, below it for 10 s, over and over (a worn bearing while
        // roughing and finishing), then quiet for good from 120 s.
        let text = OVERLOAD.replace(
            "hysteresis = 200.0",
            "hysteresis = 200.0\nfor_s = 5.0\nclear_for_s = 30.0",
        );
        let mut engine = engine_with(&text);
        let mut power = Vec::new();
        for _ in 0..4 {
            power.extend([5000.0; 20]);
            power.extend([4000.0; 10]);
        }
        power.extend([4000.0; 40]);
        let events = feed(&mut engine, "spindle.power_w", 0, &power);
        assert_eq!(
            events,
            vec![
                (Raised, "lab-a/mill-1/spindle-overload/1".into(), at(5)),
                (Cleared, "lab-a/mill-1/spindle-overload/1".into(), at(140)),
            ]
        );
        // Without clear_for_s it defaults to for_s: every 10 s dip clears and re-raises.
        let mut engine = engine_with(&OVERLOAD.replace("hysteresis = 200.0", "for_s = 5.0"));
        let events = feed(&mut engine, "spindle.power_w", 0, &power);
        assert_eq!(events.len(), 8, "{events:?}");
    }

    #[test]
    fn a_custom_message_ends_with_the_metric_its_value_and_the_limit() {
        let mut engine = engine_with(&OVERLOAD.replace(
            "severity = \"major\"",
            "severity = \"major\"\nmessage = \"Spindle overloaded\"",
        ));
        feed(&mut engine, "spindle.power_w", 0, &[4612.345]);
        let alarm = &engine.active_for(&key("mill-1"))[0];
        assert_eq!(
            alarm.message,
            "Spindle overloaded: spindle.power_w 4612 (limit 4500)"
        );
        assert_eq!(
            (alarm.value, alarm.metric_value),
            (Some(4612.345), Some(4612.345))
        );
        assert_eq!(
            [number(0.0), number(0.012345), number(2.5), number(-12.0)],
            ["0", "0.01235", "2.5", "-12"]
        );
    }

    fn stateful_engine(settle_s: f64) -> AlarmEngine {
        let mut config = anomaly_config();
        config.state_metric = Some(metric("state.code"));
        config.states = vec!["running".into()];
        config.settle_s = settle_s;
        let mut engine = AlarmEngine::new();
        engine.set_rules(
            &key("mill-1"),
            Arc::new(KindAlarms::new(vec![], Some(config)).expect("valid")),
        );
        engine
    }

    /// Running (code 2) at 1 g, or off (code 0) at 0.05 g, with 5 % noise.
    fn state_sample(noise: &mut Noise, running: bool) -> [(MetricName, f64); 2] {
        let (code, vibration) = if running { (2.0, 1.0) } else { (0.0, 0.05) };
        [
            (metric("state.code"), code),
            (
                metric("vibration.rms_g"),
                vibration * (1.0 + 0.05 * noise.normal()),
            ),
        ]
    }

    #[test]
    fn a_machine_that_is_off_is_neither_learned_nor_scored_against_its_running_baseline() {
        let mut engine = stateful_engine(10.0);
        let mut noise = Noise::new(5);
        let mill = key("mill-1");
        let mut max: f64 = 0.0;
        // 20 min running, 10 min off, 20 min running again.
        for s in 0..3000u64 {
            let running = !(1200..1800).contains(&s);
            let outcome = engine.on_sample(&mill, at(s), &state_sample(&mut noise, running));
            assert!(outcome.events.is_empty(), "at {s} s: {:?}", outcome.events);
            // No score while off, nor in the 10 s of settling after each start; the 50-sample
            // warm-up follows the first.
            let scored = (59..1200).contains(&s) || s >= 1810;
            assert_eq!(outcome.anomaly_score.is_some(), scored, "at {s} s");
            max = max.max(outcome.anomaly_score.unwrap_or(0.0));
        }
        assert!(max < 4.0, "{max}");
        let machine = engine.machine(&mill).expect("known");
        let running = machine
            .snapshot_anomaly()
            .state_baseline("running", &metric("vibration.rms_g"))
            .expect("learned while running")
            .clone();
        assert_eq!(running.samples, 1190 + 1190);
        assert!((running.mean - 1.0).abs() < 0.01, "{running:?}");
        assert!(
            machine
                .snapshot_anomaly()
                .state_baseline("off", &metric("vibration.rms_g"))
                .is_none()
        );

        // The same run scored against one baseline, as before: the break is an anomaly.
        let mut engine = anomaly_engine();
        let mut noise = Noise::new(5);
        let raised = (0..3000u64).find(|&s| {
            let running = !(1200..1800).contains(&s);
            let sample = state_sample(&mut noise, running);
            !engine.on_sample(&mill, at(s), &sample).events.is_empty()
        });
        assert_eq!(
            raised,
            Some(1201 + 30),
            "crossed one sample into the break, raised 30 s on"
        );
    }

    #[test]
    fn settling_after_start_keeps_a_warm_up_ramp_out_of_the_baseline() {
        // A signal that ramps from 0 to 1 g over 5 min after start (like a duty cycle that is
        // an average), then stays: with 6 min of settling the baseline sees only the plateau.
        let mill = key("mill-1");
        let ramp = |s: u64, noise: &mut Noise| {
            let level = (s as f64 / 300.0).min(1.0);
            [
                (metric("state.code"), 2.0),
                (
                    metric("vibration.rms_g"),
                    level * (1.0 + 0.05 * noise.normal()) + 0.001,
                ),
            ]
        };
        for (settle_s, expect_alarm) in [(0.0, true), (360.0, false)] {
            let mut engine = stateful_engine(settle_s);
            let mut noise = Noise::new(11);
            let raised = (0..3600u64).any(|s| {
                let sample = ramp(s, &mut noise);
                !engine.on_sample(&mill, at(s), &sample).events.is_empty()
            });
            assert_eq!(raised, expect_alarm, "settle_s = {settle_s}");
        }
        // Going offline forgets the state: back online, the machine settles again.
        let mut engine = stateful_engine(360.0);
        let mut noise = Noise::new(11);
        for s in 0..1000u64 {
            engine.on_sample(&mill, at(s), &ramp(s, &mut noise));
        }
        assert!(
            engine
                .machine(&mill)
                .and_then(MachineAlarms::anomaly_score)
                .is_some()
        );
        engine.on_offline(&mill, at(1000));
        engine.on_online(&mill, at(1100));
        let outcome = engine.on_sample(&mill, at(1100), &ramp(1100, &mut noise));
        assert_eq!(outcome.anomaly_score, None);
        let outcome = engine.on_sample(&mill, at(1460), &ramp(1460, &mut noise));
        assert!(outcome.anomaly_score.is_some());
    }
}
