//! The Sparkplug B primary host, sans-IO: topic + payload in, twin updates and rebirth requests out.
//!
//! It tracks every edge node session (bdSeq, seq, born devices and their aliases), pairs NDEATH
//! with its NBIRTH by bdSeq, counts seq gaps, and requests a rebirth when data arrives for
//! something it has no birth for (e.g. after the hub restarted mid-session).
//!
//! It distrusts the wire: sizes are checked before anything is parsed, only labs, gateways and
//! machines the directory admits get a session or a twin, every collection it keeps per edge
//! node is capped ([`Limits`]), and each refusal is counted by reason with a rate-limited log
//! line that echoes at most [`LOG_ECHO_BYTES`] of the input.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;

use prost::Message;
use protocol::sparkplug::{
    BD_SEQ_METRIC, DataType, MessageType, Metric, MetricValue, Payload, PropertyValueKind, Topic,
    metric_value_f64, seq_gap,
};
use protocol::{GatewayId, LabId, MachineId, MetricName, Unit};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::directory::Directory;
use crate::limits::{LOG_ECHO_BYTES, Limits, truncated};
use crate::stats::{HubStats, IngestDrop, WireEvent};
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
    /// Its birth was refused for this reason: its data is dropped the same way, without asking
    /// for a rebirth that would only be refused again.
    refused: Option<IngestDrop>,
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
    /// The seq of a message that did not follow `last_seq`, and whether it opened the gap: the
    /// sequence moves there only when the next message follows it (a real loss), so one forged
    /// message cannot shift it.
    seq_candidate: Option<(u64, bool)>,
}

/// How long a Sparkplug seq gap may stay open before the host asks for a rebirth. One MQTT
/// session delivers in order, so a gap is normally a loss; the wait covers redelivery across a
/// reconnect and ingest shared between hub replicas.
pub const REORDER_TIMEOUT_MS: u64 = 2_000;

/// What the host admits, and how much of it.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// Labs, their gateways and machines.
    pub directory: Arc<Directory>,
    /// Admit labs and machines the directory does not list (`[hub] accept_unknown`).
    pub accept_unknown: bool,
    /// Caps.
    pub limits: Limits,
}

/// State of every edge node the host has heard of.
#[derive(Debug, Default)]
pub struct PrimaryHost {
    edges: HashMap<(LabId, GatewayId), EdgeSession>,
    policy: HostPolicy,
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

/// Drops of one message, by reason, reported together (one count, at most one log line).
#[derive(Debug, Default)]
struct Tally(Vec<(IngestDrop, u64)>);

impl Tally {
    fn add(&mut self, reason: IngestDrop) {
        match self.0.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.0.push((reason, 1)),
        }
    }

    fn report(self, stats: &HubStats, now_ms: u64, topic: &str) {
        for (reason, n) in self.0 {
            refuse(stats, reason, n, now_ms, topic, &"metrics dropped");
        }
    }
}

/// Counts a refusal and logs it, rate-limited, echoing at most [`LOG_ECHO_BYTES`] of the input.
fn refuse(
    stats: &HubStats,
    reason: IngestDrop,
    n: u64,
    now_ms: u64,
    topic: &str,
    detail: &dyn Display,
) {
    if let Some(suppressed) = stats.refused(reason, n, now_ms) {
        warn!(
            reason = reason.as_str(),
            dropped = n,
            suppressed,
            topic = %truncated(topic, LOG_ECHO_BYTES),
            detail = %truncated(&detail.to_string(), 2 * LOG_ECHO_BYTES),
            "refused Sparkplug input"
        );
    }
}

