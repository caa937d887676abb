//! The twin model and the live twin registry.
//!
//! A twin is a machine: identity, connectivity, state, and features → properties with the last
//! reported value and its source timestamp. Updates carry the node's sequence number; an update
//! whose sequence is not newer than the twin's is ignored, so duplicates and late replays never
//! move a twin backwards, and one that runs further ahead than the configured window is refused
//! (`seq_jump`), so a forged sequence number cannot freeze a twin. A twin that accepts no sample
//! for the configured silence is marked stale. The registry is sharded ([`DashMap`]): no global
//! lock on ingest.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use dashmap::DashMap;
use protocol::{GatewayId, LabId, MachineId, MachineState, MetricName, Unit};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// The registry's sharded maps, hashed with foldhash: they are looked up several times per
/// message, where SipHash showed in profiles.
type FastMap<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

use crate::alarm::{Alarm, AlarmError, AlarmEvent, AlarmFilter, MachineAlarms, MachineSnapshot};
use crate::catalogue::MachineKind;
use crate::directory::{Directory, Relation};
use crate::kpi::{KpiSample, Kpis};
use crate::limits::Limits;
use crate::stats::{HubStats, IngestDrop};

mod live;
mod name_map;
mod shared_change;

pub use live::{LiveError, apply as live_over};
pub use name_map::NameMap;
pub use shared_change::{SharedChange, View, redacted};

/// Metric in which the gateway reports a command's outcome (0 ok, 1 invalid argument,
/// 2 unsupported, 3 failed, 4 no node answered).
pub const COMMAND_RESULT_METRIC: &str = protocol::metric_names::COMMAND_RESULT;

/// Metric whose value is the machine's [`MachineState`] code.
pub const STATE_METRIC: &str = protocol::metric_names::STATE_CODE;

/// `lab/machine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TwinKey {
    /// The lab.
    pub lab: LabId,
    /// The machine.
    pub machine: MachineId,
}

impl TwinKey {
    /// Parses `lab/machine`.
    pub fn parse(id: &str) -> Option<Self> {
        let (lab, machine) = id.split_once('/')?;
        Some(Self {
            lab: lab.parse().ok()?,
            machine: machine.parse().ok()?,
        })
    }
}

impl std::fmt::Display for TwinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.lab, self.machine)
    }
}

/// A reported property value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Property {
    /// Last reported value; `None` until the first sample after birth.
    pub reported: Option<f64>,
    /// Unit symbol (see `protocol::Unit::symbol`).
    pub unit: String,
    /// Source timestamp of `reported`, ms since the epoch.
    pub timestamp: Option<u64>,
    /// The machine or its gateway died since `reported` (Sparkplug DDEATH/NDEATH): the value is
    /// the last known, not the current one.
    #[serde(default)]
    pub stale: bool,
}

/// A feature: a group of properties (`spindle` of `spindle.power_w`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Feature {
    /// Properties by name.
    #[schema(value_type = BTreeMap<String, Property>)]
    pub properties: NameMap<Property>,
}

/// Whether and how the twin is connected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Connectivity {
    /// Its gateway session is alive and the device was born.
    pub online: bool,
    /// The gateway it is reached through.
    pub gateway: Option<String>,
    /// Last message about it, ms since the epoch.
    pub last_seen: Option<u64>,
    /// Online, but no sample was accepted for longer than the hub's configured silence
    /// (`[hub] stale_after_ms`): its values are the last known, not the current ones.
    #[serde(default)]
    pub stale: bool,
}

/// The machine's operating state and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateInfo {
    /// `off`, `idle`, `running`, `warming`, `fault` or `unknown`.
    pub value: String,
    /// When it entered that state, ms since the epoch.
    pub since: Option<u64>,
}

/// Where a desired value stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredStatus {
    /// Sent as a DCMD; no result yet.
    Pending,
    /// The machine applied it.
    Applied,
    /// The node refused the value.
    Invalid,
    /// The node does not support it.
    Unsupported,
    /// The node tried and failed.
    Failed,
    /// No answer in time (node or gateway gone).
    NoAnswer,
}

impl DesiredStatus {
    fn from_result_code(code: f64) -> Self {
        match code as i64 {
            0 => Self::Applied,
            1 => Self::Invalid,
            2 => Self::Unsupported,
            4 => Self::NoAnswer,
            _ => Self::Failed,
        }
    }
}

/// A desired property value an operator asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Desired {
    /// The value asked for.
    pub value: f64,
    /// Where it stands.
    pub status: DesiredStatus,
    /// Who asked.
    pub requested_by: String,
    /// When, ms since the epoch.
    pub requested_at: u64,
    /// When the result came, ms since the epoch.
    pub completed_at: Option<u64>,
    /// When the hub last sent it again because the node came back with a new boot (and its
    /// defaults), ms since the epoch; the value is `pending` until the node reports it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resent_at: Option<u64>,
}

impl Desired {
    /// When the command now awaited went out: the answer is due from then.
    fn sent_at(&self) -> u64 {
        self.resent_at.unwrap_or(self.requested_at)
    }

    /// Whether a rebooted node needs it again: it was (or may have been) applied to the boot
    /// that ended, or the node never answered. A value the node refused would only be refused
    /// again.
    fn survives_reboot(&self) -> bool {
        matches!(
            self.status,
            DesiredStatus::Applied
                | DesiredStatus::Pending
                | DesiredStatus::NoAnswer
                | DesiredStatus::Failed
        )
    }
}

/// Marks the desired values a node lost in a reboot `pending` again and returns them, to be sent
/// as a DCMD. Values the kind no longer lists as writable, and momentary ones (an action such as
/// blinking the LED, which a reboot does not undo), are left as they are. The reported value of
/// each re-sent property is marked stale: it describes the boot that ended.
pub fn resync_desired(twin: &mut Twin, kind: &MachineKind, now: u64) -> Vec<(String, f64)> {
    let mut resend = Vec::new();
    for (metric, desired) in &mut twin.desired {
        let setting = kind.writable(metric).is_some_and(|spec| !spec.momentary);
        if !(setting && desired.survives_reboot()) {
            continue;
        }
        desired.status = DesiredStatus::Pending;
        desired.resent_at = Some(now);
        desired.completed_at = None;
        resend.push((metric.clone(), desired.value));
    }
    for (metric, _) in &resend {
        if let Some((feature, property)) = metric.split_once('.')
            && let Some(property) = twin
                .features
                .get_mut(feature)
                .and_then(|f| f.properties.get_mut(property))
        {
            property.stale = true;
        }
    }
    resend
}

/// An active alarm, as shown on its twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlarmSummary {
    /// Alarm id (see `/api/v1/alarms`).
    pub id: String,
    /// The rule that raised it.
    pub rule: String,
    /// `info`, `minor`, `major` or `critical`.
    pub severity: String,
    /// `active` or `acknowledged`.
    pub state: String,
    /// What it means.
    pub message: String,
    /// When it was raised, ms since the epoch.
    pub raised_at: u64,
}

/// A digital twin of one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Twin {
    /// `lab/machine`.
    pub id: String,
    /// The lab.
    pub lab: String,
    /// The machine.
    pub machine: String,
    /// Catalogue kind (`GET /api/v1/catalogue`).
    #[serde(default)]
    pub kind: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Static metadata from the lab configuration.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Production line inside the lab.
    #[serde(default)]
    pub line: Option<String>,
    /// Links to twins of virtual production lines, possibly in other labs.
    #[serde(default)]
    pub relations: Vec<Relation>,
    /// Desired values of writable properties, by metric.
    #[serde(default)]
    pub desired: BTreeMap<String, Desired>,
    /// Derived KPIs for today.
    #[serde(default)]
    pub kpis: Kpis,
    /// Active (raised, not cleared) alarms.
    #[serde(default)]
    pub alarms: Vec<AlarmSummary>,

    /// Connectivity.
    pub connectivity: Connectivity,
    /// Operating state.
    pub state: StateInfo,
    /// Features and their properties.
    #[schema(value_type = BTreeMap<String, Feature>)]
    pub features: NameMap<Feature>,
    /// The boot of the node feeding the twin; `last_seq` counts within it.
    #[serde(default)]
    pub boot: Option<u32>,
    /// The node sequence number of the last applied sample (0 before any).
    pub last_seq: u32,
    /// Samples applied since the twin was created (live and historical).
    pub samples: u64,
    /// Of those, samples replayed from a gateway's buffer after an outage.
    #[serde(default)]
    pub historical_samples: u64,
    /// Node sequence numbers a jump went past that have not arrived yet (the newest
    /// [`MAX_MISSING_SEQS`]): one that arrives late, as a broker may redeliver after newer ones
    /// when a cluster node dies, is still applied once, to the history but not to the current
    /// values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_seqs: Vec<u32>,
}

/// What a commit stores of one twin (see [`TwinRegistry::stored`]).
#[derive(Debug, Clone)]
pub struct StoredTwin {
    /// The twin's id (`lab/machine`).
    pub id: String,
    /// The part samples change, encoded; none when `whole` carries it.
    pub live: Option<Vec<u8>>,
    /// The whole twin, when more than the live part changed.
    pub whole: Option<Twin>,
    /// Its alarm state, when it goes with this commit (see [`ALARM_STATE_EVERY_MS`]).
    pub alarms: Option<MachineSnapshot>,
}

impl StoredTwin {
    /// Folds a later copy of the same twin into this one: the later live part and alarm state,
    /// and the later whole twin if it has one (else this one's, still the newest whole).
    pub fn supersede(&mut self, later: StoredTwin) {
        if later.whole.is_some() {
            self.whole = later.whole;
            self.live = later.live;
        } else if later.live.is_some() {
            self.live = later.live;
        }
        if later.alarms.is_some() {
            self.alarms = later.alarms;
        }
    }
}

/// How many skipped node sequence numbers a twin waits for.
pub const MAX_MISSING_SEQS: usize = 1024;

impl Twin {
    fn new(key: &TwinKey) -> Self {
        Twin {
            id: key.to_string(),
            lab: key.lab.to_string(),
            machine: key.machine.to_string(),
            kind: crate::catalogue::GENERIC_KIND.into(),
            name: None,
            attributes: BTreeMap::new(),
            line: None,
            relations: Vec::new(),
            desired: BTreeMap::new(),
            kpis: Kpis::default(),
            alarms: Vec::new(),
            connectivity: Connectivity::default(),
            state: StateInfo {
                value: "unknown".into(),
                since: None,
            },
            features: NameMap::default(),
            boot: None,
            last_seq: 0,
            samples: 0,
            historical_samples: 0,
            missing_seqs: Vec::new(),
        }
    }

