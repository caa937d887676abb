//! The Sparkplug B primary host, sans-IO: topic + payload in, twin updates and rebirth requests out.
//!
//! It tracks every edge node session (bdSeq, seq, born devices and their aliases), pairs NDEATH
//! with its NBIRTH by bdSeq, counts seq gaps, and requests a rebirth when data arrives for
//! something it has no birth for (e.g. after the hub restarted mid-session).

use std::collections::{HashMap, HashSet};

use prost::Message;
use protocol::sparkplug::{
    BD_SEQ_METRIC, DataType, MessageType, Metric, MetricValue, Payload, PropertyValueKind, Topic,
    metric_value_f64, seq_gap,
};
use protocol::{GatewayId, LabId, MachineId, MetricName, Unit};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::stats::{HubStats, IngestDrop};
use crate::twin::{PathFacts, SparkplugHop, TwinKey, TwinUpdate};

/// The metric carrying the node's sample sequence (written by gateways).
pub const NODE_SEQ_METRIC: &str = protocol::metric_names::NODE_SEQ;
/// The DBIRTH metric carrying the node's boot id (written by gateways).
pub const NODE_BOOT_METRIC: &str = protocol::metric_names::NODE_BOOT;
/// The birth property carrying a metric's unit symbol.
pub const UNIT_PROPERTY: &str = "engUnit";

/// What the host wants done.
#[derive(Debug, Clone, PartialEq)]
pub enum HostAction {
    /// Apply to the twin registry.
    Twin(TwinUpdate),
    /// Publish an NCMD `Node Control/Rebirth` to this edge node.
    RequestRebirth {
        /// Its group.
        lab: LabId,
        /// The edge node.
        gateway: GatewayId,
    },
}

#[derive(Debug, Default)]
struct Device {
    aliases: HashMap<u64, (MetricName, Option<DataType>)>,
    seq_alias: Option<u64>,
}

#[derive(Debug, Default)]
struct EdgeSession {
    bd_seq: Option<u64>,
    last_seq: Option<u64>,
    born: bool,
    rebirth_requested: bool,
    devices: HashMap<MachineId, Device>,
    /// A seq gap seen at this time whose missing messages have not turned up.
    gap_since: Option<u64>,
}

/// How long a Sparkplug seq gap may stay open before the host asks for a rebirth. One MQTT
/// session delivers in order, so a gap is normally a loss; the wait covers redelivery across a
/// reconnect and ingest shared between hub replicas.
pub const REORDER_TIMEOUT_MS: u64 = 2_000;

/// State of every edge node the host has heard of.
#[derive(Debug, Default)]
pub struct PrimaryHost {
    edges: HashMap<(LabId, GatewayId), EdgeSession>,
    /// Gateways each configured lab admits; labs not listed admit any gateway.
    registrations: HashMap<LabId, HashSet<GatewayId>>,
    /// What the last message handled said about a machine's path (protocol view).
    path: Option<PathFacts>,
}

