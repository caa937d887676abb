//! The Sparkplug B edge-node session, sans-IO: it turns "this machine exists / has these values"
//! into topics and payloads, and owns `bdSeq`, `seq`, the alias table and which devices are born
//! in the current MQTT session.
//!
//! Births are lazy: [`EdgeNode::ensure_born`] returns a DBIRTH only when the machine is not born
//! in this session, its node rebooted, or it gained metrics — so a sender can call it before every
//! DDATA, including records replayed from the disk buffer long after they were taken.

use std::collections::BTreeMap;

use protocol::sparkplug::{
    BD_SEQ_METRIC, BdSeq, DataType, MessageType, Metric, MetricValue, Payload, PropertySet,
    PropertyValue, PropertyValueKind, REBIRTH_METRIC, SeqCounter, Topic,
};
use protocol::{GatewayId, LabId, MachineId, MetricName, Unit};

/// Name of the per-sample sequence metric every device carries, so the hub can order and
/// de-duplicate samples by the node's own sequence number. It is a UInt32 carried in the
/// protobuf `long_value`, as Eclipse Tahu and Ignition expect (the 3.0 text allows both fields).
pub const NODE_SEQ_METRIC: &str = protocol::metric_names::NODE_SEQ;
/// DBIRTH metric with the node's boot id: sequence numbers are ordered within one boot.
pub const NODE_BOOT_METRIC: &str = protocol::metric_names::NODE_BOOT;
/// Property key carrying a metric's unit in births (the key Ignition and others use).
pub const UNIT_PROPERTY: &str = "engUnit";

/// An MQTT message ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The Sparkplug topic.
    pub topic: Topic,
    /// The protobuf payload.
    pub payload: Payload,
}

/// A machine known to the session: its metrics and their aliases.
#[derive(Debug, Clone)]
struct Device {
    metrics: BTreeMap<MetricName, (Unit, u64)>,
    seq_alias: u64,
    boot_alias: u64,
    /// The boot of the node feeding it, when known (unknown after a gateway restart until the
    /// node says `Hello`).
    boot: Option<u32>,
    last_node_seq: u32,
    born: bool,
}

/// A value for DDATA.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The metric.
    pub name: MetricName,
    /// Its value.
    pub value: f32,
}

/// Why a message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// Data for a machine that has no DBIRTH in this session.
    #[error("machine {0} has no DBIRTH in this session")]
    UnbornDevice(MachineId),
    /// Data naming a metric the machine's DBIRTH did not list.
    #[error("metric {metric} was not in the DBIRTH of machine {machine}")]
    UnbornMetric {
        /// The machine.
        machine: MachineId,
        /// The metric.
        metric: MetricName,
    },
}

/// One edge node (= one gateway) in one Sparkplug group (= one lab).
#[derive(Debug, Clone)]
pub struct EdgeNode {
    lab: LabId,
    gateway: GatewayId,
    bd_seq: BdSeq,
    seq: SeqCounter,
    devices: BTreeMap<MachineId, Device>,
    next_alias: u64,
}

impl EdgeNode {
    /// A session that has not been born yet.
    pub fn new(lab: LabId, gateway: GatewayId, bd_seq: BdSeq) -> Self {
        Self {
            lab,
            gateway,
            bd_seq,
            seq: SeqCounter::default(),
            devices: BTreeMap::new(),
            next_alias: 1,
        }
    }

    /// The lab (Sparkplug group) this edge node belongs to.
    pub fn lab(&self) -> &LabId {
        &self.lab
    }

    /// The current `bdSeq`.
    pub fn bd_seq(&self) -> BdSeq {
        self.bd_seq
    }

    /// Sets the `bdSeq` of a new MQTT session (its Will must carry the same value).
    pub fn set_bd_seq(&mut self, bd_seq: BdSeq) {
        self.bd_seq = bd_seq;
    }

    /// The machines known to this gateway.
    pub fn machines(&self) -> impl Iterator<Item = &MachineId> {
        self.devices.keys()
    }

    /// The NDEATH to register as the MQTT Will, and to publish before a clean disconnect.
    pub fn death(&self, now_ms: u64) -> Outgoing {
        Outgoing {
            topic: Topic::node(&self.lab, MessageType::NDeath, &self.gateway),
            payload: Payload {
                timestamp: Some(now_ms),
                metrics: vec![self.bd_seq_metric()],
                ..Default::default()
            },
        }
    }

    fn bd_seq_metric(&self) -> Metric {
        Metric::new(DataType::UInt64, MetricValue::Long(self.bd_seq.value())).named(BD_SEQ_METRIC)
    }

