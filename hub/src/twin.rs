//! The twin model and the live twin registry.
//!
//! A twin is a machine: identity, connectivity, state, and features → properties with the last
//! reported value and its source timestamp. Updates carry the node's sequence number; an update
//! whose sequence is not newer than the twin's is ignored, so duplicates and late replays never
//! move a twin backwards. The registry is sharded ([`DashMap`]): no global lock on ingest.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::DashMap;
use protocol::{GatewayId, LabId, MachineId, MachineState, MetricName, Unit};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::stats::{HubStats, IngestDrop};

/// Metric whose value is the machine's [`MachineState`] code.
pub const STATE_METRIC: &str = "state.code";

/// `lab/machine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TwinKey {
    /// The lab.
    pub lab: LabId,
    /// The machine.
    pub machine: MachineId,
}

impl std::fmt::Display for TwinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.lab, self.machine)
    }
}

/// A reported property value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Property {
    /// Last reported value; `None` until the first sample after birth.
    pub reported: Option<f64>,
    /// Unit symbol (see `protocol::Unit::symbol`).
    pub unit: String,
    /// Source timestamp of `reported`, ms since the epoch.
    pub timestamp: Option<u64>,
}

/// A feature: a group of properties (`spindle` of `spindle.power_w`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// Properties by name.
    pub properties: BTreeMap<String, Property>,
}

/// Whether and how the twin is connected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connectivity {
    /// Its gateway session is alive and the device was born.
    pub online: bool,
    /// The gateway it is reached through.
    pub gateway: Option<String>,
    /// Last message about it, ms since the epoch.
    pub last_seen: Option<u64>,
}

/// The machine's operating state and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateInfo {
    /// `off`, `idle`, `running`, `warming`, `fault` or `unknown`.
    pub value: String,
    /// When it entered that state, ms since the epoch.
    pub since: Option<u64>,
}

/// A digital twin of one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    /// `lab/machine`.
    pub id: String,
    /// The lab.
    pub lab: String,
    /// The machine.
    pub machine: String,
    /// Connectivity.
    pub connectivity: Connectivity,
    /// Operating state.
    pub state: StateInfo,
    /// Features and their properties.
    pub features: BTreeMap<String, Feature>,
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
}