    /// The reported value of `metric`, if any.
    pub fn value(&self, metric: &str) -> Option<f64> {
        let (feature, property) = metric.split_once('.')?;
        self.features
            .get(feature)?
            .properties
            .get(property)?
            .reported
    }

    /// How many properties it has, over all features.
    pub fn property_count(&self) -> usize {
        self.features.values().map(|f| f.properties.len()).sum()
    }

    fn has_property(&self, name: &MetricName) -> bool {
        self.features
            .get(name.feature())
            .is_some_and(|f| f.properties.contains_key(name.property()))
    }

    fn property_mut(&mut self, name: &MetricName) -> &mut Property {
        self.features
            .get_or_insert_with(name.feature(), Feature::default)
            .properties
            .get_or_insert_with(name.property(), || Property {
                reported: None,
                unit: String::new(),
                timestamp: None,
                stale: false,
            })
    }
}

/// What ingest asks the registry to do.
#[derive(Debug, Clone, PartialEq)]
pub enum TwinUpdate {
    /// A DBIRTH: the machine exists, with these metrics.
    Birth {
        /// The twin.
        key: TwinKey,
        /// Its gateway.
        gateway: GatewayId,
        /// The node's boot id, when the gateway knows it. Sample sequence numbers are ordered
        /// within one boot: a new boot restarts them.
        boot: Option<u32>,
        /// The `node.seq` the birth reports (the last the gateway sent): the sequence window
        /// re-anchors on it, so a real jump (a node that was cut off for long) is followed after
        /// the rebirth it causes.
        node_seq: Option<u32>,
        /// Metrics and units.
        metrics: Vec<(MetricName, Unit)>,
        /// Birth time.
        timestamp: u64,
    },
    /// One sample.
    Sample {
        /// The twin.
        key: TwinKey,
        /// The node's sequence number.
        seq: u32,
        /// Source timestamp.
        timestamp: u64,
        /// Values by metric.
        values: Vec<(MetricName, f64)>,
        /// Replayed from a gateway's store-and-forward buffer: counted and streamed, but the
        /// twin's live values stay as they are.
        historical: bool,
    },
    /// Values reported outside the sample stream (command results, settings).
    Properties {
        /// The twin.
        key: TwinKey,
        /// Source timestamp.
        timestamp: u64,
        /// Values by metric.
        values: Vec<(MetricName, f64)>,
    },
    /// The machine or its gateway went away.
    Offline {
        /// The twin.
        key: TwinKey,
        /// When.
        timestamp: u64,
    },
}

/// One change, as streamed to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TwinChange {
    /// `birth`, `sample`, `historical`, `properties`, `offline`, `stale`, `retired`, `alarm`,
    /// `desired`, and on a hub replica `mirror`: a twin another replica owns, with its latest
    /// values, as that replica last committed it.
    pub kind: String,
    /// The lab.
    pub lab: String,
    /// The machine.
    pub machine: String,
    /// Node sequence number, for samples.
    pub seq: Option<u32>,
    /// Source timestamp.
    pub timestamp: u64,
    /// Changed values by metric name.
    pub values: BTreeMap<String, f64>,
    /// State after the change.
    pub state: String,
    /// Online after the change.
    pub online: bool,
    /// For `kind: "alarm"`: the alarm event (`raised`, `cleared` or `acknowledged`, and the alarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub alarm: Option<serde_json::Value>,
    /// For `kind: "desired"`: the twin's desired values after the change (requested, answered,
    /// expired, or sent again after the node rebooted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<BTreeMap<String, Desired>>,
    /// When the hub received the Sparkplug message behind this change, hub wall clock in ms since
    /// the epoch (births, samples and property reports that came through ingest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_ms: Option<u64>,
    /// The Sparkplug message behind this change (same cases as `received_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparkplug: Option<SparkplugHop>,
}

/// One Sparkplug message on the path of a machine's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SparkplugHop {
    /// `DBIRTH` or `DDATA`.
    pub message: String,
    /// The topic it came on.
    pub topic: String,
    /// The message's Sparkplug `seq` (0–255, per edge node session).
    pub seq: Option<u64>,
    /// The `bdSeq` of the edge node session it belongs to (from the NBIRTH).
    pub bd_seq: Option<u64>,
}

/// What the hub knows of how a machine's values reach it over Sparkplug: its gateway's session,
/// the aliases of its DBIRTH and the last message (`GET /api/v1/twins/{lab}/{machine}/sparkplug`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SparkplugPath {
    /// The edge node (gateway) it comes through.
    pub gateway: Option<String>,
    /// The `bdSeq` of that edge node's current session.
    pub bd_seq: Option<u64>,
    /// When the hub received the machine's DBIRTH, ms since the epoch.
    pub born_ms: Option<u64>,
    /// Alias of each metric, as declared in the DBIRTH (DDATA then carries aliases, not names).
    pub aliases: BTreeMap<String, u64>,
    /// Alias of `node.seq`, the node's own sample sequence number.
    pub node_seq_alias: Option<u64>,
    /// The last message for this machine.
    pub last: Option<SparkplugHop>,
    /// When the hub received it, ms since the epoch.
    pub last_received_ms: Option<u64>,
}

/// What ingest learnt from one Sparkplug message about a machine (see [`TwinRegistry::record_path`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PathFacts {
    /// The machine.
    pub key: TwinKey,
    /// Its gateway.
    pub gateway: String,
    /// The message.
    pub hop: SparkplugHop,
    /// On a DBIRTH: the aliases it declared, and the alias of `node.seq`.
    pub birth: Option<(BTreeMap<String, u64>, Option<u64>)>,
}

/// A twin with what ingest needs beside it.
#[derive(Debug)]
struct Entry {
    twin: Twin,
    kind: Arc<MachineKind>,
    alarms: MachineAlarms,
    /// The `node.seq` of the last birth: samples up to `max(last_seq, anchor) + window` are
    /// taken.
    anchor: u32,
    /// Hub time of the last birth or accepted live sample, for the silence check.
    last_accepted_ms: u64,
    /// A copy of a twin another hub replica owns: its owner decides when it goes silent.
    mirrored: bool,
}

impl Entry {
    fn new(key: &TwinKey, kind: Arc<MachineKind>) -> Self {
        let mut twin = Twin::new(key);
        twin.kind = kind.id.clone();
        let mut alarms = MachineAlarms::new(key);
        alarms.set_rules(&kind.rules);
        Self {
            twin,
            kind,
            alarms,
            anchor: 0,
            last_accepted_ms: 0,
            mirrored: false,
        }
    }

    /// Copies the engine's active alarms onto the twin.
    fn refresh_alarm_summary(&mut self) {
        self.twin.alarms = self
            .alarms
            .active()
            .into_iter()
            .map(|alarm| AlarmSummary {
                state: if alarm.state.is_acknowledged() {
                    "acknowledged".into()
                } else {
                    "active".into()
                },
                severity: serde_json::to_value(alarm.severity)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                id: alarm.id,
                rule: alarm.rule,
                message: alarm.message,
                raised_at: alarm.raised_at,
            })
            .collect();
    }
}

/// Metric of the streaming anomaly score written on twins whose kind configures one.
pub const ANOMALY_METRIC: &str = "anomaly.score";

/// Why a desired-property write was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DesiredError {
    /// No such twin.
    #[error("no twin {0}")]
    UnknownTwin(String),
    /// The kind has no such writable property.
    #[error("{metric} is not a writable property of kind {kind}")]
    NotWritable {
        /// The metric.
        metric: String,
        /// The twin's kind.
        kind: String,
    },
    /// Out of the kind's range.
    #[error("{metric} must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// The metric.
        metric: String,
        /// The value asked for.
        value: f64,
        /// Smallest accepted.
        min: f64,
        /// Largest accepted.
        max: f64,
    },
    /// The machine is not connected, so nothing could deliver the command.
    #[error("{0} is offline")]
    Offline(String),
}

/// What the lab overview shows of one lab's twins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabCounts {
    /// Twins in the lab.
    pub machines: usize,
    /// Twins online.
    pub online: usize,
    /// Active alarms over its twins.
    pub active_alarms: usize,
}

/// The live twins, shared by ingest, API and persistence.
#[derive(Debug)]
pub struct TwinRegistry {
    twins: FastMap<TwinKey, Box<Entry>>,
    dirty: FastMap<TwinKey, ()>,
    /// Of the dirty twins, those where more than the live part changed (see [`live`]): their
    /// next commit stores the whole twin.
    whole: FastMap<TwinKey, ()>,
    /// Twins retired since the last commit, to delete from the store.
    retired: FastMap<TwinKey, ()>,
    /// Twins per lab, for `limits.max_twins_per_lab` without a scan.
    per_lab: FastMap<LabId, usize>,
    limits: Limits,
    changes: broadcast::Sender<Arc<SharedChange>>,
    stats: Arc<HubStats>,
    directory: Arc<Directory>,
    /// Sparkplug facts per machine, for the protocol view; beside the twins so that the twin
    /// (persisted, compared) stays what the machine is, not how it was last heard.
    paths: FastMap<TwinKey, SparkplugPath>,
    /// Twins whose stored alarm state is behind the one here, since when (hub ms): only samples
    /// changed it, and it is stored at most every [`ALARM_STATE_EVERY_MS`].
    alarms_behind: FastMap<TwinKey, u64>,
}

/// How long samples alone may leave a twin's stored alarm state behind (its anomaly baselines,
/// rule timers). An alarm raised, cleared or acknowledged is stored with its commit; what a crash
/// can lose is at most this much learning, which the next samples redo. Storing the state with
/// every commit was a twentieth of the hub's CPU at 1,000 msg/s.
pub const ALARM_STATE_EVERY_MS: u64 = 10_000;

/// Which alarm states [`TwinRegistry::stored`] takes besides those that must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmStates {
    /// Those left behind for [`ALARM_STATE_EVERY_MS`] by this hub time.
    DueAt(u64),
    /// Every one (the last commit before a clean stop, tests).
    All,
}

/// How many changes a slow stream client may fall behind before it is told it lagged.
const CHANGE_BUFFER: usize = 8192;