impl PrimaryHost {
    /// A host that admits what `policy` allows.
    pub fn new(policy: HostPolicy) -> Self {
        // Spelled out, not `..Self::default()`: a default policy builds a default directory,
        // which parses the whole built-in catalogue only to drop it.
        Self {
            edges: HashMap::new(),
            policy,
            path: None,
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
                    now_ms,
                    "a seq gap stayed open",
                ));
            }
        }
        actions
    }

    /// The registry refused a sample of a machine of this edge node because its `node.seq`
    /// jumped past the window: the edge node is asked to rebirth (once until its next NBIRTH),
    /// so the twin re-anchors on what the real node reports.
    pub fn seq_jump(
        &mut self,
        lab: &LabId,
        gateway: &GatewayId,
        now_ms: u64,
        stats: &HubStats,
    ) -> Vec<HostAction> {
        match self.edges.get_mut(&(lab.clone(), gateway.clone())) {
            Some(edge) => ask_for_rebirth(edge, lab, gateway, stats, now_ms, "a node.seq jump"),
            None => Vec::new(),
        }
    }

    /// The sessions, for persistence. Refused devices are left out: after a restart their
    /// data asks for a rebirth, whose DBIRTH is refused again.
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
                    .filter(|(_, device)| device.refused.is_none())
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
    /// a restart starts the gap check afresh instead of reporting a false gap. Sessions the
    /// policy no longer admits (the directory changed) are not restored.
    pub fn restore(&mut self, snapshot: HostSnapshot) {
        let policy = &self.policy;
        for edge in snapshot.edges {
            if policy
                .directory
                .admit_edge(&edge.lab, &edge.gateway, policy.accept_unknown)
                .is_err()
                || self.edges.len() >= policy.limits.max_edge_nodes
            {
                continue;
            }
            let devices = edge
                .devices
                .into_iter()
                .take(policy.limits.max_devices_per_edge)
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
                            refused: None,
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
                    seq_candidate: None,
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

/// Whether a metric carries a string (value, or a property) longer than `max` bytes.
fn has_long_string(metric: &Metric, max: usize) -> bool {
    let long_value = matches!(&metric.value, Some(MetricValue::String(s)) if s.len() > max);
    let long_property = metric.properties.as_ref().is_some_and(|p| {
        p.keys.iter().any(|k| k.len() > max)
            || p.values
                .iter()
                .any(|v| matches!(&v.value, Some(PropertyValueKind::String(s)) if s.len() > max))
    });
    long_value || long_property
}

/// A metric name within the limits, or why not.
fn checked_name(name: &str, limits: &Limits) -> Result<MetricName, IngestDrop> {
    if name.len() > limits.max_metric_name_len {
        return Err(IngestDrop::MetricNameTooLong);
    }
    name.parse::<MetricName>()
        .map_err(|_| IngestDrop::InvalidMetricName)
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
        let limits = &self.policy.limits;
        // Sizes first: nothing of an oversized message is parsed, and the log echoes a prefix.
        if topic.len() > limits.max_topic_len {
            let detail = format!("topic of {} bytes", topic.len());
            refuse(stats, IngestDrop::TopicTooLong, 1, now_ms, topic, &detail);
            return Vec::new();
        }
        if payload.len() > limits.max_payload_bytes {
            let detail = format!("payload of {} bytes", payload.len());
            refuse(
                stats,
                IngestDrop::PayloadTooLarge,
                1,
                now_ms,
                topic,
                &detail,
            );
            return Vec::new();
        }
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
                refuse(stats, IngestDrop::BadTopic, 1, now_ms, topic, &err);
                return Vec::new();
            }
        };
        // Commands are what hosts send; this host's own NCMD/DCMD come back on `spBv1.0/#`.
        if matches!(kind, MessageType::NCmd | MessageType::DCmd) {
            return Vec::new();
        }
        let policy = &self.policy;
        if let Err(reason) = policy
            .directory
            .admit_edge(&lab, &gateway, policy.accept_unknown)
        {
            refuse(stats, reason, 1, now_ms, topic, &"edge node not admitted");
            return Vec::new();
        }
        let payload = match Payload::decode(payload) {
            Ok(payload) => payload,
            Err(err) => {
                refuse(stats, IngestDrop::BadPayload, 1, now_ms, topic, &err);
                return Vec::new();
            }
        };
        let edge_key = (lab.clone(), gateway.clone());
        if !self.edges.contains_key(&edge_key) && self.edges.len() >= limits.max_edge_nodes {
            let detail = format!("{} edge nodes tracked", self.edges.len());
            refuse(
                stats,
                IngestDrop::TooManyEdgeNodes,
                1,
                now_ms,
                topic,
                &detail,
            );
            return Vec::new();
        }
        let edge = self.edges.entry(edge_key).or_default();

        match (edge.last_seq, payload.seq) {
            (Some(previous), Some(seq)) if edge.born && !matches!(kind, MessageType::NBirth) => {
                let follows = |base: u64| seq_gap(base, seq) == Some(0);
                if follows(previous) {
                    // The stream goes on where it was: the odd message was not a loss.
                    edge.last_seq = Some(seq);
                    if let Some((_, true)) = edge.seq_candidate.take() {
                        edge.gap_since = None;
                    }
                } else if edge.seq_candidate.is_some_and(|(c, _)| follows(c)) {
                    // Two messages in a row agree: messages were lost, resynchronise (the
                    // open gap still asks for a rebirth).
                    edge.last_seq = Some(seq);
                    edge.seq_candidate = None;
                } else {
                    stats.seq_gap();
                    if let Some(suppressed) = stats.may_log(WireEvent::SeqGap, now_ms) {
                        warn!(%lab, %gateway, previous, seq, suppressed, "Sparkplug seq gap");
                    }
                    let opened = edge.gap_since.is_none();
                    edge.gap_since.get_or_insert(now_ms);
                    edge.seq_candidate = Some((seq, opened));
                }
            }
            (_, Some(seq)) => {
                edge.last_seq = Some(seq);
                edge.seq_candidate = None;
            }
            (_, None) => {}
        }
        let timestamp = payload.timestamp.unwrap_or(now_ms);
        match (kind, machine) {
            (MessageType::NBirth, _) => {
                let Some(bd_seq) = bd_seq_of(&payload) else {
                    // Its NDEATH could never be told from a forged one.
                    refuse(
                        stats,
                        IngestDrop::MissingBdSeq,
                        1,
                        now_ms,
                        topic,
                        &"NBIRTH without bdSeq",
                    );
                    return Vec::new();
                };
                stats.birth();
                edge.bd_seq = Some(bd_seq);
                edge.born = true;
                edge.rebirth_requested = false;
                edge.gap_since = None;
                // A new session: devices must be born again, and their old aliases are void.
                edge.devices.clear();
                if let Some(suppressed) = stats.may_log(WireEvent::EdgeBirth, now_ms) {
                    info!(%lab, %gateway, bd_seq, suppressed, "edge node born");
                }
                Vec::new()
            }
            (MessageType::NDeath, _) => {
                let bd_seq = bd_seq_of(&payload);
                if edge.bd_seq.is_none() || bd_seq != edge.bd_seq {
                    // An old session's Will arriving late, or a forged death: either way not
                    // the death of the session that is alive.
                    let detail = format!("bdSeq {bd_seq:?}, current {:?}", edge.bd_seq);
                    refuse(stats, IngestDrop::BdSeqMismatch, 1, now_ms, topic, &detail);
                    return Vec::new();
                }
                stats.death();
                edge.born = false;
                if let Some(suppressed) = stats.may_log(WireEvent::EdgeDeath, now_ms) {
                    info!(%lab, %gateway, suppressed, "edge node died");
                }
                edge.devices
                    .drain()
                    .filter(|(_, device)| device.refused.is_none())
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
                    return request_rebirth(edge, lab, gateway, stats, now_ms);
                }
                let key = TwinKey {
                    lab: lab.clone(),
                    machine: machine.clone(),
                };
                if !edge.devices.contains_key(&machine)
                    && edge.devices.len() >= limits.max_devices_per_edge
                {
                    let detail = format!("{} devices born", edge.devices.len());
                    refuse(stats, IngestDrop::TooManyDevices, 1, now_ms, topic, &detail);
                    return Vec::new();
                }
                if let Err(reason) = policy.directory.admit_machine(&key, policy.accept_unknown) {
                    refuse(stats, reason, 1, now_ms, topic, &"machine not admitted");
                    // Remembered, so its data is dropped quietly instead of asking for
                    // rebirths forever.
                    edge.devices.insert(
                        machine,
                        Device {
                            refused: Some(reason),
                            ..Device::default()
                        },
                    );
                    return Vec::new();
                }
                stats.birth();
                let mut tally = Tally::default();
                let mut device = Device::default();
                let mut metrics = Vec::new();
                let mut boot = None;
                let mut node_seq = None;
                for metric in &payload.metrics {
                    let Some(name) = metric.name.as_deref() else {
                        continue;
                    };
                    if name == NODE_SEQ_METRIC {
                        device.seq_alias = metric.alias;
                        node_seq = seq_value(metric);
                        continue;
                    }
                    if name == NODE_BOOT_METRIC {
                        boot = seq_value(metric);
                        continue;
                    }
                    if has_long_string(metric, limits.max_string_len) {
                        tally.add(IngestDrop::StringTooLong);
                        continue;
                    }
                    let parsed = match checked_name(name, limits) {
                        Ok(parsed) => parsed,
                        Err(reason) => {
                            tally.add(reason);
                            continue;
                        }
                    };
                    if metrics.len() >= limits.max_metrics_per_device {
                        tally.add(IngestDrop::TooManyMetrics);
                        continue;
                    }
                    if let Some(alias) = metric.alias {
                        let datatype = metric.datatype.and_then(DataType::from_u32);
                        device.aliases.insert(alias, (parsed.clone(), datatype));
                    }
                    metrics.push((parsed, unit_of(metric)));
                }
                tally.report(stats, now_ms, topic);
                let aliases = device
                    .aliases
                    .iter()
                    .map(|(alias, (name, _))| (name.to_string(), *alias))
                    .collect();
                self.path = Some(PathFacts {
                    key: key.clone(),
                    gateway: gateway.to_string(),
                    hop: hop("DBIRTH", topic, &payload, edge.bd_seq),
                    birth: Some((aliases, device.seq_alias)),
                });
                edge.devices.insert(machine, device);
                vec![HostAction::Twin(TwinUpdate::Birth {
                    key,
                    gateway,
                    boot,
                    node_seq,
                    metrics,
                    timestamp,
                })]
            }
            (MessageType::DDeath, Some(machine)) => {
                match edge.devices.remove(&machine) {
                    Some(device) if device.refused.is_none() => {}
                    // Nothing of it was taken, so there is nothing to take offline.
                    Some(_) | None => return Vec::new(),
                }
                stats.death();
                vec![HostAction::Twin(TwinUpdate::Offline {
                    key: TwinKey { lab, machine },
                    timestamp,
                })]
            }
            (MessageType::DData, Some(machine)) => {
                if !edge.born {
                    return request_rebirth(edge, lab, gateway, stats, now_ms);
                }
                let Some(device) = edge.devices.get(&machine) else {
                    if edge.devices.len() >= limits.max_devices_per_edge {
                        // It could not be born now either: asking for a rebirth would loop.
                        let detail = "data of a device past the cap";
                        refuse(stats, IngestDrop::TooManyDevices, 1, now_ms, topic, &detail);
                        return Vec::new();
                    }
                    return request_rebirth(edge, lab, gateway, stats, now_ms);
                };
                if let Some(reason) = device.refused {
                    refuse(stats, reason, 1, now_ms, topic, &"data of a refused device");
                    return Vec::new();
                }
                self.path = Some(PathFacts {
                    key: TwinKey {
                        lab: lab.clone(),
                        machine: machine.clone(),
                    },
                    gateway: gateway.to_string(),
                    hop: hop("DDATA", topic, &payload, edge.bd_seq),
                    birth: None,
                });
                let mut tally = Tally::default();
                let update = data_update(
                    device,
                    TwinKey { lab, machine },
                    &payload,
                    timestamp,
                    limits,
                    &mut tally,
                );
                tally.report(stats, now_ms, topic);
                update
                    .map(|u| vec![HostAction::Twin(u)])
                    .unwrap_or_default()
            }
            (MessageType::NData, _) if !edge.born => {
                request_rebirth(edge, lab, gateway, stats, now_ms)
            }
            // Node-level data carries no machine values yet.
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
    now_ms: u64,
    why: &str,
) -> Vec<HostAction> {
    if edge.rebirth_requested {
        return Vec::new();
    }
    edge.rebirth_requested = true;
    stats.rebirth_requested();
    if let Some(suppressed) = stats.may_log(WireEvent::Rebirth, now_ms) {
        info!(%lab, %gateway, why, suppressed, "requesting a rebirth");
    }
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
    now_ms: u64,
) -> Vec<HostAction> {
    stats.ingest_dropped(IngestDrop::DataBeforeBirth);
    debug!(%lab, %gateway, "data without a birth");
    ask_for_rebirth(edge, &lab, &gateway, stats, now_ms, "data without a birth")
}

