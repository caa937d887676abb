//! The Sparkplug B edge-node session, sans-IO: it turns "this machine was born / has these
//! values" into topics and payloads, and owns `bdSeq`, `seq` and the alias table.

use std::collections::BTreeMap;

use protocol::sparkplug::{
    BD_SEQ_METRIC, BdSeq, DataType, MessageType, Metric, MetricValue, Payload, PropertySet,
    PropertyValue, PropertyValueKind, REBIRTH_METRIC, SeqCounter, Topic,
};
use protocol::{GatewayId, LabId, MachineId, MetricName, Unit};

/// Name of the per-sample sequence metric every device carries, so the hub can order and
/// de-duplicate samples by the node's own sequence number. It is a UInt32 carried in the
/// protobuf `long_value`, as Eclipse Tahu and Ignition expect (the 3.0 text allows both fields).
pub const NODE_SEQ_METRIC: &str = "node.seq";
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
    /// The node sequence of the last DDATA; a DBIRTH carries it so the host knows which
    /// samples are new after a rebirth (0 after the node booted).
    last_node_seq: u32,
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
    #[error("machine {0} has no DBIRTH yet")]
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

    /// The current `bdSeq`.
    pub fn bd_seq(&self) -> BdSeq {
        self.bd_seq
    }

    /// Sets the `bdSeq` of a new MQTT session (its Will must carry the same value).
    pub fn set_bd_seq(&mut self, bd_seq: BdSeq) {
        self.bd_seq = bd_seq;
    }

    /// The NDEATH to register as the MQTT Will before connecting.
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

    /// NBIRTH followed by a DBIRTH of every known machine: what to send on every (re)connect
    /// and on a rebirth request. Resets `seq` to 0.
    pub fn birth_all(&mut self, now_ms: u64) -> Vec<Outgoing> {
        self.seq.reset();
        let nbirth = Outgoing {
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
        };
        let machines: Vec<MachineId> = self.devices.keys().cloned().collect();
        let mut out = vec![nbirth];
        out.extend(
            machines
                .iter()
                .filter_map(|m| self.device_birth_message(m, now_ms)),
        );
        out
    }

    /// Registers (or re-registers with new metrics) a machine and returns its DBIRTH.
    /// Aliases are stable for a metric name across re-registrations.
    pub fn birth_device(
        &mut self,
        machine: &MachineId,
        metrics: &[(MetricName, Unit)],
        now_ms: u64,
    ) -> Outgoing {
        let previous = self.devices.remove(machine);
        let seq_alias = match &previous {
            Some(device) => device.seq_alias,
            None => self.take_alias(),
        };
        let mut table = BTreeMap::new();
        for (name, unit) in metrics {
            let alias = previous
                .as_ref()
                .and_then(|d| d.metrics.get(name).map(|(_, alias)| *alias))
                .unwrap_or_else(|| self.take_alias());
            table.insert(name.clone(), (*unit, alias));
        }
        self.devices.insert(
            machine.clone(),
            // Called on the node's Hello, i.e. after it booted: its sequence starts again.
            Device {
                metrics: table,
                seq_alias,
                last_node_seq: 0,
            },
        );
        // The device was inserted just above, so the message exists.
        self.device_birth_message(machine, now_ms)
            .unwrap_or_else(|| unreachable!())
    }

    fn take_alias(&mut self) -> u64 {
        let alias = self.next_alias;
        self.next_alias += 1;
        alias
    }

    fn device_birth_message(&mut self, machine: &MachineId, now_ms: u64) -> Option<Outgoing> {
        let device = self.devices.get(machine)?;
        let mut metrics = vec![
            Metric::new(
                DataType::UInt32,
                MetricValue::Long(u64::from(device.last_node_seq)),
            )
            .named(NODE_SEQ_METRIC)
            .aliased(device.seq_alias)
            .at(now_ms),
        ];
        for (name, (unit, alias)) in &device.metrics {
            let mut metric = Metric::new(DataType::Float, MetricValue::Float(0.0))
                .named(name.as_str())
                .aliased(*alias)
                .at(now_ms);
            // No value has been seen at birth time; Sparkplug marks that as null.
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
            metrics.push(metric);
        }
        Some(Outgoing {
            topic: Topic::device(&self.lab, MessageType::DBirth, &self.gateway, machine),
            payload: Payload {
                timestamp: Some(now_ms),
                seq: Some(self.seq.next_seq()),
                metrics,
                ..Default::default()
            },
        })
    }

    /// A DDATA with the node's sample sequence and the values, by alias.
    pub fn device_data(
        &mut self,
        machine: &MachineId,
        node_seq: u32,
        sampled_at_ms: u64,
        values: &[Value],
    ) -> Result<Outgoing, EdgeError> {
        let device = self
            .devices
            .get_mut(machine)
            .ok_or_else(|| EdgeError::UnbornDevice(machine.clone()))?;
        // Sparkplug: data messages should not repeat the datatype; the birth announced it.
        let untyped = |value| Metric {
            value: Some(value),
            ..Default::default()
        };
        let mut metrics = Vec::with_capacity(values.len() + 1);
        metrics.push(
            untyped(MetricValue::Long(u64::from(node_seq)))
                .aliased(device.seq_alias)
                .at(sampled_at_ms),
        );
        for value in values {
            let (_, alias) =
                device
                    .metrics
                    .get(&value.name)
                    .ok_or_else(|| EdgeError::UnbornMetric {
                        machine: machine.clone(),
                        metric: value.name.clone(),
                    })?;
            metrics.push(
                untyped(MetricValue::Float(value.value))
                    .aliased(*alias)
                    .at(sampled_at_ms),
            );
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

    #[test]
    fn nbirth_carries_bd_seq_and_seq_zero_then_dbirths_count_on() {
        let mut edge = session();
        edge.birth_device(&id("mill-1"), &[(id("spindle.power_w"), Unit::Watt)], 10);
        let births = edge.birth_all(20);
        assert_eq!(births.len(), 2);
        assert_eq!(births[0].topic.to_string(), "spBv1.0/lab-a/NBIRTH/gw-a");
        assert_eq!(births[0].payload.seq, Some(0));
        assert_eq!(
            births[0].payload.metrics[0].value,
            Some(MetricValue::Long(3))
        );
        assert_eq!(
            births[1].topic.to_string(),
            "spBv1.0/lab-a/DBIRTH/gw-a/mill-1"
        );
        assert_eq!(births[1].payload.seq, Some(1));
        assert_eq!(
            edge.death(30).payload.metrics[0].value,
            Some(MetricValue::Long(3))
        );
    }

    #[test]
    fn ddata_uses_the_aliases_of_the_birth_and_no_names() {
        let mut edge = session();
        let birth = edge.birth_device(
            &id("mill-1"),
            &[
                (id("spindle.power_w"), Unit::Watt),
                (id("coolant.temperature_c"), Unit::Celsius),
            ],
            0,
        );
        let alias_of = |name: &str| {
            birth
                .payload
                .metrics
                .iter()
                .find(|m| m.name.as_deref() == Some(name))
                .and_then(|m| m.alias)
        };
        let data = edge
            .device_data(
                &id("mill-1"),
                7,
                99,
                &[Value {
                    name: id("spindle.power_w"),
                    value: 1.5,
                }],
            )
            .expect("born");
        assert!(
            data.payload
                .metrics
                .iter()
                .all(|m| m.name.is_none() && m.datatype.is_none())
        );
        assert_eq!(data.payload.metrics[0].alias, alias_of(NODE_SEQ_METRIC));
        assert_eq!(data.payload.metrics[0].value, Some(MetricValue::Long(7)));
        assert_eq!(data.payload.metrics[1].alias, alias_of("spindle.power_w"));
    }

    #[test]
    fn aliases_are_unique_across_devices_and_stable_across_rebirths() {
        let mut edge = session();
        let a = edge.birth_device(&id("m-a"), &[(id("x.y"), Unit::Watt)], 0);
        let b = edge.birth_device(&id("m-b"), &[(id("x.y"), Unit::Watt)], 0);
        let aliases = |o: &Outgoing| {
            o.payload
                .metrics
                .iter()
                .filter_map(|m| m.alias)
                .collect::<Vec<_>>()
        };
        let (a, b) = (aliases(&a), aliases(&b));
        assert!(a.iter().all(|x| !b.contains(x)), "{a:?} vs {b:?}");
        let again = edge.birth_device(&id("m-a"), &[(id("x.y"), Unit::Watt)], 0);
        assert_eq!(aliases(&again), a);
    }

    #[test]
    fn data_for_unknown_machines_or_metrics_is_refused() {
        let mut edge = session();
        assert_eq!(
            edge.device_data(&id("ghost"), 1, 0, &[]),
            Err(EdgeError::UnbornDevice(id("ghost")))
        );
        edge.birth_device(&id("m"), &[], 0);
        assert!(matches!(
            edge.device_data(
                &id("m"),
                1,
                0,
                &[Value {
                    name: id("a.b"),
                    value: 0.0
                }]
            ),
            Err(EdgeError::UnbornMetric { .. })
        ));
    }

    #[test]
    fn a_rebirth_carries_the_last_node_seq_and_a_new_hello_resets_it() {
        let mut edge = session();
        edge.birth_device(&id("m"), &[], 0);
        edge.device_data(&id("m"), 41, 0, &[]).expect("born");
        let births = edge.birth_all(0);
        assert_eq!(
            births[1].payload.metrics[0].value,
            Some(MetricValue::Long(41))
        );
        let after_reboot = edge.birth_device(&id("m"), &[], 0);
        assert_eq!(
            after_reboot.payload.metrics[0].value,
            Some(MetricValue::Long(0))
        );
    }

    #[test]
    fn seq_wraps_at_256() {
        let mut edge = session();
        edge.birth_device(&id("m"), &[], 0);
        let seqs: Vec<u64> = (0..300)
            .map(|i| {
                edge.device_data(&id("m"), i, 0, &[])
                    .expect("born")
                    .payload
                    .seq
                    .unwrap_or(999)
            })
            .collect();
        assert_eq!(seqs[254], 255);
        assert_eq!(seqs[255], 0);
    }
}