/// What the registry did with an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Taken; for samples and property reports, what to keep in history.
    Taken(Option<Applied>),
    /// Dropped, and counted under this reason.
    Dropped(IngestDrop),
    /// A sample whose `node.seq` ran past the window: dropped and counted (`seq_jump`); its
    /// gateway should be asked for a rebirth so the twin re-anchors on the real sequence.
    SeqJump {
        /// The gateway the twin was last born through.
        gateway: Option<GatewayId>,
        /// The sequence number refused.
        seq: u32,
        /// The twin's last sequence number.
        last_seq: u32,
    },
    /// A birth with a new node boot: taken, and these desired values are `pending` again and
    /// must go to the machine as a DCMD through `gateway` (see [`resync_desired`]).
    Resend {
        /// The twin.
        key: TwinKey,
        /// The gateway it was born through.
        gateway: GatewayId,
        /// Metric → desired value.
        values: Vec<(String, f64)>,
    },
}

impl Outcome {
    /// What to keep in history, if anything.
    pub fn applied(self) -> Option<Applied> {
        match self {
            Outcome::Taken(applied) => applied,
            Outcome::Dropped(_) | Outcome::SeqJump { .. } | Outcome::Resend { .. } => None,
        }
    }
}

/// What an accepted update did, for persistence and the history sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The twin.
    pub key: TwinKey,
    /// Source time of the values.
    pub timestamp: u64,
    /// The sample's node sequence number (0 for property reports).
    pub seq: u32,
    /// Values to keep in history: every accepted sample (live or replayed) and property report.
    pub values: Vec<(MetricName, f64)>,
    /// Replayed from a gateway's buffer.
    pub historical: bool,
    /// The gateway it came through.
    pub gateway: Option<String>,
}

impl Applied {
    /// Its values as history rows.
    pub fn rows(&self) -> impl Iterator<Item = crate::history::RowRef<'_>> {
        self.values
            .iter()
            .map(|(metric, value)| crate::history::RowRef {
                key: &self.key,
                metric,
                timestamp_ms: self.timestamp,
                seq: self.seq,
                value: *value,
            })
    }
}

impl TwinRegistry {
    /// An empty registry that enriches twins from `directory`, with the default limits.
    pub fn new(stats: Arc<HubStats>, directory: Arc<Directory>) -> Self {
        Self::with_limits(stats, directory, Limits::default())
    }