fn data_update(
    device: &Device,
    key: TwinKey,
    payload: &Payload,
    timestamp: u64,
    limits: &Limits,
    tally: &mut Tally,
) -> Option<TwinUpdate> {
    let mut seq = None;
    let mut historical = false;
    let mut values = Vec::with_capacity(payload.metrics.len().min(limits.max_metrics_per_device));
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
        if has_long_string(metric, limits.max_string_len) {
            tally.add(IngestDrop::StringTooLong);
            continue;
        }
        let resolved = match (&metric.name, metric.alias) {
            (Some(name), _) => match checked_name(name, limits) {
                Ok(name) => Some((name, None)),
                Err(reason) => {
                    tally.add(reason);
                    continue;
                }
            },
            (None, Some(alias)) => device.aliases.get(&alias).cloned(),
            (None, None) => None,
        };
        let Some((name, birth_datatype)) = resolved else {
            tally.add(IngestDrop::UnknownAlias);
            continue;
        };
        let Some(value) = metric_value_f64(metric, birth_datatype) else {
            tally.add(IngestDrop::NotNumeric);
            continue;
        };
        if values.len() >= limits.max_metrics_per_device {
            tally.add(IngestDrop::TooManyMetrics);
            continue;
        }
        values.push((name, value));
    }
    let Some(seq) = seq else {
        // Not a sample (e.g. a command result): applied as it comes, outside the ordering.
        if values.is_empty() {
            tally.add(IngestDrop::MissingSequence);
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

/// The topic and encoded payload of a DCMD asking `key`'s machine, through `gateway`, to take
/// these metric values: the one place the hub writes a device command, for operators' requests
/// and for desired values sent again after a node rebooted.
pub fn device_command(
    key: &TwinKey,
    gateway: &GatewayId,
    values: &[(String, f64)],
    now_ms: u64,
) -> (String, Vec<u8>) {
    let topic = Topic::Message {
        lab: key.lab.clone(),
        kind: MessageType::DCmd,
        gateway: gateway.clone(),
        machine: Some(key.machine.clone()),
    }
    .to_string();
    let payload = Payload {
        timestamp: Some(now_ms),
        metrics: values
            .iter()
            .map(|(name, value)| {
                Metric::new(DataType::Double, MetricValue::Double(*value)).named(name)
            })
            .collect(),
        ..Default::default()
    };
    (topic, payload.encode_to_vec())
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

    /// A host that admits any lab and machine, with the default caps.
    fn open_host() -> PrimaryHost {
        PrimaryHost::new(HostPolicy {
            accept_unknown: true,
            ..HostPolicy::default()
        })
    }

    fn born_host(stats: &HubStats) -> PrimaryHost {
        let mut host = open_host();
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
        let mut host = open_host();
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
        let mut restored = open_host();
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
        let mut host = open_host();
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
        assert_eq!(stats.dropped(IngestDrop::BdSeqMismatch), 1);
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
        let mut host = open_host();
        host.on_message("spBv1.0/Lab/NBIRTH/g", &[], 0, &stats);
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &[0xFF, 0xFF], 0, &stats);
        assert_eq!(stats.dropped(IngestDrop::BadTopic), 1);
        assert_eq!(stats.dropped(IngestDrop::BadPayload), 1);
    }

    fn closed_host(labs: Vec<crate::directory::LabConfig>, limits: Limits) -> PrimaryHost {
        let directory = Directory::new(crate::catalogue::Catalogue::builtin(), labs, vec![])
            .expect("valid directory");
        PrimaryHost::new(HostPolicy {
            directory: Arc::new(directory),
            accept_unknown: false,
            limits,
        })
    }

    fn lab_a(machines: &[&str]) -> crate::directory::LabConfig {
        crate::directory::LabConfig {
            id: "lab-a".parse().expect("valid"),
            name: String::new(),
            location: String::new(),
            gateways: vec!["gw-a".parse().expect("valid")],
            machines: machines
                .iter()
                .map(|m| crate::directory::MachineConfig {
                    id: m.parse().expect("valid"),
                    kind: None,
                    name: None,
                    line: None,
                    attributes: Default::default(),
                })
                .collect(),
            accept_new_machines: false,
        }
    }

    fn birth_with(metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            seq: Some(1),
            metrics,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn oversized_topics_and_payloads_are_counted_before_anything_is_parsed() {
        let stats = HubStats::default();
        let limits = Limits::default();
        let mut host = open_host();
        let long_topic = format!("{T}/NBIRTH/{}", "g".repeat(60_000));
        assert!(
            host.on_message(&long_topic, &nbirth(1), 0, &stats)
                .is_empty()
        );
        let big = vec![0u8; limits.max_payload_bytes + 1];
        assert!(
            host.on_message(&format!("{T}/NBIRTH/gw-a"), &big, 0, &stats)
                .is_empty()
        );
        assert_eq!(stats.dropped(IngestDrop::TopicTooLong), 1);
        assert_eq!(stats.dropped(IngestDrop::PayloadTooLarge), 1);
        assert_eq!(stats.dropped(IngestDrop::BadTopic), 0, "never parsed");
        assert_eq!(stats.dropped(IngestDrop::BadPayload), 0, "never decoded");
    }

    #[test]
    fn births_of_labs_and_machines_the_directory_does_not_list_are_refused_without_rebirth_loops() {
        let stats = HubStats::default();
        let mut host = closed_host(vec![lab_a(&["mill-1"])], Limits::default());
        // An unknown lab gets no session at all.
        let unknown = "spBv1.0/lab-x";
        assert!(
            host.on_message(&format!("{unknown}/NBIRTH/gw-x"), &nbirth(1), 0, &stats)
                .is_empty()
        );
        assert!(
            host.on_message(&format!("{unknown}/DBIRTH/gw-x/m"), &dbirth(1), 0, &stats)
                .is_empty()
        );
        assert_eq!(stats.dropped(IngestDrop::UnknownLab), 2);
        assert!(host.snapshot().edges.is_empty());
        // A listed lab's unlisted machine is refused, and so is its data, quietly.
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(1), 0, &stats);
        let listed = host.on_message(&format!("{T}/DBIRTH/gw-a/mill-1"), &dbirth(1), 0, &stats);
        assert!(matches!(
            &listed[..],
            [HostAction::Twin(TwinUpdate::Birth { .. })]
        ));
        let ghost = host.on_message(&format!("{T}/DBIRTH/gw-a/ghost-1"), &dbirth(2), 0, &stats);
        assert!(ghost.is_empty());
        let data = host.on_message(
            &format!("{T}/DDATA/gw-a/ghost-1"),
            &ddata(3, 1, 1.0),
            0,
            &stats,
        );
        assert!(data.is_empty(), "no rebirth request: {data:?}");
        assert_eq!(stats.dropped(IngestDrop::UnknownMachine), 2);
        assert_eq!(stats.dropped(IngestDrop::DataBeforeBirth), 0);
        // A gateway the lab does not list.
        host.on_message(&format!("{T}/NBIRTH/gw-evil"), &nbirth(1), 0, &stats);
        assert_eq!(stats.dropped(IngestDrop::UnregisteredGateway), 1);
    }

    #[test]
    fn a_birth_keeps_at_most_the_cap_of_metrics_and_counts_long_names_and_strings() {
        let stats = HubStats::default();
        let limits = Limits {
            max_metrics_per_device: 3,
            max_string_len: 8,
            max_metric_name_len: 12,
            ..Limits::default()
        };
        let mut host = closed_host(vec![lab_a(&["mill-1"])], limits);
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(1), 0, &stats);
        let mut metrics: Vec<Metric> = (0..10)
            .map(|i| {
                Metric::new(DataType::Float, MetricValue::Float(0.0))
                    .named(format!("f.m{i}"))
                    .aliased(10 + i)
            })
            .collect();
        metrics
            .push(Metric::new(DataType::Float, MetricValue::Float(0.0)).named("long.name_too_far"));
        metrics.push(
            Metric::new(DataType::String, MetricValue::String("x".repeat(9))).named("f.text"),
        );
        metrics.push(Metric::new(DataType::Float, MetricValue::Float(0.0)).named("Bad.Name"));
        let actions = host.on_message(
            &format!("{T}/DBIRTH/gw-a/mill-1"),
            &birth_with(metrics),
            0,
            &stats,
        );
        let [HostAction::Twin(TwinUpdate::Birth { metrics, .. })] = &actions[..] else {
            panic!("a birth: {actions:?}")
        };
        assert_eq!(metrics.len(), 3);
        assert_eq!(stats.dropped(IngestDrop::TooManyMetrics), 7);
        assert_eq!(stats.dropped(IngestDrop::MetricNameTooLong), 1);
        assert_eq!(stats.dropped(IngestDrop::StringTooLong), 1);
        assert_eq!(stats.dropped(IngestDrop::InvalidMetricName), 1);
        // Data can name no more than the cap either.
        let data = Payload {
            seq: Some(2),
            metrics: (0..5)
                .map(|i| {
                    Metric::new(DataType::Double, MetricValue::Double(1.0)).named(format!("g.n{i}"))
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec();
        let actions = host.on_message(&format!("{T}/DDATA/gw-a/mill-1"), &data, 0, &stats);
        assert!(
            matches!(&actions[..], [HostAction::Twin(TwinUpdate::Properties { values, .. })] if values.len() == 3)
        );
        assert_eq!(stats.dropped(IngestDrop::TooManyMetrics), 9);
    }

    #[test]
    fn devices_per_edge_node_and_edge_nodes_are_capped() {
        let stats = HubStats::default();
        let limits = Limits {
            max_devices_per_edge: 2,
            max_edge_nodes: 2,
            ..Limits::default()
        };
        let mut host = PrimaryHost::new(HostPolicy {
            accept_unknown: true,
            limits,
            ..HostPolicy::default()
        });
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(1), 0, &stats);
        for machine in ["m-1", "m-2", "m-3", "m-4"] {
            host.on_message(&format!("{T}/DBIRTH/gw-a/{machine}"), &dbirth(1), 0, &stats);
        }
        assert_eq!(stats.dropped(IngestDrop::TooManyDevices), 2);
        // Data of a device past the cap asks for no rebirth: it could not be born anyway.
        let data = host.on_message(&format!("{T}/DDATA/gw-a/m-9"), &ddata(2, 1, 1.0), 0, &stats);
        assert!(data.is_empty());
        assert_eq!(stats.dropped(IngestDrop::TooManyDevices), 3);
        host.on_message(&format!("{T}/NBIRTH/gw-b"), &nbirth(1), 0, &stats);
        host.on_message(&format!("{T}/NBIRTH/gw-c"), &nbirth(1), 0, &stats);
        assert_eq!(stats.dropped(IngestDrop::TooManyEdgeNodes), 1);
        assert_eq!(host.snapshot().edges.len(), 2);
    }

    #[test]
    fn a_forged_ndeath_or_a_birth_without_bd_seq_changes_nothing() {
        let stats = HubStats::default();
        let mut host = born_host(&stats);
        let forged = Payload {
            metrics: vec![
                Metric::new(DataType::UInt64, MetricValue::Long(99)).named(BD_SEQ_METRIC),
            ],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(
            host.on_message(&format!("{T}/NDEATH/gw-a"), &forged, 0, &stats)
                .is_empty()
        );
        let bare = Payload::default().encode_to_vec();
        assert!(
            host.on_message(&format!("{T}/NDEATH/gw-a"), &bare, 0, &stats)
                .is_empty()
        );
        assert_eq!(stats.dropped(IngestDrop::BdSeqMismatch), 2);
        let actions = host.on_message(
            &format!("{T}/DDATA/gw-a/mill-1"),
            &ddata(2, 1, 1.0),
            0,
            &stats,
        );
        assert!(matches!(
            &actions[..],
            [HostAction::Twin(TwinUpdate::Sample { .. })]
        ));
        host.on_message(&format!("{T}/NBIRTH/gw-b"), &bare, 0, &stats);
        assert_eq!(stats.dropped(IngestDrop::MissingBdSeq), 1);
    }

    #[test]
    fn a_node_seq_jump_asks_its_edge_node_for_one_rebirth_until_it_is_born_again() {
        let stats = HubStats::default();
        let mut host = born_host(&stats);
        let (lab, gw) = (
            "lab-a".parse().expect("valid"),
            "gw-a".parse().expect("valid"),
        );
        let first = host.seq_jump(&lab, &gw, 0, &stats);
        assert!(matches!(&first[..], [HostAction::RequestRebirth { .. }]));
        assert!(host.seq_jump(&lab, &gw, 0, &stats).is_empty(), "asked once");
        host.on_message(&format!("{T}/NBIRTH/gw-a"), &nbirth(5), 0, &stats);
        assert_eq!(host.seq_jump(&lab, &gw, 0, &stats).len(), 1);
    }

    /// A log sink the test can read.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut bytes) = self.0.lock() {
                bytes.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flood_of_oversized_and_invalid_topics_writes_one_short_line_per_reason() {
        let stats = HubStats::with_log_interval(10_000);
        let mut host = open_host();
        let log = Captured::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let oversized = format!("{T}/NBIRTH/{}", "g".repeat(60_000));
        let invalid = format!("spBv1.0/{}/NBIRTH/gw-a", "X".repeat(200));
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..500 {
                host.on_message(&oversized, &nbirth(1), n, &stats);
                host.on_message(&invalid, &nbirth(1), n, &stats);
            }
        });
        assert_eq!(stats.dropped(IngestDrop::TopicTooLong), 500);
        assert_eq!(stats.dropped(IngestDrop::BadTopic), 500);
        let text = String::from_utf8(log.0.lock().expect("log").clone()).expect("UTF-8");
        assert_eq!(text.lines().count(), 2, "{text}");
        // 500 × 60 KB of topics echoed whole used to be 30 MB of log.
        assert!(text.len() < 1_200, "{} bytes: {text}", text.len());
        let cut = format!("… ({} bytes)", oversized.len());
        assert!(text.contains(&cut), "{text}");
    }

    #[test]
    fn a_single_forged_sparkplug_seq_neither_moves_the_sequence_nor_asks_for_a_rebirth() {
        let stats = HubStats::default();
        let mut host = born_host(&stats);
        let topic = format!("{T}/DDATA/gw-a/mill-1");
        host.on_message(&topic, &ddata(2, 1, 1.0), 0, &stats);
        host.on_message(&topic, &ddata(200, 2, 1.0), 0, &stats);
        // The real edge node goes on from 2.
        host.on_message(&topic, &ddata(3, 3, 1.0), 0, &stats);
        host.on_message(&topic, &ddata(4, 4, 1.0), 0, &stats);
        assert_eq!(stats.seq_gaps(), 1, "the forged message only");
        assert!(host.tick(REORDER_TIMEOUT_MS * 10, &stats).is_empty());
        // A real loss: 6 and 7 follow each other after 5 went missing.
        host.on_message(&topic, &ddata(6, 5, 1.0), 0, &stats);
        host.on_message(&topic, &ddata(7, 6, 1.0), 0, &stats);
        host.on_message(&topic, &ddata(8, 7, 1.0), 0, &stats);
        assert_eq!(stats.seq_gaps(), 2);
        let actions = host.tick(REORDER_TIMEOUT_MS, &stats);
        assert!(matches!(&actions[..], [HostAction::RequestRebirth { .. }]));
    }
}