    /// The NBIRTH of a new session (or of a rebirth): resets `seq` to 0 and makes every machine
    /// unborn, so each gets its DBIRTH again from [`EdgeNode::ensure_born`].
    pub fn node_birth(&mut self, now_ms: u64) -> Outgoing {
        self.seq.reset();
        for device in self.devices.values_mut() {
            device.born = false;
        }
        Outgoing {
            topic: Topic::node(&self.lab, MessageType::NBirth, &self.gateway),
            payload: Payload {
                timestamp: Some(now_ms),
                seq: Some(self.seq.next_seq()),
                metrics: vec![
                    self.bd_seq_metric(),
                    Metric::new(DataType::Boolean, MetricValue::Boolean(false))
                        .named(REBIRTH_METRIC),
                ],
                ..Default::default()
            },
        }
    }

    /// Records what a node's `Hello` says about its machine: its boot and metrics. A new boot
    /// or new metrics make the machine unborn, so its next data is preceded by a DBIRTH.
    pub fn know_machine(
        &mut self,
        machine: &MachineId,
        boot: Option<u32>,
        metrics: &[(MetricName, Unit)],
    ) {
        self.merge(machine, boot, metrics);
    }

    /// The DBIRTH to publish before data of `machine` from node boot `boot`, if one is due.
    pub fn ensure_born(
        &mut self,
        machine: &MachineId,
        boot: Option<u32>,
        metrics: &[(MetricName, Unit)],
        now_ms: u64,
    ) -> Option<Outgoing> {
        self.merge(machine, boot, metrics);
        let device = self.devices.get_mut(machine)?;
        if device.born {
            return None;
        }
        device.born = true;
        let mut birth = vec![
            Metric::new(
                DataType::UInt32,
                MetricValue::Long(u64::from(device.last_node_seq)),
            )
            .named(NODE_SEQ_METRIC)
            .aliased(device.seq_alias)
            .at(now_ms),
        ];
        let mut boot_metric = Metric::new(DataType::UInt32, MetricValue::Long(0))
            .named(NODE_BOOT_METRIC)
            .aliased(device.boot_alias)
            .at(now_ms);
        match device.boot {
            Some(boot) => boot_metric.value = Some(MetricValue::Long(u64::from(boot))),
            // Unknown (a restarted gateway replaying its buffer): the host keeps its ordering.
            None => {
                boot_metric.value = None;
                boot_metric.is_null = Some(true);
            }
        }
        birth.push(boot_metric);
        for (name, (unit, alias)) in &device.metrics {
            let mut metric = Metric::new(DataType::Float, MetricValue::Float(0.0))
                .named(name.as_str())
                .aliased(*alias)
                .at(now_ms);
            // The last value may be long gone; Sparkplug marks an unknown current value as null.
            metric.is_null = Some(true);
            metric.value = None;
            metric.properties = Some(PropertySet {
                keys: vec![UNIT_PROPERTY.to_owned()],
                values: vec![PropertyValue {
                    datatype: Some(DataType::String as u32),
                    is_null: None,
                    value: Some(PropertyValueKind::String(unit.symbol().to_owned())),
                }],
            });
            birth.push(metric);
        }
        Some(Outgoing {
            topic: Topic::device(&self.lab, MessageType::DBirth, &self.gateway, machine),
            payload: Payload {
                timestamp: Some(now_ms),
                seq: Some(self.seq.next_seq()),
                metrics: birth,
                ..Default::default()
            },
        })
    }