/// What survives a hub restart of the host's sessions: who is born, with which bdSeq and
/// aliases. Without it, data queued in the broker while the hub was down (a persistent session)
/// could not be decoded after the restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSnapshot {
    edges: Vec<EdgeSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct EdgeSnapshot {
    lab: LabId,
    gateway: GatewayId,
    bd_seq: Option<u64>,
    born: bool,
    devices: Vec<DeviceSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DeviceSnapshot {
    machine: MachineId,
    seq_alias: Option<u64>,
    /// (alias, metric, Sparkplug data type number).
    aliases: Vec<(u64, MetricName, Option<u32>)>,
}

impl PrimaryHost {
    /// A host that admits only the listed gateways into each listed lab.
    pub fn with_registrations(registrations: HashMap<LabId, HashSet<GatewayId>>) -> Self {
        Self {
            registrations,
            ..Self::default()
        }
    }

    /// Asks for a rebirth of every edge node whose seq gap stayed open past
    /// [`REORDER_TIMEOUT_MS`]; ingest calls this periodically.
    pub fn tick(&mut self, now_ms: u64, stats: &HubStats) -> Vec<HostAction> {
        let mut actions = Vec::new();
        for ((lab, gateway), edge) in &mut self.edges {
            if edge
                .gap_since
                .is_some_and(|since| now_ms.saturating_sub(since) >= REORDER_TIMEOUT_MS)
            {
                edge.gap_since = None;
                actions.extend(ask_for_rebirth(
                    edge,
                    lab,
                    gateway,
                    stats,
                    "a seq gap stayed open",
                ));
            }
        }
        actions
    }

    /// The sessions, for persistence.
    pub fn snapshot(&self) -> HostSnapshot {
        let mut edges: Vec<EdgeSnapshot> = self
            .edges
            .iter()
            .map(|((lab, gateway), edge)| EdgeSnapshot {
                lab: lab.clone(),
                gateway: gateway.clone(),
                bd_seq: edge.bd_seq,
                born: edge.born,
                devices: edge
                    .devices
                    .iter()
                    .map(|(machine, device)| DeviceSnapshot {
                        machine: machine.clone(),
                        seq_alias: device.seq_alias,
                        aliases: device
                            .aliases
                            .iter()
                            .map(|(alias, (name, datatype))| {
                                (*alias, name.clone(), datatype.map(|d| d as u32))
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        edges.sort_by(|a, b| (&a.lab, &a.gateway).cmp(&(&b.lab, &b.gateway)));
        HostSnapshot { edges }
    }

    /// Continues from a snapshot. The Sparkplug `seq` is not restored: the first message after
    /// a restart starts the gap check afresh instead of reporting a false gap.
    pub fn restore(&mut self, snapshot: HostSnapshot) {
        for edge in snapshot.edges {
            let devices = edge
                .devices
                .into_iter()
                .map(|device| {
                    let aliases = device
                        .aliases
                        .into_iter()
                        .map(|(alias, name, datatype)| {
                            (alias, (name, datatype.and_then(DataType::from_u32)))
                        })
                        .collect();
                    (
                        device.machine,
                        Device {
                            aliases,
                            seq_alias: device.seq_alias,
                        },
                    )
                })
                .collect();
            self.edges.insert(
                (edge.lab, edge.gateway),
                EdgeSession {
                    bd_seq: edge.bd_seq,
                    last_seq: None,
                    born: edge.born,
                    rebirth_requested: false,
                    devices,
                    gap_since: None,
                },
            );
        }
    }
}

fn bd_seq_of(payload: &Payload) -> Option<u64> {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BD_SEQ_METRIC))
        .and_then(|m| match m.value {
            Some(MetricValue::Long(v)) => Some(v),
            Some(MetricValue::Int(v)) => Some(u64::from(v)),
            _ => None,
        })
}

fn unit_of(metric: &Metric) -> Unit {
    metric
        .properties
        .as_ref()
        .and_then(|p| {
            let at = p.keys.iter().position(|k| k == UNIT_PROPERTY)?;
            match &p.values.get(at)?.value {
                Some(PropertyValueKind::String(symbol)) => Unit::from_symbol(symbol),
                _ => None,
            }
        })
        .unwrap_or(Unit::Dimensionless)
}

impl PrimaryHost {
    /// The Sparkplug facts of the last message [`on_message`](Self::on_message) handled, when
    /// it was a DBIRTH or DDATA it accepted; taken so each message's facts are seen once.
    pub fn take_path(&mut self) -> Option<PathFacts> {
        self.path.take()
    }

    /// Handles one received message.
    pub fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
        stats: &HubStats,
    ) -> Vec<HostAction> {
        stats.message_received();
        self.path = None;
        let (lab, kind, gateway, machine) = match Topic::parse(topic) {
            Ok(Topic::Message {
                lab,
                kind,
                gateway,
                machine,
            }) => (lab, kind, gateway, machine),
            // STATE messages (ours or another host's) carry no machine data.
            Ok(Topic::State { .. }) => return Vec::new(),
            Err(err) => {
                stats.ingest_dropped(IngestDrop::BadTopic);
                warn!(topic, %err, "dropped a message on an invalid Sparkplug topic");
                return Vec::new();
            }
        };
        let payload = match Payload::decode(payload) {
            Ok(payload) => payload,
            Err(err) => {
                stats.ingest_dropped(IngestDrop::BadPayload);
                warn!(%lab, %gateway, topic, %err, "dropped an undecodable Sparkplug payload");
                return Vec::new();
            }
        };
        if let Some(admitted) = self.registrations.get(&lab)
            && !admitted.contains(&gateway)
        {
            stats.ingest_dropped(IngestDrop::UnregisteredGateway);
            warn!(%lab, %gateway, "dropped a message from a gateway not registered for its lab");
            return Vec::new();
        }
        let edge = self
            .edges
            .entry((lab.clone(), gateway.clone()))
            .or_default();

        if let (Some(previous), Some(seq)) = (edge.last_seq, payload.seq)
            && edge.born
            && !matches!(kind, MessageType::NBirth)
            && seq_gap(previous, seq).is_some_and(|gap| gap > 0)
        {
            stats.seq_gap();
            warn!(%lab, %gateway, previous, seq, "Sparkplug seq gap");
            edge.gap_since.get_or_insert(now_ms);
        }
        if payload.seq.is_some() && !matches!(kind, MessageType::NCmd | MessageType::DCmd) {
            edge.last_seq = payload.seq;
        }
        let timestamp = payload.timestamp.unwrap_or(now_ms);
        match (kind, machine) {
            (MessageType::NBirth, _) => {
                stats.birth();
                edge.bd_seq = bd_seq_of(&payload);
                edge.born = true;
                edge.rebirth_requested = false;
                edge.gap_since = None;
                // A new session: devices must be born again, and their old aliases are void.
                edge.devices.clear();
                info!(%lab, %gateway, bd_seq = ?edge.bd_seq, "edge node born");
                Vec::new()
            }
            (MessageType::NDeath, _) => {
                let bd_seq = bd_seq_of(&payload);
                if edge.bd_seq.is_some() && bd_seq != edge.bd_seq {
                    debug!(%lab, %gateway, ?bd_seq, current = ?edge.bd_seq, "ignoring NDEATH of an older session");
                    return Vec::new();
                }
                stats.death();
                edge.born = false;
                info!(%lab, %gateway, "edge node died");
                edge.devices
                    .drain()
                    .map(|(machine, _)| {
                        HostAction::Twin(TwinUpdate::Offline {
                            key: TwinKey {
                                lab: lab.clone(),
                                machine,
                            },
                            timestamp,
                        })
                    })
                    .collect()
            }
            (MessageType::DBirth, Some(machine)) => {
                if !edge.born {
                    return request_rebirth(edge, lab, gateway, stats);
                }
                stats.birth();
                let mut device = Device::default();
                let mut metrics = Vec::new();
                let mut boot = None;
                for metric in &payload.metrics {
                    let Some(name) = metric.name.as_deref() else {
                        continue;
                    };
                    if name == NODE_SEQ_METRIC {
                        device.seq_alias = metric.alias;
                        continue;
                    }
                    if name == NODE_BOOT_METRIC {
                        boot = seq_value(metric);
                        continue;
                    }
                    match name.parse::<MetricName>() {
                        Ok(parsed) => {
                            if let Some(alias) = metric.alias {
                                let datatype = metric.datatype.and_then(DataType::from_u32);
                                device.aliases.insert(alias, (parsed.clone(), datatype));
                            }
                            metrics.push((parsed, unit_of(metric)));
                        }
                        Err(err) => {
                            warn!(%lab, %machine, %err, "ignoring a metric with an invalid name")
                        }
                    }
                }
                let aliases = device
                    .aliases
                    .iter()
                    .map(|(alias, (name, _))| (name.to_string(), *alias))
                    .collect();
                self.path = Some(PathFacts {
                    key: TwinKey {
                        lab: lab.clone(),
                        machine: machine.clone(),
                    },
                    gateway: gateway.to_string(),
                    hop: hop("DBIRTH", topic, &payload, edge.bd_seq),
                    birth: Some((aliases, device.seq_alias)),
                });
                edge.devices.insert(machine.clone(), device);
                vec![HostAction::Twin(TwinUpdate::Birth {
                    key: TwinKey { lab, machine },
                    gateway,
                    boot,
                    metrics,
                    timestamp,
                })]
            }
            (MessageType::DDeath, Some(machine)) => {
                stats.death();
                edge.devices.remove(&machine);
                vec![HostAction::Twin(TwinUpdate::Offline {
                    key: TwinKey { lab, machine },
                    timestamp,
                })]
            }
            (MessageType::DData, Some(machine)) => {
                let Some(device) = edge.devices.get(&machine).filter(|_| edge.born) else {
                    return request_rebirth(edge, lab, gateway, stats);
                };
                self.path = Some(PathFacts {
                    key: TwinKey {
                        lab: lab.clone(),
                        machine: machine.clone(),
                    },
                    gateway: gateway.to_string(),
                    hop: hop("DDATA", topic, &payload, edge.bd_seq),
                    birth: None,
                });
                data_update(device, TwinKey { lab, machine }, &payload, timestamp, stats)
                    .map(|u| vec![HostAction::Twin(u)])
                    .unwrap_or_default()
            }
            (MessageType::NData, _) if !edge.born => request_rebirth(edge, lab, gateway, stats),
            // Node-level data carries no machine values yet; commands are for edge nodes.
            _ => Vec::new(),
        }
    }
}

fn hop(message: &str, topic: &str, payload: &Payload, bd_seq: Option<u64>) -> SparkplugHop {
    SparkplugHop {
        message: message.to_owned(),
        topic: topic.to_owned(),
        seq: payload.seq,
        bd_seq,
    }
}

/// The value of a UInt32 metric (`node.seq`, `node.boot`). UInt32 arrives in `long_value` from Tahu-style encoders and
/// in `int_value` from others.
fn seq_value(metric: &Metric) -> Option<u32> {
    match metric.value {
        Some(MetricValue::Int(v)) => Some(v),
        Some(MetricValue::Long(v)) => u32::try_from(v).ok(),
        _ => None,
    }
}

/// Asks the edge node for a rebirth, once until its next NBIRTH.
fn ask_for_rebirth(
    edge: &mut EdgeSession,
    lab: &LabId,
    gateway: &GatewayId,
    stats: &HubStats,
    why: &str,
) -> Vec<HostAction> {
    if edge.rebirth_requested {
        return Vec::new();
    }
    edge.rebirth_requested = true;
    stats.rebirth_requested();
    info!(%lab, %gateway, why, "requesting a rebirth");
    vec![HostAction::RequestRebirth {
        lab: lab.clone(),
        gateway: gateway.clone(),
    }]
}

fn request_rebirth(
    edge: &mut EdgeSession,
    lab: LabId,
    gateway: GatewayId,
    stats: &HubStats,
) -> Vec<HostAction> {
    stats.ingest_dropped(IngestDrop::DataBeforeBirth);
    ask_for_rebirth(edge, &lab, &gateway, stats, "data without a birth")
}

fn data_update(
    device: &Device,
    key: TwinKey,
    payload: &Payload,
    timestamp: u64,
    stats: &HubStats,
) -> Option<TwinUpdate> {
    let mut seq = None;
    let mut historical = false;
    let mut values = Vec::with_capacity(payload.metrics.len());
    for metric in &payload.metrics {
        // Store-and-forward replays flag their metrics: the twin counts them but keeps its live values.
        historical |= metric.is_historical == Some(true);
        let is_seq = match (metric.alias, metric.name.as_deref()) {
            (_, Some(name)) => name == NODE_SEQ_METRIC,
            (Some(alias), None) => device.seq_alias == Some(alias),
            (None, None) => false,
        };
        if is_seq {
            seq = seq_value(metric);
            continue;
        }
        let resolved = match (&metric.name, metric.alias) {
            (Some(name), _) => name.parse::<MetricName>().ok().map(|n| (n, None)),
            (None, Some(alias)) => device.aliases.get(&alias).cloned(),
            (None, None) => None,
        };
        let Some((name, birth_datatype)) = resolved else {
            stats.ingest_dropped(IngestDrop::UnknownAlias);
            continue;
        };
        let Some(value) = metric_value_f64(metric, birth_datatype) else {
            stats.ingest_dropped(IngestDrop::NotNumeric);
            continue;
        };
        values.push((name, value));
    }
    let Some(seq) = seq else {
        // Not a sample (e.g. a command result): applied as it comes, outside the ordering.
        if values.is_empty() {
            stats.ingest_dropped(IngestDrop::MissingSequence);
            return None;
        }
        return Some(TwinUpdate::Properties {
            key,
            timestamp,
            values,
        });
    };
    Some(TwinUpdate::Sample {
        key,
        seq,
        timestamp,
        values,
        historical,
    })
}

#[cfg(test)]
mod tests {
    use protocol::sparkplug::{PropertySet, PropertyValue};

    use super::*;

    const T: &str = "spBv1.0/lab-a";

    fn nbirth(bd_seq: u64) -> Vec<u8> {
        Payload {
            seq: Some(0),
            metrics: vec![
                Metric::new(DataType::UInt64, MetricValue::Long(bd_seq)).named(BD_SEQ_METRIC),
            ],
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn dbirth(seq: u64) -> Vec<u8> {
        let mut power = Metric::new(DataType::Float, MetricValue::Float(0.0))
            .named("spindle.power_w")
            .aliased(2);
        power.properties = Some(PropertySet {
            keys: vec![UNIT_PROPERTY.into()],
            values: vec![PropertyValue {
                datatype: Some(12),
                is_null: None,
                value: Some(PropertyValueKind::String("W".into())),
            }],
        });
        Payload {
            seq: Some(seq),
            metrics: vec![
                Metric::new(DataType::UInt32, MetricValue::Int(0))
                    .named(NODE_SEQ_METRIC)
                    .aliased(1),
                power,
            ],
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn ddata(seq: u64, node_seq: u32, power: f32) -> Vec<u8> {
        Payload {
            seq: Some(seq),
            timestamp: Some(1000),
            metrics: vec![
                Metric::new(DataType::UInt32, MetricValue::Long(u64::from(node_seq))).aliased(1),
                Metric::new(DataType::Float, MetricValue::Float(power)).aliased(2),
            ],
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn born_host(stats: &HubStats) -> PrimaryHost {
        let mut host = PrimaryHost::default();
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(4), 0, stats);
        let actions = host.on_message(&format!("{T}/DBIRTH/gw-a/mill-1"), &dbirth(1), 0, stats);
        assert!(
            matches!(&actions[..], [HostAction::Twin(TwinUpdate::Birth { metrics, .. })]
            if metrics == &[("spindle.power_w".parse().expect("valid"), Unit::Watt)])
        );
        host
    }

    #[test]
    fn ddata_aliases_resolve_to_the_names_of_the_birth() {
        let stats = HubStats::default();
        let mut host = born_host(&stats);
        let actions = host.on_message(
            &format!("{T}/DDATA/gw-a/mill-1"),
            &ddata(2, 7, 12.5),
            0,
            &stats,
        );
        assert!(
            matches!(&actions[..], [HostAction::Twin(TwinUpdate::Sample { seq: 7, values, timestamp: 1000, .. })]
            if values == &[("spindle.power_w".parse().expect("valid"), 12.5)])
        );
    }

    #[test]
    fn births_and_data_leave_the_sparkplug_facts_of_their_machine_once() {
        let stats = HubStats::default();
        let mut host = PrimaryHost::default();
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(4), 0, &stats);
        assert_eq!(host.take_path(), None, "node messages name no machine");
        host.on_message(&format!("{T}/DBIRTH/gw-a/mill-1"), &dbirth(1), 0, &stats);
        let birth = host.take_path().expect("facts of the DBIRTH");
        assert_eq!(
            (birth.hop.message.as_str(), birth.hop.seq, birth.hop.bd_seq),
            ("DBIRTH", Some(1), Some(4))
        );
        assert_eq!(
            birth.birth,
            Some(([("spindle.power_w".to_owned(), 2)].into(), Some(1)))
        );
        assert_eq!(host.take_path(), None, "taken once");
        let topic = format!("{T}/DDATA/gw-a/mill-1");
        host.on_message(&topic, &ddata(2, 7, 12.5), 0, &stats);
        let data = host.take_path().expect("facts of the DDATA");
        assert_eq!(
            (
                data.hop.topic.as_str(),
                data.hop.seq,
                data.hop.bd_seq,
                data.birth
            ),
            (topic.as_str(), Some(2), Some(4), None)
        );
    }

    #[test]
    fn a_seq_gap_left_open_past_the_reorder_timeout_requests_a_rebirth() {
        let stats = HubStats::default();
        let mut host = born_host(&stats);
        let topic = format!("{T}/DDATA/gw-a/mill-1");
        // The birth used seq 0 and 1; 3 skips 2.
        host.on_message(&topic, &ddata(3, 1, 1.0), 10_000, &stats);
        assert!(
            host.tick(10_000 + REORDER_TIMEOUT_MS - 1, &stats)
                .is_empty()
        );
        let actions = host.tick(10_000 + REORDER_TIMEOUT_MS, &stats);
        assert!(matches!(&actions[..], [HostAction::RequestRebirth { .. }]));
        assert!(
            host.tick(20_000 + REORDER_TIMEOUT_MS, &stats).is_empty(),
            "asked once"
        );
    }

    #[test]
    fn sessions_survive_a_snapshot_so_queued_data_decodes_after_a_restart() {
        let stats = HubStats::default();
        let host = born_host(&stats);
        let json = serde_json::to_string(&host.snapshot()).expect("serialises");
        let mut restored = PrimaryHost::default();
        restored.restore(serde_json::from_str(&json).expect("parses"));
        assert_eq!(restored.snapshot(), host.snapshot());
        let actions = restored.on_message(
            &format!("{T}/DDATA/gw-a/mill-1"),
            &ddata(9, 7, 12.5),
            0,
            &stats,
        );
        assert!(
            matches!(
                &actions[..],
                [HostAction::Twin(TwinUpdate::Sample { seq: 7, .. })]
            ),
            "aliases resolve without a new birth: {actions:?}"
        );
        assert_eq!(stats.seq_gaps(), 0, "no false gap after the restart");
    }

    #[test]
    fn data_before_any_birth_requests_one_rebirth() {
        let stats = HubStats::default();
        let mut host = PrimaryHost::default();
        let topic = format!("{T}/DDATA/gw-a/mill-1");
        let first = host.on_message(&topic, &ddata(5, 1, 1.0), 0, &stats);
        assert!(matches!(&first[..], [HostAction::RequestRebirth { .. }]));
        assert!(
            host.on_message(&topic, &ddata(6, 2, 1.0), 0, &stats)
                .is_empty()
        );
        assert_eq!(stats.dropped(IngestDrop::DataBeforeBirth), 2);
    }

    #[test]
    fn ndeath_of_the_current_session_takes_devices_offline_and_an_old_one_is_ignored() {
        let stats = HubStats::default();
        let mut host = born_host(&stats);
        let death = |bd: u64| {
            Payload {
                metrics: vec![
                    Metric::new(DataType::UInt64, MetricValue::Long(bd)).named(BD_SEQ_METRIC),
                ],
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(
            host.on_message(&format!("{T}/NDEATH/gw-a"), &death(3), 0, &stats)
                .is_empty()
        );
        let actions = host.on_message(&format!("{T}/NDEATH/gw-a"), &death(4), 0, &stats);
        assert!(matches!(
            &actions[..],
            [HostAction::Twin(TwinUpdate::Offline { .. })]
        ));
    }

    #[test]
    fn seq_gaps_are_counted() {
        let stats = HubStats::default();
        let mut host = born_host(&stats);
        host.on_message(
            &format!("{T}/DDATA/gw-a/mill-1"),
            &ddata(5, 1, 1.0),
            0,
            &stats,
        );
        assert_eq!(
            stats
                .render(0, 0)
                .lines()
                .find(|l| l.starts_with("demolab_hub_seq_gaps_total ")),
            Some("demolab_hub_seq_gaps_total 1")
        );
    }

    #[test]
    fn bad_topics_and_payloads_are_counted_not_fatal() {
        let stats = HubStats::default();
        let mut host = PrimaryHost::default();
        host.on_message("spBv1.0/Lab/NBIRTH/g", &[], 0, &stats);
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &[0xFF, 0xFF], 0, &stats);
        assert_eq!(stats.dropped(IngestDrop::BadTopic), 1);
        assert_eq!(stats.dropped(IngestDrop::BadPayload), 1);
    }
}