    /// An empty registry that enriches twins from `directory` and caps them by `limits`.
    pub fn with_limits(stats: Arc<HubStats>, directory: Arc<Directory>, limits: Limits) -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Self {
            twins: FastMap::default(),
            dirty: FastMap::default(),
            whole: FastMap::default(),
            retired: FastMap::default(),
            per_lab: FastMap::default(),
            limits,
            changes,
            stats,
            directory,
            paths: FastMap::default(),
            alarms_behind: FastMap::default(),
        }
    }

    /// Records what ingest learnt from a Sparkplug message received at `received_ms`; the twin
    /// change the same message causes carries it.
    pub fn record_path(&self, facts: PathFacts, received_ms: u64) {
        let mut path = self.paths.entry(facts.key).or_default();
        if let Some((aliases, node_seq_alias)) = facts.birth {
            path.aliases = aliases;
            path.node_seq_alias = node_seq_alias;
            path.born_ms = Some(received_ms);
        }
        path.gateway = Some(facts.gateway);
        path.bd_seq = facts.hop.bd_seq;
        path.last = Some(facts.hop);
        path.last_received_ms = Some(received_ms);
    }

    /// The Sparkplug facts of a machine, if any message about it arrived since the hub started.
    pub fn sparkplug_path(&self, key: &TwinKey) -> Option<SparkplugPath> {
        self.paths.get(key).map(|p| p.clone())
    }

    /// The last message of `key` and when it arrived, for the change it causes.
    fn last_hop(&self, key: &TwinKey) -> (Option<u64>, Option<SparkplugHop>) {
        self.paths
            .get(key)
            .map_or((None, None), |p| (p.last_received_ms, p.last.clone()))
    }

    /// The directory twins are enriched from.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// Stored twins the directory does not list, so no birth would create them today (they
    /// came from before the lab list was enforced, or from `accept_unknown`): candidates for
    /// retirement.
    pub fn unlisted(&self) -> Vec<TwinKey> {
        let mut keys: Vec<TwinKey> = self
            .twins
            .iter()
            .map(|e| e.key().clone())
            .filter(|key| self.directory.admit_machine(key, false).is_err())
            .collect();
        keys.sort();
        keys
    }

    /// Restores twins and their alarm state loaded from storage; twins stay offline until their
    /// gateway births them.
    pub fn restore(&self, twins: impl IntoIterator<Item = (Twin, Option<MachineSnapshot>)>) {
        for (mut twin, alarms) in twins {
            let Some(key) = TwinKey::parse(&twin.id) else {
                continue;
            };
            twin.connectivity.online = false;
            // Until the machine reports again, what is known is from before the restart.
            for feature in twin.features.values_mut() {
                for property in feature.properties.values_mut() {
                    property.stale = true;
                }
            }
            let alarms =
                alarms.map_or_else(|| MachineAlarms::new(&key), MachineAlarms::from_snapshot);
            self.insert(key, twin, alarms, false);
        }
    }

    /// Puts a twin with its alarm state in the registry under the rules of its kind.
    fn insert(&self, key: TwinKey, twin: Twin, mut alarms: MachineAlarms, mirrored: bool) {
        let kind = self.directory.kind(&twin.kind);
        alarms.set_rules(&kind.rules);
        let mut entry = Entry {
            twin,
            kind,
            alarms,
            anchor: 0,
            last_accepted_ms: 0,
            mirrored,
        };
        entry.refresh_alarm_summary();
        if self.twins.insert(key.clone(), Box::new(entry)).is_none() {
            *self.per_lab.entry(key.lab).or_default() += 1;
        }
    }

    /// Takes twins as another hub replica last committed them (online or not, as they were):
    /// this replica serves them without owning them. Each streams a `mirror` change.
    pub fn mirror(&self, twins: impl IntoIterator<Item = (Twin, MachineSnapshot)>) {
        for (twin, snapshot) in twins {
            let Some(key) = TwinKey::parse(&twin.id) else {
                continue;
            };
            let values = twin
                .features
                .iter()
                .flat_map(|(feature, f)| {
                    f.properties.iter().filter_map(move |(property, p)| {
                        p.reported.map(|v| (format!("{feature}.{property}"), v))
                    })
                })
                .collect();
            let update = change(
                "mirror",
                &twin,
                Some(twin.last_seq),
                twin.connectivity.last_seen.unwrap_or_default(),
                values,
            );
            self.insert(key, twin, MachineAlarms::from_snapshot(snapshot), true);
            // Streamed, but not marked dirty: its owner commits it, never this replica. Marked,
            // it stayed in the dirty set for good, and every commit of every slot walked it.
            let _ = self.changes.send(Arc::new(SharedChange::new(update)));
        }
    }

    /// What a commit stores of a changed twin: its live part, and the whole twin when more than
    /// that changed since it was last taken here, or always with `always_whole` (a replica's
    /// shared store keeps whole twins, which the other replicas mirror). Its alarm state goes
    /// with the whole twin, and otherwise as `alarms` says.
    pub fn stored(
        &self,
        key: &TwinKey,
        always_whole: bool,
        alarms: AlarmStates,
    ) -> Option<StoredTwin> {
        let changed_more = self.whole.remove(key).is_some();
        let Some(entry) = self.twins.get(key) else {
            self.alarms_behind.remove(key);
            return None;
        };
        let live = (!always_whole)
            .then(|| {
                let mut bytes = Vec::with_capacity(512);
                live::encode(&entry.twin, &mut bytes).ok().map(|()| bytes)
            })
            .flatten();
        // Without a live part (it failed to encode) the whole twin carries everything.
        let whole = changed_more || live.is_none();
        let behind_since = self.alarms_behind.get(key).map(|since| *since);
        let take_alarms = whole
            || match alarms {
                AlarmStates::All => true,
                AlarmStates::DueAt(now) => behind_since
                    .is_some_and(|since| now >= since.saturating_add(ALARM_STATE_EVERY_MS)),
            };
        match (take_alarms, alarms) {
            (true, _) => {
                self.alarms_behind.remove(key);
            }
            (false, AlarmStates::DueAt(now)) if behind_since.is_none() => {
                self.alarms_behind.insert(key.clone(), now);
            }
            (false, _) => {}
        }
        Some(StoredTwin {
            id: entry.twin.id.clone(),
            live,
            whole: whole.then(|| entry.twin.clone()),
            alarms: take_alarms.then(|| entry.alarms.snapshot()),
        })
    }

    /// Twins whose stored alarm state has been behind for [`ALARM_STATE_EVERY_MS`] at `now`
    /// (all that are behind with [`AlarmStates::All`]), for a commit to take along.
    pub fn alarms_due(&self, alarms: AlarmStates) -> Vec<TwinKey> {
        self.alarms_behind
            .iter()
            .filter(|e| match alarms {
                AlarmStates::All => true,
                AlarmStates::DueAt(now) => now >= e.value().saturating_add(ALARM_STATE_EVERY_MS),
            })
            .map(|e| e.key().clone())
            .collect()
    }

    /// A copy of a twin and its alarm state, as a commit stores it whole.
    pub fn persisted(&self, key: &TwinKey) -> Option<(Twin, MachineSnapshot)> {
        self.twins
            .get(key)
            .map(|e| (e.twin.clone(), e.alarms.snapshot()))
    }

    /// Alarms matching `filter`, newest first.
    pub fn alarms(&self, filter: &AlarmFilter) -> Vec<Alarm> {
        let mut alarms: Vec<Alarm> = self
            .twins
            .iter()
            .flat_map(|entry| {
                entry
                    .alarms
                    .alarms()
                    .iter()
                    .filter(|a| filter.matches(a))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        alarms.sort_by(|a, b| b.raised_at.cmp(&a.raised_at).then(b.id.cmp(&a.id)));
        alarms
    }

    /// Acknowledges an alarm for `user`.
    pub fn acknowledge(&self, alarm_id: &str, user: &str, now: u64) -> Result<Alarm, AlarmError> {
        let unknown = || AlarmError::UnknownAlarm {
            id: alarm_id.to_owned(),
        };
        let key = crate::alarm::machine_of_alarm(alarm_id).ok_or_else(unknown)?;
        let mut entry = self.twins.get_mut(&key).ok_or_else(unknown)?;
        let event = entry.alarms.acknowledge(alarm_id, user, now)?;
        entry.refresh_alarm_summary();
        let alarm = event.alarm.clone();
        let change = alarm_change(&entry.twin, &event, now);
        drop(entry);
        self.publish(key, change);
        Ok(alarm)
    }

    /// Forgets old cleared alarms.
    pub fn prune_alarms(&self, now: u64) {
        for mut entry in self.twins.iter_mut() {
            let pruned = entry.alarms.prune(now, &crate::alarm::Retention::default());
            if pruned.unacknowledged > 0 {
                tracing::warn!(twin = %entry.key(), count = pruned.unacknowledged, "pruned cleared alarms nobody acknowledged");
            }
        }
    }

    /// Publishes alarm events of a twin (after its entry lock is released).
    fn publish_alarms(&self, key: &TwinKey, changes: Vec<TwinChange>) {
        for change in changes {
            self.publish(key.clone(), change);
        }
    }

    /// Subscribes to every future change.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SharedChange>> {
        self.changes.subscribe()
    }

    /// A copy of one twin.
    pub fn get(&self, key: &TwinKey) -> Option<Twin> {
        self.twins.get(key).map(|e| e.twin.clone())
    }

    /// The kind of a twin.
    pub fn kind(&self, key: &TwinKey) -> Option<Arc<MachineKind>> {
        self.twins.get(key).map(|e| e.kind.clone())
    }

    /// Copies of all twins (optionally of one lab), sorted by id.
    pub fn list(&self, lab: Option<&LabId>) -> Vec<Twin> {
        let mut twins: Vec<Twin> = self
            .twins
            .iter()
            .filter(|entry| lab.is_none_or(|lab| &entry.key().lab == lab))
            .map(|entry| entry.value().twin.clone())
            .collect();
        twins.sort_by(|a, b| a.id.cmp(&b.id));
        twins
    }

    /// Twins known and twins online, counted in place: `/metrics` is scraped often and must not
    /// copy every twin to count them.
    pub fn counts(&self) -> (usize, usize) {
        let online = self
            .twins
            .iter()
            .filter(|entry| entry.value().twin.connectivity.online)
            .count();
        (self.twins.len(), online)
    }

    /// Per lab: machines, machines online and active alarms, counted in place.
    pub fn lab_counts(&self) -> BTreeMap<String, LabCounts> {
        let mut labs: BTreeMap<String, LabCounts> = BTreeMap::new();
        for entry in self.twins.iter() {
            let twin = &entry.value().twin;
            let counts = match labs.get_mut(&twin.lab) {
                Some(counts) => counts,
                None => labs.entry(twin.lab.clone()).or_default(),
            };
            counts.machines += 1;
            counts.online += usize::from(twin.connectivity.online);
            counts.active_alarms += twin.alarms.len();
        }
        labs
    }

    /// Number of twins.
    pub fn len(&self) -> usize {
        self.twins.len()
    }

    /// Whether there are no twins.
    pub fn is_empty(&self) -> bool {
        self.twins.is_empty()
    }

    /// Takes the keys changed since the last call (for the persistence flusher).
    pub fn take_dirty(&self) -> Vec<TwinKey> {
        take_keys(&self.dirty, None)
    }

    /// Takes the keys changed since the last call in `labs` only: a hub replica commits each
    /// slot's twins with that slot.
    pub fn take_dirty_in(&self, labs: &HashSet<LabId>) -> Vec<TwinKey> {
        take_keys(&self.dirty, Some(labs))
    }

    /// Takes the keys retired since the last call (for the persistence flusher).
    pub fn take_retired(&self) -> Vec<TwinKey> {
        take_keys(&self.retired, None)
    }

    /// Takes the keys retired since the last call in `labs` only.
    pub fn take_retired_in(&self, labs: &HashSet<LabId>) -> Vec<TwinKey> {
        take_keys(&self.retired, Some(labs))
    }

    /// Whether the twin is another replica's, mirrored here: changes to it go to its owner.
    pub fn is_mirrored(&self, key: &TwinKey) -> bool {
        self.twins.get(key).is_some_and(|entry| entry.mirrored)
    }

    /// Drops a twin another replica retired: gone here too, with nothing left to commit.
    pub fn forget_mirrored(&self, key: &TwinKey, now_ms: u64) {
        if self.retire(key, now_ms).is_some() {
            self.retired.remove(key);
        }
    }

    /// Retires a twin: it leaves the registry and the protocol view at once, the store with the
    /// next commit, and the streams get a `retired` change. Its history stays until retention
    /// ages it out. It comes back only if it is born again and the directory (or
    /// `accept_unknown`) admits it.
    pub fn retire(&self, key: &TwinKey, now_ms: u64) -> Option<Twin> {
        let (_, entry) = self.twins.remove(key)?;
        if let Some(mut count) = self.per_lab.get_mut(&key.lab) {
            *count = count.saturating_sub(1);
        }
        self.paths.remove(key);
        self.dirty.remove(key);
        self.whole.remove(key);
        self.retired.insert(key.clone(), ());
        self.stats.twin_retired();
        let mut twin = entry.twin;
        twin.connectivity.online = false;
        let change = change("retired", &twin, None, now_ms, BTreeMap::new());
        // Not `publish`: nothing of it is left to persist.
        let _ = self.changes.send(Arc::new(SharedChange::new(change)));
        Some(twin)
    }

    /// Marks stale every online twin that accepted no sample (nor birth) for `silence_ms`:
    /// a machine whose real samples are all refused, or whose gateway went quiet without a
    /// death, shows it. The next accepted sample makes it fresh again.
    pub fn mark_silent(&self, now_ms: u64, silence_ms: u64) -> usize {
        let mut silenced = Vec::new();
        for mut entry in self.twins.iter_mut() {
            let connectivity = &entry.twin.connectivity;
            if entry.mirrored
                || !connectivity.online
                || connectivity.stale
                || now_ms.saturating_sub(entry.last_accepted_ms) < silence_ms
            {
                continue;
            }
            let key = entry.key().clone();
            let twin = &mut entry.twin;
            twin.connectivity.stale = true;
            for feature in twin.features.values_mut() {
                for property in feature.properties.values_mut() {
                    property.stale = true;
                }
            }
            self.stats.twin_silenced();
            silenced.push((key, change("stale", twin, None, now_ms, BTreeMap::new())));
        }
        let count = silenced.len();
        for (key, change) in silenced {
            self.publish(key, change);
        }
        count
    }

    /// Keeps the values whose property exists or still fits under
    /// `limits.max_metrics_per_device`; the rest are counted (`too_many_metrics`).
    fn within_metric_cap(
        &self,
        twin: &Twin,
        values: Vec<(MetricName, f64)>,
    ) -> Vec<(MetricName, f64)> {
        let max = self.limits.max_metrics_per_device;
        let mut count = twin.property_count();
        // Even if every value were a new property the cap would hold: nothing to look up (the
        // lookups were 4.5 % of the hub at 10,000 msg/s).
        if count + values.len() <= max {
            return values;
        }
        // The usual sample only updates properties the twin has: keep its vector as it is.
        if values.iter().all(|(name, _)| twin.has_property(name)) {
            return values;
        }
        let mut kept = Vec::with_capacity(values.len());
        for (name, value) in values {
            if twin.has_property(&name) || kept.iter().any(|(n, _)| n == &name) {
                kept.push((name, value));
            } else if count < max {
                count += 1;
                kept.push((name, value));
            } else {
                self.stats.ingest_dropped(IngestDrop::TooManyMetrics);
            }
        }
        kept
    }

    /// Marks a twin changed and tells the streams.
    fn publish(&self, key: TwinKey, change: TwinChange) {
        // Only a sample is known to change no more than the live part.
        if !matches!(change.kind.as_str(), "sample" | "historical") {
            self.whole.insert(key.clone(), ());
        }
        self.dirty.insert(key, ());
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(Arc::new(SharedChange::new(change)));
    }

    /// Records a desired value (checked against the kind) before the DCMD goes out.
    pub fn request_desired(
        &self,
        key: &TwinKey,
        metric: &str,
        value: f64,
        user: &str,
        now: u64,
    ) -> Result<(), DesiredError> {
        let mut entry = self
            .twins
            .get_mut(key)
            .ok_or_else(|| DesiredError::UnknownTwin(key.to_string()))?;
        check_writable(&entry.kind, metric, value)?;
        if !entry.twin.connectivity.online {
            return Err(DesiredError::Offline(key.to_string()));
        }
        entry.twin.desired.insert(
            metric.to_owned(),
            Desired {
                value,
                status: DesiredStatus::Pending,
                requested_by: user.to_owned(),
                requested_at: now,
                completed_at: None,
                resent_at: None,
            },
        );
        let change = desired_change(&entry.twin, now);
        drop(entry);
        self.publish(key.clone(), change);
        Ok(())
    }

    /// Marks desired values still pending after `timeout_ms` as unanswered.
    pub fn expire_desired(&self, now: u64, timeout_ms: u64) {
        let mut expired = Vec::new();
        for mut entry in self.twins.iter_mut() {
            let mut any = false;
            for desired in entry.twin.desired.values_mut() {
                if desired.status == DesiredStatus::Pending
                    && now.saturating_sub(desired.sent_at()) > timeout_ms
                {
                    desired.status = DesiredStatus::NoAnswer;
                    desired.completed_at = Some(now);
                    any = true;
                }
            }
            if any {
                expired.push((entry.key().clone(), desired_change(&entry.twin, now)));
            }
        }
        for (key, change) in expired {
            self.publish(key, change);
        }
    }

    /// Applies an update at the hub's wall clock; returns what was accepted, or `None` when
    /// nothing changed.
    pub fn apply(&self, update: TwinUpdate) -> Option<Applied> {
        self.apply_at(update, crate::ingest::now_ms()).applied()
    }

    /// Applies an update received at `now_ms` (hub clock, for the silence check).
    pub fn apply_at(&self, update: TwinUpdate, now_ms: u64) -> Outcome {
        match update {
            TwinUpdate::Birth {
                key,
                gateway,
                boot,
                node_seq,
                metrics,
                timestamp,
            } => {
                let hop = self.last_hop(&key);
                let directory = &self.directory;
                let mut entry = match self.twins.entry(key.clone()) {
                    dashmap::Entry::Occupied(entry) => entry.into_ref(),
                    dashmap::Entry::Vacant(vacant) => {
                        let mut in_lab = self.per_lab.entry(key.lab.clone()).or_default();
                        if *in_lab >= self.limits.max_twins_per_lab {
                            self.stats.ingest_dropped(IngestDrop::TooManyTwins);
                            return Outcome::Dropped(IngestDrop::TooManyTwins);
                        }
                        *in_lab += 1;
                        drop(in_lab);
                        let kind = directory.kind_of(&key, metrics.iter().map(|(m, _)| m.as_str()));
                        vacant.insert(Box::new(Entry::new(&key, kind)))
                    }
                };
                if entry.kind.id == crate::catalogue::GENERIC_KIND {
                    // A machine first seen with too few metrics to recognise gets another chance.
                    let kind = directory.kind_of(&key, metrics.iter().map(|(m, _)| m.as_str()));
                    entry.alarms.set_rules(&kind.rules);
                    entry.kind = kind;
                }
                entry.mirrored = false;
                let alarm_events = entry.alarms.on_online(timestamp);
                entry.refresh_alarm_summary();
                let entry_kind = entry.kind.clone();
                let kind_id = entry.kind.id.clone();
                let twin = &mut entry.twin;
                twin.kind = kind_id;
                if let Some(machine) = directory.machine(&key) {
                    twin.name = machine.name.clone();
                    twin.line = machine.line.clone();
                    twin.attributes = machine.attributes.clone();
                }
                twin.relations = directory.relations(&key);
                twin.connectivity = Connectivity {
                    online: true,
                    gateway: Some(gateway.to_string()),
                    last_seen: Some(timestamp),
                    stale: false,
                };
                // A new boot runs the firmware's defaults: what the twin wants must go again.
                let resend = if boot.is_some() && boot != twin.boot {
                    twin.boot = boot;
                    twin.last_seq = 0;
                    twin.missing_seqs.clear();
                    resync_desired(twin, &entry_kind, now_ms)
                } else {
                    Vec::new()
                };
                let max = self.limits.max_metrics_per_device;
                let mut count = twin.property_count();
                for (name, unit) in &metrics {
                    if !twin.has_property(name) {
                        if count >= max {
                            self.stats.ingest_dropped(IngestDrop::TooManyMetrics);
                            continue;
                        }
                        count += 1;
                    }
                    twin.property_mut(name).unit = unit.symbol().to_owned();
                }
                entry.anchor = node_seq.unwrap_or(0);
                entry.last_accepted_ms = now_ms;
                let twin = &entry.twin;
                let mut change = change("birth", twin, None, timestamp, BTreeMap::new());
                (change.received_ms, change.sparkplug) = hop;
                let alarms = alarm_changes(twin, &alarm_events, timestamp);
                let resynced = (!resend.is_empty()).then(|| desired_change(twin, now_ms));
                drop(entry);
                self.publish(key.clone(), change);
                self.publish_alarms(&key, alarms);
                match resynced {
                    Some(resynced) => {
                        self.publish(key.clone(), resynced);
                        Outcome::Resend {
                            key,
                            gateway,
                            values: resend,
                        }
                    }
                    None => Outcome::Taken(None),
                }
            }
            TwinUpdate::Sample {
                key,
                seq,
                timestamp,
                values,
                historical,
            } => {
                let hop = self.last_hop(&key);
                let Some(mut entry) = self.twins.get_mut(&key) else {
                    self.stats.ingest_dropped(IngestDrop::UnknownTwin);
                    return Outcome::Dropped(IngestDrop::UnknownTwin);
                };
                let values = self.within_metric_cap(&entry.twin, values);
                let Entry {
                    twin,
                    kind,
                    alarms,
                    anchor,
                    last_accepted_ms,
                    mirrored,
                } = &mut **entry;
                // Applied here: this replica owns the twin now.
                *mirrored = false;
                let mut alarm_events = Vec::new();
                let mut values = values;
                // A sample a jump went past, arriving late: applied once, as history.
                let late = seq <= twin.last_seq
                    && match twin.missing_seqs.iter().position(|s| *s == seq) {
                        Some(at) => {
                            twin.missing_seqs.remove(at);
                            true
                        }
                        None => false,
                    };
                if seq <= twin.last_seq && !late {
                    self.stats.ingest_dropped(IngestDrop::StaleSequence);
                    return Outcome::Dropped(IngestDrop::StaleSequence);
                }
                let base = twin.last_seq.max(*anchor);
                if seq > base && seq - base > self.limits.seq_window {
                    self.stats.ingest_dropped(IngestDrop::SeqJump);
                    return Outcome::SeqJump {
                        gateway: twin
                            .connectivity
                            .gateway
                            .as_deref()
                            .and_then(|g| g.parse().ok()),
                        seq,
                        last_seq: twin.last_seq,
                    };
                }
                if !late {
                    if twin.last_seq > 0 && seq > twin.last_seq + 1 {
                        let skipped = (twin.last_seq + 1)
                            .max(seq.saturating_sub(MAX_MISSING_SEQS as u32))
                            ..seq;
                        twin.missing_seqs.extend(skipped);
                        let excess = twin.missing_seqs.len().saturating_sub(MAX_MISSING_SEQS);
                        twin.missing_seqs.drain(..excess);
                    }
                    twin.last_seq = seq;
                }
                twin.samples += 1;
                self.stats.sample_applied();
                let mut streamed = BTreeMap::new();
                if historical {
                    twin.historical_samples += 1;
                }
                if historical || late {
                    for (name, value) in &values {
                        streamed.insert(name.to_string(), *value);
                    }
                } else {
                    let was_running = twin.state.value == MachineState::Running.as_str();
                    twin.connectivity.online = true;
                    twin.connectivity.stale = false;
                    twin.connectivity.last_seen = Some(timestamp);
                    *last_accepted_ms = now_ms;
                    for (name, value) in &values {
                        if name.as_str() == STATE_METRIC {
                            let state = state_name(*value);
                            if twin.state.value != state {
                                twin.state = StateInfo {
                                    value: state.to_owned(),
                                    since: Some(timestamp),
                                };
                            }
                        }
                        let property = twin.property_mut(name);
                        property.reported = Some(*value);
                        property.timestamp = Some(timestamp);
                        property.stale = false;
                        streamed.insert(name.to_string(), *value);
                    }
                    let find = |metric: &Option<String>| {
                        let metric = metric.as_deref()?;
                        values
                            .iter()
                            .find(|(name, _)| name.as_str() == metric)
                            .map(|(_, v)| *v)
                    };
                    twin.kpis.observe(KpiSample {
                        timestamp,
                        was_running,
                        power_w: find(&kind.power_metric),
                        energy_wh: values
                            .iter()
                            .find(|(name, _)| name.as_str() == ENERGY_METRIC)
                            .map(|(_, v)| *v),
                        cycles: find(&kind.cycles_metric),
                    });
                    let outcome = alarms.on_sample(timestamp, &values);
                    if outcome.ignored_stale {
                        self.stats.ingest_dropped(IngestDrop::StaleAlarmSample);
                    }
                    if let (Some(score), Ok(name)) =
                        (outcome.anomaly_score, MetricName::new(ANOMALY_METRIC))
                    {
                        let property = twin.property_mut(&name);
                        property.reported = Some(score);
                        property.timestamp = Some(timestamp);
                        property.stale = false;
                        streamed.insert(ANOMALY_METRIC.to_owned(), score);
                        values.push((name, score));
                    }
                    alarm_events = outcome.events;
                }
                let kind_name = if historical { "historical" } else { "sample" };
                let mut change = change(kind_name, twin, Some(seq), timestamp, streamed);
                (change.received_ms, change.sparkplug) = hop;
                let gateway = twin.connectivity.gateway.clone();
                let alarm_changes = alarm_changes(twin, &alarm_events, timestamp);
                if !alarm_events.is_empty() {
                    entry.refresh_alarm_summary();
                    // The alarm summary is not in the live part.
                    self.whole.insert(key.clone(), ());
                }
                drop(entry);
                self.publish(key.clone(), change);
                self.publish_alarms(&key, alarm_changes);
                Outcome::Taken(Some(Applied {
                    key,
                    timestamp,
                    seq,
                    values,
                    historical,
                    gateway,
                }))
            }
            TwinUpdate::Properties {
                key,
                timestamp,
                values,
            } => {
                let hop = self.last_hop(&key);
                let Some(mut entry) = self.twins.get_mut(&key) else {
                    self.stats.ingest_dropped(IngestDrop::UnknownTwin);
                    return Outcome::Dropped(IngestDrop::UnknownTwin);
                };
                let values = self.within_metric_cap(&entry.twin, values);
                let twin = &mut entry.twin;
                let mut changed = BTreeMap::new();
                for (name, value) in &values {
                    let property = twin.property_mut(name);
                    property.reported = Some(*value);
                    property.timestamp = Some(timestamp);
                    property.stale = false;
                    changed.insert(name.to_string(), *value);
                }
                let settled = settle_desired(twin, &values, timestamp)
                    .then(|| desired_change(twin, timestamp));
                let mut change = change("properties", twin, None, timestamp, changed);
                (change.received_ms, change.sparkplug) = hop;
                let gateway = twin.connectivity.gateway.clone();
                drop(entry);
                self.publish(key.clone(), change);
                if let Some(settled) = settled {
                    self.publish(key.clone(), settled);
                }
                Outcome::Taken(Some(Applied {
                    key,
                    timestamp,
                    seq: 0,
                    values,
                    historical: false,
                    gateway,
                }))
            }
            TwinUpdate::Offline { key, timestamp } => {
                let Some(mut entry) = self.twins.get_mut(&key) else {
                    return Outcome::Taken(None);
                };
                entry.twin.connectivity.online = false;
                for feature in entry.twin.features.values_mut() {
                    for property in feature.properties.values_mut() {
                        property.stale = true;
                    }
                }

                let events = entry.alarms.on_offline(timestamp);
                entry.refresh_alarm_summary();
                let change = change("offline", &entry.twin, None, timestamp, BTreeMap::new());
                let alarms = alarm_changes(&entry.twin, &events, timestamp);
                drop(entry);
                self.publish(key.clone(), change);
                self.publish_alarms(&key, alarms);
                Outcome::Taken(None)
            }
        }
    }
}

