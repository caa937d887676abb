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

use foldhash::{HashMap, HashMapExt};
use std::borrow::Cow;
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

mod order;
pub use order::{Delivery, REORDER_TIMEOUT_MS};
use order::{Held, Holding, Place, Received, place};

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
    /// Record what the message that the following actions come from said about its machine's
    /// path (protocol view), before its twin update so the change it streams carries it.
    Path(PathFacts),
    /// The message handed in with this delivery is handled: acknowledge it once stored.
    Acknowledge(Delivery),
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
    last_seq: Option<u8>,
    born: bool,
    rebirth_requested: bool,
    devices: HashMap<MachineId, Device>,
    /// What arrived past a seq gap, waiting for it to fill.
    holding: Holding,
}

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
        }
    }

    /// Handles what edge nodes held behind a gap that did not fill within
    /// [`REORDER_TIMEOUT_MS`], and asks them for a rebirth; ingest calls this periodically.
    pub fn tick(&mut self, now_ms: u64, stats: &HubStats) -> Vec<HostAction> {
        let mut actions = Vec::new();
        for ((lab, gateway), edge) in &mut self.edges {
            if edge.holding.timed_out(now_ms)
                && release_held(&self.policy, edge, now_ms, stats, &mut actions)
            {
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
                    holding: Holding::default(),
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
    /// Handles one received message that needs no acknowledgement.
    pub fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
        stats: &HubStats,
    ) -> Vec<HostAction> {
        self.receive(topic, payload, None, now_ms, stats)
    }

    /// Handles one received message, or holds it back behind a seq gap. Its `delivery` comes
    /// back as [`HostAction::Acknowledge`] after the actions of the message, which may be now
    /// or once the gap fills; the actions may also be those of messages held until now.
    pub fn receive(
        &mut self,
        topic: &str,
        payload: &[u8],
        delivery: Option<Delivery>,
        now_ms: u64,
        stats: &HubStats,
    ) -> Vec<HostAction> {
        stats.message_received();
        let Some(message) = self.admit(topic, payload, now_ms, stats) else {
            return delivery.map(HostAction::Acknowledge).into_iter().collect();
        };
        let policy = &self.policy;
        let edge_key = (message.lab.clone(), message.gateway.clone());
        let edge = self.edges.entry(edge_key).or_default();
        let mut actions = Vec::new();
        match place(edge.last_seq, edge.born, message.kind, message.payload.seq) {
            // Two messages cannot take one place in the stream: the second is handled as it
            // comes, like a redelivery.
            Place::Ahead(seq) if !edge.holding.holds(seq) => {
                let held = Held {
                    seq,
                    message: message.into_owned(),
                    delivery,
                };
                edge.holding.hold(held, now_ms);
            }
            Place::Next(seq) => {
                edge.last_seq = Some(seq);
                handled(policy, edge, message, delivery, now_ms, stats, &mut actions);
                while let Some(held) = edge.last_seq.and_then(|last| edge.holding.take_next(last)) {
                    stats.message_reordered();
                    handled_in_place(policy, edge, held, now_ms, stats, &mut actions);
                }
                edge.holding.moved(now_ms);
            }
            Place::Ahead(_) | Place::Behind => {
                handled(policy, edge, message, delivery, now_ms, stats, &mut actions)
            }
            Place::Start(seq) => {
                // What an old session left held goes first: it was sent before this birth.
                release_held(policy, edge, now_ms, stats, &mut actions);
                edge.last_seq = Some(seq);
                handled(policy, edge, message, delivery, now_ms, stats, &mut actions);
            }
            Place::Unsequenced => {
                // A death comes after everything its node sent.
                release_held(policy, edge, now_ms, stats, &mut actions);
                handled(policy, edge, message, delivery, now_ms, stats, &mut actions);
            }
        }
        actions
    }

    /// Forgets the messages held behind gaps, without acknowledging them: after a lost
    /// connection the broker delivers them again. Returns how many there were.
    pub fn forget_held(&mut self) -> usize {
        self.edges
            .values_mut()
            .map(|edge| edge.holding.take_all(None).len())
            .sum()
    }

    /// Sizes, topic, admission and decoding: the message, or `None` when it was refused
    /// (counted) or carries no machine data.
    fn admit<'a>(
        &self,
        topic: &'a str,
        payload: &[u8],
        now_ms: u64,
        stats: &HubStats,
    ) -> Option<Received<'a>> {
        let limits = &self.policy.limits;
        // Sizes first: nothing of an oversized message is parsed, and the log echoes a prefix.
        if topic.len() > limits.max_topic_len {
            let detail = format!("topic of {} bytes", topic.len());
            refuse(stats, IngestDrop::TopicTooLong, 1, now_ms, topic, &detail);
            return None;
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
            return None;
        }
        let (lab, kind, gateway, machine) = match Topic::parse(topic) {
            Ok(Topic::Message {
                lab,
                kind,
                gateway,
                machine,
            }) => (lab, kind, gateway, machine),
            // STATE messages (ours or another host's) carry no machine data.
            Ok(Topic::State { .. }) => return None,
            Err(err) => {
                refuse(stats, IngestDrop::BadTopic, 1, now_ms, topic, &err);
                return None;
            }
        };
        // Commands are what hosts send; this host's own NCMD/DCMD come back on `spBv1.0/#`.
        if matches!(kind, MessageType::NCmd | MessageType::DCmd) {
            return None;
        }
        let policy = &self.policy;
        if let Err(reason) = policy
            .directory
            .admit_edge(&lab, &gateway, policy.accept_unknown)
        {
            refuse(stats, reason, 1, now_ms, topic, &"edge node not admitted");
            return None;
        }
        let payload = match Payload::decode(payload) {
            Ok(payload) => payload,
            Err(err) => {
                refuse(stats, IngestDrop::BadPayload, 1, now_ms, topic, &err);
                return None;
            }
        };
        if self.edges.len() >= limits.max_edge_nodes
            && !self.edges.contains_key(&(lab.clone(), gateway.clone()))
        {
            let detail = format!("{} edge nodes tracked", self.edges.len());
            refuse(
                stats,
                IngestDrop::TooManyEdgeNodes,
                1,
                now_ms,
                topic,
                &detail,
            );
            return None;
        }
        Some(Received {
            topic: Cow::Borrowed(topic),
            lab,
            kind,
            gateway,
            machine,
            payload,
        })
    }
}