    fn merge(&mut self, machine: &MachineId, boot: Option<u32>, metrics: &[(MetricName, Unit)]) {
        if !self.devices.contains_key(machine) {
            let seq_alias = self.take_alias();
            let boot_alias = self.take_alias();
            self.devices.insert(
                machine.clone(),
                Device {
                    metrics: BTreeMap::new(),
                    seq_alias,
                    boot_alias,
                    boot: None,
                    last_node_seq: 0,
                    born: false,
                },
            );
        }
        let mut new_aliases = Vec::new();
        if let Some(device) = self.devices.get(machine) {
            for (name, _) in metrics {
                if !device.metrics.contains_key(name) {
                    new_aliases.push(name.clone());
                }
            }
        }
        let fresh: Vec<(MetricName, u64)> = new_aliases
            .into_iter()
            .map(|name| (name, self.take_alias()))
            .collect();
        let Some(device) = self.devices.get_mut(machine) else {
            return;
        };
        for (name, alias) in fresh {
            let unit = metrics
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Unit::Dimensionless, |(_, u)| *u);
            device.metrics.insert(name, (unit, alias));
            device.born = false;
        }
        if boot.is_some() && boot != device.boot {
            device.boot = boot;
            device.last_node_seq = 0;
            device.born = false;
        }
    }

    fn take_alias(&mut self) -> u64 {
        let alias = self.next_alias;
        self.next_alias += 1;
        alias
    }

    /// A DDATA with the node's sample sequence and the values, by alias. Replayed samples are
    /// flagged `is_historical`.
    pub fn device_data(
        &mut self,
        machine: &MachineId,
        node_seq: u32,
        sampled_at_ms: u64,
        values: &[Value],
        historical: bool,
    ) -> Result<Outgoing, EdgeError> {
        let device = self
            .devices
            .get_mut(machine)
            .filter(|d| d.born)
            .ok_or_else(|| EdgeError::UnbornDevice(machine.clone()))?;
        // Sparkplug: data messages should not repeat the datatype; the birth announced it.
        let metric = |value, alias| Metric {
            value: Some(value),
            alias: Some(alias),
            timestamp: Some(sampled_at_ms),
            is_historical: historical.then_some(true),
            ..Default::default()
        };
        let mut metrics = Vec::with_capacity(values.len() + 1);
        metrics.push(metric(
            MetricValue::Long(u64::from(node_seq)),
            device.seq_alias,
        ));
        for value in values {
            let (_, alias) =
                device
                    .metrics
                    .get(&value.name)
                    .ok_or_else(|| EdgeError::UnbornMetric {
                        machine: machine.clone(),
                        metric: value.name.clone(),
                    })?;
            metrics.push(metric(MetricValue::Float(value.value), *alias));
        }
        device.last_node_seq = node_seq;
        Ok(Outgoing {
            topic: Topic::device(&self.lab, MessageType::DData, &self.gateway, machine),
            payload: Payload {
                timestamp: Some(sampled_at_ms),
                seq: Some(self.seq.next_seq()),
                metrics,
                ..Default::default()
            },
        })
    }

    /// A DDATA of metrics given by name, outside the sample stream (command results): it carries
    /// no `node.seq`, so the host applies it without ordering it among samples.
    pub fn device_report(
        &mut self,
        machine: &MachineId,
        metrics: Vec<Metric>,
        now_ms: u64,
    ) -> Option<Outgoing> {
        self.devices.get(machine).filter(|d| d.born)?;
        Some(Outgoing {
            topic: Topic::device(&self.lab, MessageType::DData, &self.gateway, machine),
            payload: Payload {
                timestamp: Some(now_ms),
                seq: Some(self.seq.next_seq()),
                metrics,
                ..Default::default()
            },
        })
    }

    /// A DDEATH for a machine whose sources went silent, if it is born; it is born again
    /// before its next data.
    pub fn device_death(&mut self, machine: &MachineId, now_ms: u64) -> Option<Outgoing> {
        let device = self.devices.get_mut(machine).filter(|d| d.born)?;
        device.born = false;
        Some(Outgoing {
            topic: Topic::device(&self.lab, MessageType::DDeath, &self.gateway, machine),
            payload: Payload {
                timestamp: Some(now_ms),
                seq: Some(self.seq.next_seq()),
                ..Default::default()
            },
        })
    }
}