/// Whether the kind lets `metric` be set to `value`.
pub fn check_writable(kind: &MachineKind, metric: &str, value: f64) -> Result<(), DesiredError> {
    let Some(spec) = kind.writable(metric) else {
        return Err(DesiredError::NotWritable {
            metric: metric.to_owned(),
            kind: kind.id.clone(),
        });
    };
    if !(value.is_finite() && (spec.min..=spec.max).contains(&value)) {
        return Err(DesiredError::OutOfRange {
            metric: metric.to_owned(),
            value,
            min: spec.min,
            max: spec.max,
        });
    }
    Ok(())
}

/// The metric gateways derive from power (a monotonic meter that restarts with the gateway).
const ENERGY_METRIC: &str = protocol::metric_names::ENERGY_TOTAL_WH;

/// Matches a command result to the desired value it answers. Gateways handle one machine's
/// commands in order, so a result belongs to the oldest pending request; the applied value, when
/// reported, names its metric directly.
/// Returns whether a desired value changed.
fn settle_desired(twin: &mut Twin, values: &[(MetricName, f64)], timestamp: u64) -> bool {
    let Some(code) = values
        .iter()
        .find(|(name, _)| name.as_str() == COMMAND_RESULT_METRIC)
        .map(|(_, v)| *v)
    else {
        return false;
    };
    let named = values
        .iter()
        .find(|(name, _)| {
            twin.desired
                .get(name.as_str())
                .is_some_and(|d| d.status == DesiredStatus::Pending)
        })
        .map(|(name, _)| name.to_string());
    let oldest = || {
        twin.desired
            .iter()
            .filter(|(_, d)| d.status == DesiredStatus::Pending)
            .min_by_key(|(_, d)| d.sent_at())
            .map(|(name, _)| name.clone())
    };
    if let Some(metric) = named.or_else(oldest)
        && let Some(desired) = twin.desired.get_mut(&metric)
    {
        desired.status = DesiredStatus::from_result_code(code);
        desired.completed_at = Some(timestamp);
        return true;
    }
    false
}