/// Handles a message whose place in the stream is settled, then hands its delivery back.
#[allow(clippy::too_many_arguments)]
fn handled(
    policy: &HostPolicy,
    edge: &mut EdgeSession,
    message: Received<'_>,
    delivery: Option<Delivery>,
    now_ms: u64,
    stats: &HubStats,
    actions: &mut Vec<HostAction>,
) {
    actions.extend(handle(policy, edge, message, now_ms, stats));
    actions.extend(delivery.map(HostAction::Acknowledge));
}

/// Handles a held message, which moves the stream to it.
fn handled_in_place(
    policy: &HostPolicy,
    edge: &mut EdgeSession,
    held: Held,
    now_ms: u64,
    stats: &HubStats,
    actions: &mut Vec<HostAction>,
) {
    edge.last_seq = Some(held.seq);
    handled(
        policy,
        edge,
        held.message,
        held.delivery,
        now_ms,
        stats,
        actions,
    );
}

/// Handles everything `edge` holds, in stream order: the gaps before them are taken for losses
/// and counted.
fn release_held(
    policy: &HostPolicy,
    edge: &mut EdgeSession,
    now_ms: u64,
    stats: &HubStats,
    actions: &mut Vec<HostAction>,
) -> bool {
    let held = edge.holding.take_all(edge.last_seq);
    let any = !held.is_empty();
    for held in held {
        if let Some(last) = edge.last_seq
            && seq_gap(u64::from(last), u64::from(held.seq)) != Some(0)
        {
            stats.seq_gap();
            if let Some(suppressed) = stats.may_log(WireEvent::SeqGap, now_ms) {
                let (lab, gateway) = (&held.message.lab, &held.message.gateway);
                warn!(%lab, %gateway, last, seq = held.seq, suppressed, "Sparkplug seq gap: messages lost");
            }
        }
        handled_in_place(policy, edge, held, now_ms, stats, actions);
    }
    any
}

/// Handles one message of `edge`: its twin updates, or a rebirth request when it cannot be
/// understood without a birth.
fn handle(
    policy: &HostPolicy,
    edge: &mut EdgeSession,
    message: Received<'_>,
    now_ms: u64,
    stats: &HubStats,
) -> Vec<HostAction> {
    let Received {
        topic,
        lab,
        kind,
        gateway,
        machine,
        payload,
    } = message;
    let topic: &str = &topic;
    let limits = &policy.limits;
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
            let path = PathFacts {
                key: key.clone(),
                gateway: gateway.to_string(),
                hop: hop("DBIRTH", topic, &payload, edge.bd_seq),
                birth: Some((aliases, device.seq_alias)),
            };
            edge.devices.insert(machine, device);
            vec![
                HostAction::Path(path),
                HostAction::Twin(TwinUpdate::Birth {
                    key,
                    gateway,
                    boot,
                    node_seq,
                    metrics,
                    timestamp,
                }),
            ]
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
            let path = PathFacts {
                key: TwinKey {
                    lab: lab.clone(),
                    machine: machine.clone(),
                },
                gateway: gateway.to_string(),
                hop: hop("DDATA", topic, &payload, edge.bd_seq),
                birth: None,
            };
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
            let mut actions = vec![HostAction::Path(path)];
            actions.extend(update.map(HostAction::Twin));
            actions
        }
        (MessageType::NData, _) if !edge.born => request_rebirth(edge, lab, gateway, stats, now_ms),
        // Node-level data carries no machine values yet.
        _ => Vec::new(),
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
mod tests;