/// Whether an NCMD payload asks for a rebirth.
pub fn is_rebirth_request(payload: &Payload) -> bool {
    payload.metrics.iter().any(|m| {
        m.name.as_deref() == Some(REBIRTH_METRIC) && m.value == Some(MetricValue::Boolean(true))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("valid id")
    }

    fn session() -> EdgeNode {
        EdgeNode::new(id("lab-a"), id("gw-a"), BdSeq::new(3))
    }

    fn power() -> Vec<(MetricName, Unit)> {
        vec![(id("spindle.power_w"), Unit::Watt)]
    }

    fn value(v: f32) -> Vec<Value> {
        vec![Value {
            name: id("spindle.power_w"),
            value: v,
        }]
    }

    #[test]
    fn nbirth_carries_bd_seq_and_seq_zero_and_dbirths_follow_lazily() {
        let mut edge = session();
        let nbirth = edge.node_birth(20);
        assert_eq!(nbirth.topic.to_string(), "spBv1.0/lab-a/NBIRTH/gw-a");
        assert_eq!(nbirth.payload.seq, Some(0));
        assert_eq!(nbirth.payload.metrics[0].value, Some(MetricValue::Long(3)));
        let dbirth = edge
            .ensure_born(&id("mill-1"), Some(9), &power(), 21)
            .expect("first birth");
        assert_eq!(dbirth.topic.to_string(), "spBv1.0/lab-a/DBIRTH/gw-a/mill-1");
        assert_eq!(dbirth.payload.seq, Some(1));
        assert_eq!(
            dbirth.payload.metrics[1].value,
            Some(MetricValue::Long(9)),
            "node.boot"
        );
        assert!(
            edge.ensure_born(&id("mill-1"), Some(9), &power(), 22)
                .is_none(),
            "already born"
        );
        assert_eq!(
            edge.death(30).payload.metrics[0].value,
            Some(MetricValue::Long(3))
        );
    }

    #[test]
    fn a_new_boot_new_metrics_or_a_new_session_need_a_new_dbirth() {
        let mut edge = session();
        edge.node_birth(0);
        edge.ensure_born(&id("m"), Some(1), &power(), 0)
            .expect("birth");
        assert!(
            edge.ensure_born(&id("m"), Some(2), &power(), 0).is_some(),
            "reboot"
        );
        let more = vec![(id("a.b"), Unit::Count)];
        assert!(
            edge.ensure_born(&id("m"), Some(2), &more, 0).is_some(),
            "new metric"
        );
        edge.node_birth(0);
        let again = edge
            .ensure_born(&id("m"), None, &[], 0)
            .expect("new session");
        assert_eq!(
            again.payload.metrics.len(),
            4,
            "node.seq, node.boot and both metrics"
        );
    }

    #[test]
    fn ddata_uses_the_aliases_of_the_birth_no_names_no_datatypes() {
        let mut edge = session();
        edge.node_birth(0);
        let birth = edge
            .ensure_born(&id("mill-1"), Some(1), &power(), 0)
            .expect("birth");
        let alias_of = |name: &str| {
            birth
                .payload
                .metrics
                .iter()
                .find(|m| m.name.as_deref() == Some(name))
                .and_then(|m| m.alias)
        };
        let data = edge
            .device_data(&id("mill-1"), 7, 99, &value(1.5), false)
            .expect("born");
        assert!(
            data.payload
                .metrics
                .iter()
                .all(|m| m.name.is_none() && m.datatype.is_none())
        );
        assert!(
            data.payload
                .metrics
                .iter()
                .all(|m| m.is_historical.is_none())
        );
        assert_eq!(data.payload.metrics[0].alias, alias_of(NODE_SEQ_METRIC));
        assert_eq!(data.payload.metrics[0].value, Some(MetricValue::Long(7)));
        assert_eq!(data.payload.metrics[1].alias, alias_of("spindle.power_w"));
        let replay = edge
            .device_data(&id("mill-1"), 8, 99, &value(1.5), true)
            .expect("born");
        assert!(
            replay
                .payload
                .metrics
                .iter()
                .all(|m| m.is_historical == Some(true))
        );
    }

    #[test]
    fn aliases_are_unique_across_devices_and_stable_across_sessions() {
        let mut edge = session();
        let aliases = |o: &Outgoing| {
            o.payload
                .metrics
                .iter()
                .filter_map(|m| m.alias)
                .collect::<Vec<_>>()
        };
        edge.node_birth(0);
        let a = aliases(
            &edge
                .ensure_born(&id("m-a"), Some(1), &power(), 0)
                .expect("birth"),
        );
        let b = aliases(
            &edge
                .ensure_born(&id("m-b"), Some(1), &power(), 0)
                .expect("birth"),
        );
        assert!(a.iter().all(|x| !b.contains(x)), "{a:?} vs {b:?}");
        edge.node_birth(0);
        assert_eq!(
            aliases(
                &edge
                    .ensure_born(&id("m-a"), Some(1), &power(), 0)
                    .expect("birth")
            ),
            a
        );
    }

    #[test]
    fn data_for_unborn_machines_or_metrics_is_refused_and_ddeath_unborns() {
        let mut edge = session();
        edge.node_birth(0);
        assert_eq!(
            edge.device_data(&id("ghost"), 1, 0, &[], false),
            Err(EdgeError::UnbornDevice(id("ghost")))
        );
        edge.ensure_born(&id("m"), Some(1), &[], 0).expect("birth");
        assert!(matches!(
            edge.device_data(&id("m"), 1, 0, &value(0.0), false),
            Err(EdgeError::UnbornMetric { .. })
        ));
        let death = edge.device_death(&id("m"), 5).expect("born, so it can die");
        assert_eq!(death.topic.to_string(), "spBv1.0/lab-a/DDEATH/gw-a/m");
        assert!(edge.device_death(&id("m"), 6).is_none());
        assert!(edge.device_data(&id("m"), 2, 0, &[], false).is_err());
    }

    #[test]
    fn seq_wraps_at_256() {
        let mut edge = session();
        edge.node_birth(0);
        edge.ensure_born(&id("m"), Some(1), &[], 0).expect("birth");
        let seqs: Vec<u64> = (0..300)
            .map(|i| {
                edge.device_data(&id("m"), i, 0, &[], false)
                    .expect("born")
                    .payload
                    .seq
                    .unwrap_or(999)
            })
            .collect();
        assert_eq!(seqs[253], 255);
        assert_eq!(seqs[254], 0);
    }
}