fn alarm_change(twin: &Twin, event: &AlarmEvent, timestamp: u64) -> TwinChange {
    let mut change = change("alarm", twin, None, timestamp, BTreeMap::new());
    change.alarm = serde_json::to_value(event).ok();
    change
}

fn alarm_changes(twin: &Twin, events: &[AlarmEvent], timestamp: u64) -> Vec<TwinChange> {
    events
        .iter()
        .map(|event| alarm_change(twin, event, timestamp))
        .collect()
}

fn state_name(code: f64) -> &'static str {
    if !(0.0..=255.0).contains(&code) {
        return "unknown";
    }
    MachineState::from_code(code as u8).map_or("unknown", MachineState::as_str)
}

/// Removes and returns the keys of `set` (of `labs` only, when given).
fn take_keys<V>(set: &FastMap<TwinKey, V>, labs: Option<&HashSet<LabId>>) -> Vec<TwinKey> {
    let keys: Vec<TwinKey> = set
        .iter()
        .filter(|e| labs.is_none_or(|labs| labs.contains(&e.key().lab)))
        .map(|e| e.key().clone())
        .collect();
    for key in &keys {
        set.remove(key);
    }
    keys
}

fn change(
    kind: &str,
    twin: &Twin,
    seq: Option<u32>,
    timestamp: u64,
    values: BTreeMap<String, f64>,
) -> TwinChange {
    TwinChange {
        kind: kind.to_owned(),
        lab: twin.lab.clone(),
        machine: twin.machine.clone(),
        seq,
        timestamp,
        values,
        state: twin.state.value.clone(),
        online: twin.connectivity.online,
        alarm: None,
        desired: None,
        received_ms: None,
        sparkplug: None,
    }
}