impl Twin {
    fn new(key: &TwinKey) -> Self {
        Twin {
            id: key.to_string(),
            lab: key.lab.to_string(),
            machine: key.machine.to_string(),
            connectivity: Connectivity::default(),
            state: StateInfo {
                value: "unknown".into(),
                since: None,
            },
            features: BTreeMap::new(),
            boot: None,
            last_seq: 0,
            samples: 0,
            historical_samples: 0,
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

    fn property_mut(&mut self, name: &MetricName) -> &mut Property {
        self.features
            .entry(name.feature().to_owned())
            .or_default()
            .properties
            .entry(name.property().to_owned())
            .or_insert_with(|| Property {
                reported: None,
                unit: String::new(),
                timestamp: None,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinChange {
    /// `birth`, `sample` or `offline`.
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
}

/// The live twins, shared by ingest, API and persistence.
#[derive(Debug)]
pub struct TwinRegistry {
    twins: DashMap<TwinKey, Twin>,
    dirty: DashMap<TwinKey, ()>,
    changes: broadcast::Sender<Arc<TwinChange>>,
    stats: Arc<HubStats>,
}

/// How many changes a slow stream client may fall behind before it is told it lagged.
const CHANGE_BUFFER: usize = 8192;

impl TwinRegistry {
    /// An empty registry.
    pub fn new(stats: Arc<HubStats>) -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Self {
            twins: DashMap::new(),
            dirty: DashMap::new(),
            changes,
            stats,
        }
    }

    /// Restores twins loaded from storage; they stay offline until their gateway births them.
    pub fn restore(&self, twins: impl IntoIterator<Item = Twin>) {
        for mut twin in twins {
            let (Ok(lab), Ok(machine)) = (twin.lab.parse(), twin.machine.parse()) else {
                continue;
            };
            twin.connectivity.online = false;
            self.twins.insert(TwinKey { lab, machine }, twin);
        }
    }

    /// Subscribes to every future change.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TwinChange>> {
        self.changes.subscribe()
    }

    /// A copy of one twin.
    pub fn get(&self, key: &TwinKey) -> Option<Twin> {
        self.twins.get(key).map(|t| t.clone())
    }

    /// Copies of all twins (optionally of one lab), sorted by id.
    pub fn list(&self, lab: Option<&LabId>) -> Vec<Twin> {
        let mut twins: Vec<Twin> = self
            .twins
            .iter()
            .filter(|entry| lab.is_none_or(|lab| &entry.key().lab == lab))
            .map(|entry| entry.value().clone())
            .collect();
        twins.sort_by(|a, b| a.id.cmp(&b.id));
        twins
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
        let keys: Vec<TwinKey> = self.dirty.iter().map(|e| e.key().clone()).collect();
        for key in &keys {
            self.dirty.remove(key);
        }
        keys
    }

    /// Applies an update; returns whether the twin changed.
    pub fn apply(&self, update: TwinUpdate) -> bool {
        let (key, change) = match update {
            TwinUpdate::Birth {
                key,
                gateway,
                boot,
                metrics,
                timestamp,
            } => {
                let mut twin = self
                    .twins
                    .entry(key.clone())
                    .or_insert_with(|| Twin::new(&key));
                twin.connectivity = Connectivity {
                    online: true,
                    gateway: Some(gateway.to_string()),
                    last_seen: Some(timestamp),
                };
                if boot.is_some() && boot != twin.boot {
                    twin.boot = boot;
                    twin.last_seq = 0;
                }
                for (name, unit) in &metrics {
                    twin.property_mut(name).unit = unit.symbol().to_owned();
                }
                let change = change("birth", &twin, None, timestamp, BTreeMap::new());
                drop(twin);
                (key, change)
            }
            TwinUpdate::Sample {
                key,
                seq,
                timestamp,
                values,
                historical,
            } => {
                let Some(mut twin) = self.twins.get_mut(&key) else {
                    self.stats.ingest_dropped(IngestDrop::UnknownTwin);
                    return false;
                };
                if seq <= twin.last_seq {
                    self.stats.ingest_dropped(IngestDrop::StaleSequence);
                    return false;
                }
                twin.last_seq = seq;
                twin.samples += 1;
                if historical {
                    twin.historical_samples += 1;
                    let values = values
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v))
                        .collect();
                    self.stats.sample_applied();
                    let change = change("historical", &twin, Some(seq), timestamp, values);
                    drop(twin);
                    (key, change)
                } else {
                    twin.connectivity.online = true;
                    twin.connectivity.last_seen = Some(timestamp);
                    let mut changed = BTreeMap::new();
                    for (name, value) in values {
                        if name.as_str() == STATE_METRIC {
                            let state = state_name(value);
                            if twin.state.value != state {
                                twin.state = StateInfo {
                                    value: state.to_owned(),
                                    since: Some(timestamp),
                                };
                            }
                        }
                        let property = twin.property_mut(&name);
                        property.reported = Some(value);
                        property.timestamp = Some(timestamp);
                        changed.insert(name.to_string(), value);
                    }
                    self.stats.sample_applied();
                    let change = change("sample", &twin, Some(seq), timestamp, changed);
                    drop(twin);
                    (key, change)
                }
            }
            TwinUpdate::Properties {
                key,
                timestamp,
                values,
            } => {
                let Some(mut twin) = self.twins.get_mut(&key) else {
                    self.stats.ingest_dropped(IngestDrop::UnknownTwin);
                    return false;
                };
                let mut changed = BTreeMap::new();
                for (name, value) in values {
                    let property = twin.property_mut(&name);
                    property.reported = Some(value);
                    property.timestamp = Some(timestamp);
                    changed.insert(name.to_string(), value);
                }
                let change = change("properties", &twin, None, timestamp, changed);
                drop(twin);
                (key, change)
            }
            TwinUpdate::Offline { key, timestamp } => {
                let Some(mut twin) = self.twins.get_mut(&key) else {
                    return false;
                };
                twin.connectivity.online = false;
                let change = change("offline", &twin, None, timestamp, BTreeMap::new());
                drop(twin);
                (key, change)
            }
        };
        self.dirty.insert(key, ());
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(Arc::new(change));
        true
    }
}

fn state_name(code: f64) -> &'static str {
    if !(0.0..=255.0).contains(&code) {
        return "unknown";
    }
    MachineState::from_code(code as u8).map_or("unknown", MachineState::as_str)
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
    }
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
        let registry = TwinRegistry::new(Arc::new(HubStats::default()));
        registry.apply(TwinUpdate::Birth {
            key: key(),
            boot: Some(1),
            gateway: "gw-a".parse().expect("valid"),
            metrics: vec![
                (metric("spindle.power_w"), Unit::Watt),
                (metric("state.code"), Unit::StateCode),
            ],
            timestamp: 1,
        });
        registry
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
    fn a_birth_creates_an_online_twin_with_units() {
        let twin = registry().get(&key()).expect("born");
        assert!(twin.connectivity.online);
        assert_eq!(twin.features["spindle"].properties["power_w"].unit, "W");
        assert_eq!(twin.value("spindle.power_w"), None);
    }

    #[test]
    fn samples_update_values_and_state_and_duplicates_never_move_it_back() {
        let registry = registry();
        assert!(registry.apply(sample(1, 100.0)));
        assert!(registry.apply(sample(2, 200.0)));
        assert!(!registry.apply(sample(2, 999.0)), "duplicate");
        assert!(!registry.apply(sample(1, 999.0)), "late replay");
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
            gateway: "gw-a".parse().expect("valid"),
            metrics: vec![],
            timestamp: 2,
        };
        // The gateway was born again (a reconnect): same boot, so old samples stay old.
        registry.apply(rebirth(Some(1)));
        assert!(
            !registry.apply(sample(9, 9.0)),
            "a replay from before the rebirth"
        );
        assert!(registry.apply(sample(11, 11.0)));
        // A birth that does not know the boot (a restarted gateway) changes nothing either.
        registry.apply(rebirth(None));
        assert!(!registry.apply(sample(11, 11.0)));
        registry.apply(rebirth(Some(2)));
        assert!(
            registry.apply(sample(1, 1.0)),
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
        assert!(registry.apply(TwinUpdate::Sample {
            key: twin_key,
            seq,
            timestamp,
            values,
            historical: true
        }));
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
        let registry = TwinRegistry::new(stats.clone());
        assert!(!registry.apply(sample(1, 1.0)));
        assert_eq!(stats.dropped(IngestDrop::UnknownTwin), 1);
        let registry = super::tests::registry();
        registry.apply(TwinUpdate::Offline {
            key: key(),
            timestamp: 5,
        });
        assert!(!registry.get(&key()).expect("exists").connectivity.online);
    }
}