fn desired_change(twin: &Twin, timestamp: u64) -> TwinChange {
    let mut change = change("desired", twin, None, timestamp, BTreeMap::new());
    change.desired = Some(twin.desired.clone());
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TwinKey {
        TwinKey {
            lab: "lab-a".parse().expect("valid"),
            machine: "mill-1".parse().expect("valid"),
        }
    }

    fn metric(name: &str) -> MetricName {
        name.parse().expect("valid")
    }

    fn registry() -> TwinRegistry {
        let registry = TwinRegistry::new(Arc::new(HubStats::default()), Arc::default());
        registry.apply(TwinUpdate::Birth {
            key: key(),
            boot: Some(1),
            node_seq: None,
            gateway: "gw-a".parse().expect("valid"),
            metrics: vec![
                (metric("spindle.power_w"), Unit::Watt),
                (metric("state.code"), Unit::StateCode),
            ],
            timestamp: 1,
        });
        registry
    }

    #[test]
    fn a_change_carries_the_sparkplug_message_it_came_in_and_when_the_hub_received_it() {
        let registry = registry();
        let mut changes = registry.subscribe();
        let hop = SparkplugHop {
            message: "DDATA".into(),
            topic: "spBv1.0/lab-a/DDATA/gw-a/mill-1".into(),
            seq: Some(9),
            bd_seq: Some(3),
        };
        registry.record_path(
            PathFacts {
                key: key(),
                gateway: "gw-a".into(),
                hop: hop.clone(),
                birth: None,
            },
            1_234,
        );
        registry.apply(TwinUpdate::Sample {
            key: key(),
            seq: 1,
            timestamp: 1_200,
            values: vec![(metric("spindle.power_w"), 5.0)],
            historical: false,
        });
        let change = changes.try_recv().expect("a change");
        assert_eq!(
            (change.received_ms, change.sparkplug.as_ref()),
            (Some(1_234), Some(&hop))
        );
        let path = registry.sparkplug_path(&key()).expect("a path");
        assert_eq!(
            (path.gateway.as_deref(), path.bd_seq, path.last_received_ms),
            (Some("gw-a"), Some(3), Some(1_234))
        );
    }

    #[test]
    fn counts_per_registry_and_lab_follow_births_and_deaths_without_copying_twins() {
        let registry = registry();
        let other = TwinKey {
            lab: "lab-b".parse().expect("valid"),
            machine: "press-1".parse().expect("valid"),
        };
        registry.apply(TwinUpdate::Birth {
            key: other.clone(),
            boot: Some(1),
            node_seq: None,
            gateway: "gw-b".parse().expect("valid"),
            metrics: vec![(metric("spindle.power_w"), Unit::Watt)],
            timestamp: 1,
        });
        assert_eq!(registry.counts(), (2, 2));
        registry.apply(TwinUpdate::Offline {
            key: other,
            timestamp: 2,
        });
        assert_eq!(registry.counts(), (2, 1));
        let labs = registry.lab_counts();
        let expected = |machines, online, active_alarms| LabCounts {
            machines,
            online,
            active_alarms,
        };
        assert_eq!(labs.get("lab-a"), Some(&expected(1, 1, 0)));
        // Going offline raises the machine's offline alarm.
        assert_eq!(labs.get("lab-b"), Some(&expected(1, 0, 1)));
        assert_eq!(labs.len(), 2);
    }

    fn sample(seq: u32, power: f64) -> TwinUpdate {
        TwinUpdate::Sample {
            historical: false,
            key: key(),
            seq,
            timestamp: u64::from(seq) * 1000,
            values: vec![
                (metric("spindle.power_w"), power),
                (metric("state.code"), 2.0),
            ],
        }
    }

    #[test]
    fn samples_leave_the_stored_alarm_state_behind_for_at_most_the_period() {
        let registry = registry();
        let t = 1_000_000;
        let born = registry.stored(&key(), false, AlarmStates::DueAt(t));
        let born = born.expect("twin");
        assert!(born.whole.is_some() && born.alarms.is_some(), "a birth");

        registry.apply(sample(1, 10.0));
        let sampled = registry.stored(&key(), false, AlarmStates::DueAt(t + 1));
        let sampled = sampled.expect("twin");
        assert!(sampled.live.is_some() && sampled.whole.is_none());
        assert!(sampled.alarms.is_none(), "a sample leaves it behind");
        let period = ALARM_STATE_EVERY_MS;
        assert!(
            registry
                .alarms_due(AlarmStates::DueAt(t + period))
                .is_empty()
        );
        assert_eq!(
            registry.alarms_due(AlarmStates::DueAt(t + 1 + period)),
            [key()]
        );
        assert_eq!(
            registry.alarms_due(AlarmStates::All),
            [key()],
            "a clean stop"
        );

        // More samples do not move when it fell behind.
        registry.apply(sample(2, 20.0));
        let again = registry.stored(&key(), false, AlarmStates::DueAt(t + period));
        assert!(again.expect("twin").alarms.is_none());
        let due = registry.stored(&key(), false, AlarmStates::DueAt(t + 1 + period));
        assert!(due.expect("twin").alarms.is_some());
        assert!(registry.alarms_due(AlarmStates::All).is_empty());

        // A raised alarm goes at once: going offline raises the offline alarm.
        registry.apply(sample(3, 30.0));
        registry.apply(TwinUpdate::Offline {
            key: key(),
            timestamp: 4_000,
        });
        let offline = registry.stored(&key(), false, AlarmStates::DueAt(t + 2 + period));
        let offline = offline.expect("twin");
        assert!(offline.whole.is_some() && offline.alarms.is_some());
        assert!(registry.alarms_due(AlarmStates::All).is_empty());
    }

    #[test]
    fn a_sample_a_jump_went_past_is_applied_once_when_it_arrives_late() {
        let registry = registry();
        for (seq, power) in [(1, 10.0), (2, 20.0), (5, 50.0)] {
            registry.apply(sample(seq, power));
        }
        assert_eq!(registry.get(&key()).expect("twin").missing_seqs, [3, 4]);
        // Redelivered behind newer ones: history, not the current value.
        assert_eq!(registry.apply(sample(3, 30.0)).map(|a| a.seq), Some(3));
        assert!(registry.apply(sample(3, 30.0)).is_none(), "once");
        assert!(registry.apply(sample(2, 20.0)).is_none(), "never skipped");
        let twin = registry.get(&key()).expect("twin");
        assert_eq!((twin.samples, twin.last_seq), (4, 5));
        assert_eq!(twin.missing_seqs, [4]);
        assert_eq!(twin.value("spindle.power_w"), Some(50.0));
    }

    #[test]
    fn desired_values_are_checked_against_the_kind_and_settled_by_command_results() {
        let registry = TwinRegistry::new(Arc::new(HubStats::default()), Arc::default());
        registry.apply(TwinUpdate::Birth {
            key: key(),
            boot: Some(1),
            node_seq: None,
            gateway: "gw-a".parse().expect("valid"),
            metrics: vec![
                (metric("spindle.power_w"), Unit::Watt),
                (metric("spindle.vibration_rms"), Unit::MillimetrePerSecond),
                (metric("production.parts"), Unit::Count),
            ],
            timestamp: 1,
        });
        assert_eq!(registry.get(&key()).expect("twin").kind, "cnc-mill");
        assert!(matches!(
            registry.request_desired(&key(), "spindle.power_w", 1.0, "olga", 2),
            Err(DesiredError::NotWritable { .. })
        ));
        assert!(matches!(
            registry.request_desired(&key(), "node.period_ms", 5.0, "olga", 2),
            Err(DesiredError::OutOfRange { .. })
        ));
        registry
            .request_desired(&key(), "node.period_ms", 500.0, "olga", 2)
            .expect("accepted");
        registry
            .request_desired(&key(), "node.identify_ms", 1000.0, "olga", 3)
            .expect("accepted");
        // A refusal without the metric's name settles the oldest pending request.
        registry.apply(TwinUpdate::Properties {
            key: key(),
            timestamp: 4,
            values: vec![(metric(COMMAND_RESULT_METRIC), 1.0)],
        });
        // An applied value names its metric.
        registry.apply(TwinUpdate::Properties {
            key: key(),
            timestamp: 5,
            values: vec![
                (metric("node.identify_ms"), 1000.0),
                (metric(COMMAND_RESULT_METRIC), 0.0),
            ],
        });
        let twin = registry.get(&key()).expect("twin");
        assert_eq!(
            twin.desired["node.period_ms"].status,
            DesiredStatus::Invalid
        );
        assert_eq!(
            twin.desired["node.identify_ms"].status,
            DesiredStatus::Applied
        );
        assert_eq!(twin.desired["node.identify_ms"].completed_at, Some(5));
        registry
            .request_desired(&key(), "node.period_ms", 1000.0, "olga", 10)
            .expect("accepted");
        registry.expire_desired(10 + 20_000, 15_000);
        let twin = registry.get(&key()).expect("twin");
        assert_eq!(
            twin.desired["node.period_ms"].status,
            DesiredStatus::NoAnswer
        );
    }

    /// A cnc-mill twin born with `boot`, whose operator asked for a period, an LED blink and
    /// (refused) an out-of-catalogue value, all answered.
    fn mill_with_applied_settings() -> TwinRegistry {
        let registry = TwinRegistry::new(Arc::new(HubStats::default()), Arc::default());
        registry.apply(mill_birth(Some(1)));
        for (metric_name, value, at) in
            [("node.period_ms", 500.0, 2), ("node.identify_ms", 900.0, 3)]
        {
            registry
                .request_desired(&key(), metric_name, value, "olga", at)
                .expect("accepted");
            registry.apply(TwinUpdate::Properties {
                key: key(),
                timestamp: at,
                values: vec![
                    (metric(metric_name), value),
                    (metric(COMMAND_RESULT_METRIC), 0.0),
                ],
            });
        }
        registry
    }

    fn mill_birth(boot: Option<u32>) -> TwinUpdate {
        TwinUpdate::Birth {
            key: key(),
            boot,
            node_seq: None,
            gateway: "gw-a".parse().expect("valid"),
            metrics: vec![
                (metric("spindle.power_w"), Unit::Watt),
                (metric("spindle.vibration_rms"), Unit::MillimetrePerSecond),
                (metric("production.parts"), Unit::Count),
            ],
            timestamp: 1,
        }
    }

    fn status(registry: &TwinRegistry, metric: &str) -> DesiredStatus {
        registry.get(&key()).expect("twin").desired[metric].status
    }

    #[test]
    fn a_new_boot_makes_applied_settings_pending_and_asks_for_them_again() {
        let registry = mill_with_applied_settings();
        assert_eq!(status(&registry, "node.period_ms"), DesiredStatus::Applied);
        let mut changes = registry.subscribe();

        let outcome = registry.apply_at(mill_birth(Some(2)), 50);

        let Outcome::Resend {
            key: resent_key,
            gateway,
            values,
        } = outcome
        else {
            panic!("expected a resend, got {outcome:?}");
        };
        assert_eq!((resent_key, gateway.as_str()), (key(), "gw-a"));
        assert_eq!(
            values,
            vec![("node.period_ms".to_owned(), 500.0)],
            "the LED blink is momentary: a reboot does not undo it"
        );
        let twin = registry.get(&key()).expect("twin");
        let period = &twin.desired["node.period_ms"];
        assert_eq!(
            (period.status, period.resent_at, period.completed_at),
            (DesiredStatus::Pending, Some(50), None)
        );
        assert_eq!(period.requested_at, 2, "who asked and when stays as it was");
        assert!(
            twin.features["node"].properties["period_ms"].stale,
            "the reported 500 ms belongs to the boot that ended"
        );
        assert_eq!(
            twin.desired["node.identify_ms"].status,
            DesiredStatus::Applied
        );
        let kinds: Vec<String> = std::iter::from_fn(|| changes.try_recv().ok())
            .map(|c| c.kind.clone())
            .collect();
        assert_eq!(kinds, ["birth", "desired"]);

        // Applied again only when the node reports the value.
        registry.apply(TwinUpdate::Properties {
            key: key(),
            timestamp: 60,
            values: vec![
                (metric("node.period_ms"), 500.0),
                (metric(COMMAND_RESULT_METRIC), 0.0),
            ],
        });
        let twin = registry.get(&key()).expect("twin");
        assert_eq!(
            twin.desired["node.period_ms"].status,
            DesiredStatus::Applied
        );
        assert_eq!(twin.desired["node.period_ms"].completed_at, Some(60));
        assert!(!twin.features["node"].properties["period_ms"].stale);
    }

    #[test]
    fn a_rebirth_of_the_same_boot_or_an_unknown_boot_sends_nothing_again() {
        let registry = mill_with_applied_settings();
        assert_eq!(
            registry.apply_at(mill_birth(Some(1)), 50),
            Outcome::Taken(None),
            "a gateway reconnect: the node kept its settings"
        );
        assert_eq!(
            registry.apply_at(mill_birth(None), 51),
            Outcome::Taken(None)
        );
        assert_eq!(status(&registry, "node.period_ms"), DesiredStatus::Applied);
    }

    #[test]
    fn a_value_the_node_refused_is_not_sent_again_after_a_reboot() {
        let registry = mill_with_applied_settings();
        registry
            .request_desired(&key(), "node.period_ms", 700.0, "olga", 5)
            .expect("accepted");
        registry.apply(TwinUpdate::Properties {
            key: key(),
            timestamp: 6,
            values: vec![(metric(COMMAND_RESULT_METRIC), 1.0)],
        });
        assert_eq!(status(&registry, "node.period_ms"), DesiredStatus::Invalid);
        assert_eq!(
            registry.apply_at(mill_birth(Some(2)), 50),
            Outcome::Taken(None)
        );
        assert_eq!(status(&registry, "node.period_ms"), DesiredStatus::Invalid);
    }

    #[test]
    fn a_resent_value_times_out_from_when_it_was_sent_again() {
        let registry = mill_with_applied_settings();
        registry.apply_at(mill_birth(Some(2)), 100_000);
        registry.expire_desired(100_000 + 10_000, 15_000);
        assert_eq!(status(&registry, "node.period_ms"), DesiredStatus::Pending);
        registry.expire_desired(100_000 + 20_000, 15_000);
        assert_eq!(status(&registry, "node.period_ms"), DesiredStatus::NoAnswer);
        // The node never answered: after its next boot it is asked again.
        assert!(matches!(
            registry.apply_at(mill_birth(Some(3)), 200_000),
            Outcome::Resend { .. }
        ));
        assert_eq!(status(&registry, "node.period_ms"), DesiredStatus::Pending);
    }

    #[test]
    fn a_birth_creates_an_online_twin_with_units() {
        let twin = registry().get(&key()).expect("born");
        assert!(twin.connectivity.online);
        assert_eq!(twin.features["spindle"].properties["power_w"].unit, "W");
        assert_eq!(twin.value("spindle.power_w"), None);
    }

    #[test]
    fn samples_update_values_and_state_and_duplicates_never_move_it_back() {
        let registry = registry();
        assert!(registry.apply(sample(1, 100.0)).is_some());
        assert!(registry.apply(sample(2, 200.0)).is_some());
        assert!(registry.apply(sample(2, 999.0)).is_none(), "duplicate");
        assert!(registry.apply(sample(1, 999.0)).is_none(), "late replay");
        let twin = registry.get(&key()).expect("exists");
        assert_eq!(twin.value("spindle.power_w"), Some(200.0));
        assert_eq!((twin.last_seq, twin.samples), (2, 2));
        assert_eq!(
            twin.state,
            StateInfo {
                value: "running".into(),
                since: Some(1000)
            }
        );
    }

    #[test]
    fn only_a_new_boot_restarts_the_sequence() {
        let registry = registry();
        registry.apply(sample(10, 10.0));
        let rebirth = |boot| TwinUpdate::Birth {
            key: key(),
            boot,
            node_seq: None,
            gateway: "gw-a".parse().expect("valid"),
            metrics: vec![],
            timestamp: 2,
        };
        // The gateway was born again (a reconnect): same boot, so old samples stay old.
        registry.apply(rebirth(Some(1)));
        assert!(
            registry.apply(sample(9, 9.0)).is_none(),
            "a replay from before the rebirth"
        );
        assert!(registry.apply(sample(11, 11.0)).is_some());
        // A birth that does not know the boot (a restarted gateway) changes nothing either.
        registry.apply(rebirth(None));
        assert!(registry.apply(sample(11, 11.0)).is_none());
        registry.apply(rebirth(Some(2)));
        assert!(
            registry.apply(sample(1, 1.0)).is_some(),
            "the node rebooted: its sequence restarts"
        );
        assert_eq!(
            registry
                .get(&key())
                .expect("exists")
                .value("spindle.power_w"),
            Some(1.0)
        );
    }

    #[test]
    fn historical_samples_are_counted_and_streamed_but_leave_live_values_alone() {
        let registry = registry();
        let mut rx = registry.subscribe();
        registry.apply(sample(1, 100.0));
        let TwinUpdate::Sample {
            key: twin_key,
            seq,
            timestamp,
            values,
            ..
        } = sample(2, 5.0)
        else {
            unreachable!("a sample")
        };
        assert!(
            registry
                .apply(TwinUpdate::Sample {
                    key: twin_key,
                    seq,
                    timestamp,
                    values,
                    historical: true
                })
                .is_some()
        );
        let twin = registry.get(&key()).expect("exists");
        assert_eq!(twin.value("spindle.power_w"), Some(100.0));
        assert_eq!(
            (twin.last_seq, twin.samples, twin.historical_samples),
            (2, 2, 1)
        );
        assert_eq!(rx.try_recv().expect("live").kind, "sample");
        assert_eq!(rx.try_recv().expect("replayed").kind, "historical");
    }

    #[test]
    fn changes_are_broadcast_in_order() {
        let registry = registry();
        let mut rx = registry.subscribe();
        registry.apply(sample(1, 1.0));
        registry.apply(sample(2, 2.0));
        assert_eq!(rx.try_recv().expect("first").seq, Some(1));
        assert_eq!(rx.try_recv().expect("second").seq, Some(2));
    }

    #[test]
    fn offline_marks_the_twin_and_samples_for_unknown_twins_are_counted() {
        let stats = Arc::new(HubStats::default());
        let registry = TwinRegistry::new(stats.clone(), Arc::default());
        assert!(registry.apply(sample(1, 1.0)).is_none());
        assert_eq!(stats.dropped(IngestDrop::UnknownTwin), 1);
        let registry = super::tests::registry();
        registry.apply(TwinUpdate::Offline {
            key: key(),
            timestamp: 5,
        });
        assert!(!registry.get(&key()).expect("exists").connectivity.online);
    }

    fn limited(limits: Limits) -> (Arc<HubStats>, TwinRegistry) {
        let stats = Arc::new(HubStats::default());
        let registry = TwinRegistry::with_limits(stats.clone(), Arc::default(), limits);
        (stats, registry)
    }

    fn birth_of(key: TwinKey, node_seq: Option<u32>, metrics: &[&str]) -> TwinUpdate {
        TwinUpdate::Birth {
            key,
            boot: Some(1),
            node_seq,
            gateway: "gw-a".parse().expect("valid"),
            metrics: metrics.iter().map(|m| (metric(m), Unit::Watt)).collect(),
            timestamp: 1,
        }
    }

    #[test]
    fn a_forged_jump_of_node_seq_is_refused_and_the_real_samples_keep_applying() {
        let (stats, registry) = limited(Limits {
            seq_window: 100,
            ..Limits::default()
        });
        registry.apply_at(birth_of(key(), Some(0), &["spindle.power_w"]), 0);
        assert!(registry.apply_at(sample(1, 1.0), 0).applied().is_some());
        let forged = registry.apply_at(sample(u32::MAX, 666.0), 0);
        assert_eq!(
            forged,
            Outcome::SeqJump {
                gateway: Some("gw-a".parse().expect("valid")),
                seq: u32::MAX,
                last_seq: 1
            }
        );
        for seq in 2..=5 {
            assert!(
                registry
                    .apply_at(sample(seq, f64::from(seq)), 0)
                    .applied()
                    .is_some()
            );
        }
        // The edge of the window is still taken.
        assert!(registry.apply_at(sample(105, 105.0), 0).applied().is_some());
        let twin = registry.get(&key()).expect("exists");
        assert_eq!((twin.last_seq, twin.samples), (105, 6));
        assert_eq!(twin.value("spindle.power_w"), Some(105.0));
        assert_eq!(stats.dropped(IngestDrop::SeqJump), 1);
    }

    #[test]
    fn a_birth_re_anchors_the_window_on_the_sequence_its_gateway_reports() {
        let (stats, registry) = limited(Limits {
            seq_window: 100,
            ..Limits::default()
        });
        registry.apply_at(birth_of(key(), Some(0), &["spindle.power_w"]), 0);
        registry.apply_at(sample(1, 1.0), 0);
        // The node was cut off for long: its sequence really jumped.
        assert!(matches!(
            registry.apply_at(sample(5_000, 1.0), 0),
            Outcome::SeqJump { .. }
        ));
        // The rebirth that the jump asked for says where the node is.
        registry.apply_at(birth_of(key(), Some(5_000), &[]), 0);
        assert!(registry.apply_at(sample(5_001, 2.0), 0).applied().is_some());
        assert_eq!(stats.dropped(IngestDrop::SeqJump), 1);
    }

    #[test]
    fn a_lab_holds_at_most_its_cap_of_twins_and_a_twin_its_cap_of_metrics() {
        let (stats, registry) = limited(Limits {
            max_twins_per_lab: 2,
            max_metrics_per_device: 2,
            ..Limits::default()
        });
        for machine in ["m-1", "m-2", "m-3"] {
            let key = TwinKey::parse(&format!("lab-a/{machine}")).expect("key");
            registry.apply_at(birth_of(key, None, &["a.one", "a.two", "a.three"]), 0);
        }
        let other_lab = TwinKey::parse("lab-b/m-1").expect("key");
        registry.apply_at(birth_of(other_lab, None, &[]), 0);
        assert_eq!(registry.len(), 3);
        assert_eq!(stats.dropped(IngestDrop::TooManyTwins), 1);
        assert_eq!(stats.dropped(IngestDrop::TooManyMetrics), 2);
        let m1 = TwinKey::parse("lab-a/m-1").expect("key");
        let applied = registry.apply_at(
            TwinUpdate::Properties {
                key: m1.clone(),
                timestamp: 2,
                values: vec![(metric("a.one"), 1.0), (metric("b.invented"), 2.0)],
            },
            0,
        );
        let Outcome::Taken(Some(applied)) = applied else {
            panic!("taken: {applied:?}")
        };
        assert_eq!(applied.values, vec![(metric("a.one"), 1.0)], "history too");
        assert_eq!(registry.get(&m1).expect("twin").property_count(), 2);
        assert_eq!(stats.dropped(IngestDrop::TooManyMetrics), 3);
        // Retiring frees a place in the lab.
        assert!(registry.retire(&m1, 3).is_some());
        let m3 = TwinKey::parse("lab-a/m-3").expect("key");
        registry.apply_at(birth_of(m3.clone(), None, &[]), 0);
        assert!(registry.get(&m3).is_some());
    }

    #[test]
    fn a_twin_without_accepted_samples_for_the_silence_goes_stale_until_the_next_one() {
        let registry = registry();
        let mut changes = registry.subscribe();
        registry.apply_at(sample(1, 1.0), 1_000);
        assert_eq!(registry.mark_silent(60_999, 60_000), 0);
        assert_eq!(registry.mark_silent(61_000, 60_000), 1);
        assert_eq!(registry.mark_silent(62_000, 60_000), 0, "marked once");
        let twin = registry.get(&key()).expect("exists");
        assert!(twin.connectivity.online && twin.connectivity.stale);
        assert!(twin.features["spindle"].properties["power_w"].stale);
        let kinds: Vec<String> = std::iter::from_fn(|| changes.try_recv().ok())
            .map(|c| c.kind.clone())
            .collect();
        assert_eq!(kinds, ["sample", "stale"]);
        // Refused samples do not count as life.
        registry.apply_at(sample(1, 9.0), 63_000);
        assert!(registry.get(&key()).expect("exists").connectivity.stale);
        registry.apply_at(sample(2, 2.0), 64_000);
        let twin = registry.get(&key()).expect("exists");
        assert!(!twin.connectivity.stale);
        assert!(!twin.features["spindle"].properties["power_w"].stale);
    }

    #[test]
    fn a_mirrored_twin_streams_but_never_waits_to_be_committed_here() {
        let owner = registry();
        let copy = owner.persisted(&key()).expect("a twin");
        let replica = TwinRegistry::new(Arc::new(HubStats::default()), Arc::default());
        let mut changes = replica.subscribe();
        replica.mirror([copy]);
        assert_eq!(changes.try_recv().expect("a change").kind, "mirror");
        assert!(replica.is_mirrored(&key()));
        assert!(
            replica.take_dirty().is_empty(),
            "its owner commits it, not this replica"
        );
    }

    #[test]
    fn a_retired_twin_leaves_the_registry_and_the_streams_hear_it_once() {
        let stats = Arc::new(HubStats::default());
        let registry = TwinRegistry::new(stats.clone(), Arc::default());
        registry.apply_at(birth_of(key(), None, &["spindle.power_w"]), 0);
        registry.take_dirty();
        let mut changes = registry.subscribe();
        assert!(registry.retire(&key(), 5).is_some());
        assert!(registry.retire(&key(), 6).is_none(), "gone");
        assert!(registry.get(&key()).is_none());
        assert!(registry.sparkplug_path(&key()).is_none());
        assert_eq!(changes.try_recv().expect("a change").kind, "retired");
        assert!(registry.take_dirty().is_empty(), "nothing to save");
        assert_eq!(registry.take_retired(), vec![key()]);
        assert_eq!(stats.twins_retired(), 1);
        assert!(registry.apply_at(sample(1, 1.0), 7).applied().is_none());
        assert_eq!(stats.dropped(IngestDrop::UnknownTwin), 1);
    }

    #[test]
    fn twins_no_lab_lists_are_named_as_candidates_for_retirement() {
        let lab = crate::directory::LabConfig {
            id: "lab-a".parse().expect("valid"),
            name: String::new(),
            location: String::new(),
            gateways: vec![],
            machines: vec![crate::directory::MachineConfig {
                id: "mill-1".parse().expect("valid"),
                kind: None,
                name: None,
                line: None,
                attributes: BTreeMap::new(),
            }],
            accept_new_machines: false,
        };
        let directory = Directory::new(crate::catalogue::Catalogue::builtin(), vec![lab], vec![])
            .expect("valid");
        let registry = TwinRegistry::new(Arc::default(), Arc::new(directory));
        let stray = TwinKey::parse("lab-b/m-9").expect("key");
        registry.apply(birth_of(key(), None, &[]));
        registry.apply(birth_of(stray.clone(), None, &[]));
        assert_eq!(registry.unlisted(), vec![stray]);
    }
}
