//! The gateway's sans-IO pipeline: node frames in, machine-level actions out.
//!
//! validate (decode, finite values, known metrics) → map node → machine (config first, then the
//! node's own `Hello`) → de-duplicate by (node, seq) → actions for the Sparkplug session.

use std::collections::HashMap;

use protocol::{
    Command, CommandKind, DecodeError, EventKind, Frame, Hello, MachineId, MetricName, NodeId,
    Samples, Unit, codec,
};

use crate::normalise::{EnergyMeter, energy_metric, plausible};
use crate::record::BufferedSample;
use crate::source::{Inbound, SourceId};
use crate::stats::{DropReason, GatewayStats};

/// What the pipeline wants done after a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A node said `Hello`: its machine exists with these metrics, from this boot.
    BirthMachine {
        /// The node.
        node: NodeId,
        /// The machine.
        machine: MachineId,
        /// The node's boot id.
        boot: u32,
        /// Its metrics and units.
        metrics: Vec<(MetricName, Unit)>,
    },
    /// Store and forward one sample.
    Data(BufferedSample),
    /// A node acknowledged a command.
    CommandResult {
        /// The node.
        node: NodeId,
        /// The command's correlation id.
        command_id: u16,
        /// The outcome.
        result: protocol::AckResult,
    },
    /// Send a command down to a node.
    Command(Command),
}

#[derive(Debug, Default)]
struct NodeState {
    source: Option<SourceId>,
    energy: EnergyMeter,
    hello: Option<Hello>,
    machine: Option<MachineId>,
    last_seq: u32,
    hello_requested: bool,
}

/// Per-node state of one gateway.
#[derive(Debug)]
pub struct Pipeline {
    configured: HashMap<NodeId, MachineId>,
    accept_unconfigured: bool,
    nodes: HashMap<NodeId, NodeState>,
    next_command_id: u16,
}

/// Whether the gateway integrates energy for this node: it reports power but no energy itself.
fn derives_energy(hello: &Hello) -> bool {
    hello.metrics.iter().any(|d| d.unit == Unit::Watt)
        && !hello.metrics.iter().any(|d| d.unit == Unit::WattHour)
}

/// The machine a node maps to when neither config nor its `Hello` says: `node-{hex}`.
pub fn fallback_machine(node: NodeId) -> MachineId {
    MachineId::new(&format!("node-{node}")).unwrap_or_else(|_| unreachable!("hex is a valid id"))
}

impl Pipeline {
    /// A pipeline with the node → machine map from configuration; with `accept_unconfigured`
    /// false, frames from other nodes are dropped.
    pub fn new(configured: HashMap<NodeId, MachineId>, accept_unconfigured: bool) -> Self {
        Self {
            configured,
            accept_unconfigured,
            nodes: HashMap::new(),
            next_command_id: 1,
        }
    }

    /// The machine a node currently feeds, if known.
    pub fn machine_of(&self, node: NodeId) -> Option<&MachineId> {
        self.nodes.get(&node).and_then(|n| n.machine.as_ref())
    }

    /// The link a node was last heard on; commands for it go back that way.
    pub fn source_of(&self, node: NodeId) -> Option<&SourceId> {
        self.nodes.get(&node).and_then(|n| n.source.as_ref())
    }

    /// The machines whose nodes were last heard on `source`, sorted.
    pub fn machines_on(&self, source: &SourceId) -> Vec<MachineId> {
        let mut machines: Vec<MachineId> = self
            .nodes
            .values()
            .filter(|n| n.source.as_ref() == Some(source))
            .filter_map(|n| n.machine.clone())
            .collect();
        machines.sort();
        machines.dedup();
        machines
    }

    /// Handles the bytes received on node `topic_node`'s MQTT uplink topic.
    pub fn on_frame(
        &mut self,
        topic_node: NodeId,
        bytes: &[u8],
        now_ms: u64,
        stats: &GatewayStats,
    ) -> Result<Vec<Action>, DecodeError> {
        stats.frame_received();
        let frame = codec::decode(bytes).inspect_err(|err| stats.decode_failed(err))?;
        if frame.node() != topic_node {
            stats.dropped(DropReason::NodeMismatch);
            return Ok(Vec::new());
        }
        Ok(self.on_decoded(SourceId::Mqtt, frame, now_ms, stats))
    }

    /// Handles a frame (or a framing failure) from a byte-stream or polled source.
    pub fn on_inbound(
        &mut self,
        inbound: Inbound,
        now_ms: u64,
        stats: &GatewayStats,
    ) -> Result<Vec<Action>, DecodeError> {
        stats.frame_received();
        let frame = inbound.frame.inspect_err(|err| stats.decode_failed(err))?;
        // A source clock ahead of ours would date samples in the future, where the hub would
        // take them for the newest values until real time caught up: never later than receipt.
        let sampled_at_ms = inbound
            .taken_at_ms
            .map_or(now_ms, |taken| taken.min(now_ms));
        Ok(self.on_decoded(inbound.source, frame, sampled_at_ms, stats))
    }

    fn on_decoded(
        &mut self,
        source: SourceId,
        frame: Frame,
        sampled_at_ms: u64,
        stats: &GatewayStats,
    ) -> Vec<Action> {
        let node = frame.node();
        if !self.accept_unconfigured && !self.configured.contains_key(&node) {
            stats.dropped(DropReason::UnconfiguredNode);
            return Vec::new();
        }
        self.nodes.entry(node).or_default().source = Some(source);
        match frame {
            Frame::Hello(hello) => self.on_hello(hello),
            Frame::Samples(samples) => self.on_samples(samples, sampled_at_ms, stats),
            // Events and acks are logged by the caller; they carry no machine data yet.
            Frame::Ack(ack) => vec![Action::CommandResult {
                node,
                command_id: ack.command_id,
                result: ack.result,
            }],
            Frame::Event(event) => {
                self.on_event(&event, stats);
                Vec::new()
            }
            Frame::Command(_) => Vec::new(),
        }
    }

    /// The nodes currently feeding `machine`.
    pub fn nodes_of(&self, machine: &MachineId) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, s)| s.machine.as_ref() == Some(machine))
            .map(|(node, _)| *node)
            .collect();
        nodes.sort();
        nodes
    }

    /// A command for `node` with a fresh correlation id.
    pub fn command(&mut self, node: NodeId, kind: CommandKind) -> Command {
        let id = self.next_command_id;
        self.next_command_id = self.next_command_id.wrapping_add(1);
        Command { node, id, kind }
    }

    fn on_event(&self, event: &protocol::Event, stats: &GatewayStats) {
        let node = event.node;
        let machine = self
            .machine_of(node)
            .map(MachineId::to_string)
            .unwrap_or_default();
        match event.kind {
            EventKind::LinkRegained { dropped_samples } if dropped_samples > 0 => {
                stats.dropped_many(DropReason::NodeBufferOverflow, u64::from(dropped_samples));
                tracing::error!(%node, %machine, dropped_samples, "a node's buffer overflowed while its link was down");
            }
            EventKind::SensorFault { index, code } => {
                tracing::warn!(%node, %machine, index, code, "a node reports a failing sensor");
            }
            EventKind::SensorRecovered { index } => {
                tracing::info!(%node, %machine, index, "a node's sensor recovered")
            }
            EventKind::Reset { reason } => {
                tracing::info!(%node, %machine, ?reason, "a node booted")
            }
            _ => {}
        }
    }

    /// The last `Hello` of a node.
    pub fn hello(&self, node: NodeId) -> Option<&Hello> {
        self.nodes.get(&node).and_then(|n| n.hello.as_ref())
    }

    /// Takes in a `Hello` saved before a restart, as if the node had just said it.
    pub fn restore(&mut self, hello: Hello) -> Vec<Action> {
        self.on_hello(hello)
    }

    fn on_hello(&mut self, hello: Hello) -> Vec<Action> {
        let node = hello.node;
        let machine = self
            .configured
            .get(&node)
            .cloned()
            .or_else(|| hello.machine.clone())
            .unwrap_or_else(|| fallback_machine(node));
        let mut metrics: Vec<(MetricName, Unit)> = hello
            .metrics
            .iter()
            .map(|d| (d.name.clone(), d.unit))
            .collect();
        if derives_energy(&hello) {
            metrics.push((energy_metric(), Unit::WattHour));
        }
        let boot = hello.boot;
        let state = self.nodes.entry(node).or_default();
        // Only a new boot restarts the sequence; a Hello the gateway asked for does not.
        if state.hello.as_ref().is_none_or(|known| known.boot != boot) {
            state.last_seq = 0;
            state.energy = EnergyMeter::default();
        }
        state.hello = Some(hello);
        state.machine = Some(machine.clone());
        state.hello_requested = false;
        vec![Action::BirthMachine {
            node,
            machine,
            boot,
            metrics,
        }]
    }

    fn on_samples(
        &mut self,
        samples: Samples,
        sampled_at_ms: u64,
        stats: &GatewayStats,
    ) -> Vec<Action> {
        let node = samples.node;
        let Some(state) = self.nodes.get_mut(&node).filter(|s| s.hello.is_some()) else {
            stats.dropped(DropReason::NoHello);
            return self.request_hello(node);
        };
        let (Some(hello), Some(machine)) = (&state.hello, &state.machine) else {
            return Vec::new();
        };
        if samples.seq <= state.last_seq {
            stats.dropped(DropReason::Duplicate);
            return Vec::new();
        }
        let mut values = Vec::with_capacity(samples.readings.len());
        for reading in &samples.readings {
            let Some(descriptor) = hello.metric(reading.index) else {
                stats.dropped(DropReason::UnknownMetric);
                continue;
            };
            if !reading.value.is_finite() {
                stats.dropped(DropReason::NotFinite);
                continue;
            }
            if !plausible(descriptor.unit, reading.value) {
                stats.dropped(DropReason::OutOfRange);
                continue;
            }
            values.push((descriptor.name.clone(), descriptor.unit, reading.value));
        }
        if derives_energy(hello)
            && let Some(&(_, _, power)) = values.iter().find(|(_, unit, _)| *unit == Unit::Watt)
        {
            let total = state.energy.add(samples.uptime_ms, power);
            values.push((energy_metric(), Unit::WattHour, total as f32));
        }
        state.last_seq = samples.seq;
        vec![Action::Data(BufferedSample {
            machine: machine.clone(),
            boot: Some(hello.boot),
            node_seq: samples.seq,
            received_at_ms: sampled_at_ms,
            historical: false,
            values,
        })]
    }

    fn request_hello(&mut self, node: NodeId) -> Vec<Action> {
        let state = self.nodes.entry(node).or_default();
        if state.hello_requested {
            return Vec::new();
        }
        state.hello_requested = true;
        let id = self.next_command_id;
        self.next_command_id = self.next_command_id.wrapping_add(1);
        vec![Action::Command(Command {
            node,
            id,
            kind: CommandKind::RequestHello,
        })]
    }
}

#[cfg(test)]
mod tests {
    use protocol::{Reading, golden};

    use super::*;

    fn encode(frame: &Frame) -> Vec<u8> {
        codec::encode_to_vec(frame).expect("fits")
    }

    fn samples(seq: u32, value: f32) -> Frame {
        let mut frame = golden::samples();
        if let Frame::Samples(s) = &mut frame {
            s.seq = seq;
            s.readings[0] = Reading { index: 0, value };
        }
        frame
    }

    #[test]
    fn hello_then_samples_births_the_machine_and_forwards_in_order() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        let actions = pipeline
            .on_frame(golden::NODE, golden::HELLO, 0, &stats)
            .expect("valid");
        assert!(
            matches!(&actions[..], [Action::BirthMachine { machine, boot: 0x0b00_7001, metrics, .. }]
            if machine.as_str() == "mill-1" && metrics.len() == 5 && metrics[4].0.as_str() == "energy.total_wh")
        );
        let actions = pipeline
            .on_frame(golden::NODE, golden::SAMPLES, 5, &stats)
            .expect("valid");
        assert!(
            matches!(&actions[..], [Action::Data(BufferedSample { node_seq: 42, received_at_ms: 5, values, .. })]
            if values.len() == 5 && values[0].2 == 5321.5)
        );
    }

    #[test]
    fn machines_on_a_port_are_those_of_the_nodes_last_heard_there() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        let port = SourceId::Serial("/dev/ttyUSB0".into());
        assert!(pipeline.machines_on(&port).is_empty());
        let inbound = Inbound {
            source: port.clone(),
            frame: Ok(golden::hello()),
            taken_at_ms: None,
        };
        pipeline.on_inbound(inbound, 0, &stats).expect("valid");
        assert_eq!(
            pipeline.machines_on(&port),
            [MachineId::new("mill-1").expect("valid")]
        );
        assert!(
            pipeline
                .machines_on(&SourceId::Serial("/dev/ttyUSB1".into()))
                .is_empty()
        );
        // The node moved to the lab broker: the port no longer feeds its machine.
        pipeline
            .on_frame(golden::NODE, golden::SAMPLES, 5, &stats)
            .expect("valid");
        assert!(pipeline.machines_on(&port).is_empty());
    }

    #[test]
    fn a_source_timestamp_dates_the_sample_but_never_after_receipt() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        let source = SourceId::OpcUa("cell".into());
        let mut feed = |frame: Frame, taken_at_ms: Option<u64>| {
            let inbound = Inbound {
                source: source.clone(),
                frame: Ok(frame),
                taken_at_ms,
            };
            pipeline.on_inbound(inbound, 10_000, &stats).expect("valid")
        };
        feed(golden::hello(), None);
        let dated = |actions: Vec<Action>| match &actions[..] {
            [Action::Data(sample)] => sample.received_at_ms,
            other => panic!("one sample expected: {other:?}"),
        };
        assert_eq!(dated(feed(samples(1, 1.0), Some(9_250))), 9_250);
        assert_eq!(dated(feed(samples(2, 1.0), Some(60_000))), 10_000);
        assert_eq!(dated(feed(samples(3, 1.0), None)), 10_000);
    }

    #[test]
    fn configuration_overrides_the_nodes_own_machine() {
        let stats = GatewayStats::default();
        let map = HashMap::from([(golden::NODE, MachineId::new("lathe-9").expect("valid"))]);
        let mut pipeline = Pipeline::new(map, true);
        pipeline
            .on_frame(golden::NODE, golden::HELLO, 0, &stats)
            .expect("valid");
        assert_eq!(
            pipeline.machine_of(golden::NODE).map(MachineId::as_str),
            Some("lathe-9")
        );
    }

    #[test]
    fn a_closed_pipeline_drops_frames_of_unconfigured_nodes() {
        let stats = GatewayStats::default();
        let map = HashMap::from([(NodeId(1), MachineId::new("other").expect("valid"))]);
        let mut pipeline = Pipeline::new(map, false);
        let actions = pipeline
            .on_frame(golden::NODE, golden::HELLO, 0, &stats)
            .expect("valid");
        assert!(actions.is_empty());
        assert_eq!(stats.snapshot().dropped(DropReason::UnconfiguredNode), 1);
    }

    #[test]
    fn duplicates_and_replays_are_dropped_and_counted() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        pipeline
            .on_frame(golden::NODE, golden::HELLO, 0, &stats)
            .expect("valid");
        for seq in [1, 2, 2, 1, 3] {
            pipeline
                .on_frame(golden::NODE, &encode(&samples(seq, 1.0)), 0, &stats)
                .expect("valid");
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.dropped(DropReason::Duplicate), 2);
        assert_eq!(snapshot.frames_received, 6);
    }

    #[test]
    fn a_hello_from_the_same_boot_keeps_deduplicating_and_a_new_boot_restarts() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        pipeline
            .on_frame(golden::NODE, golden::HELLO, 0, &stats)
            .expect("valid");
        pipeline
            .on_frame(golden::NODE, &encode(&samples(5, 1.0)), 0, &stats)
            .expect("valid");
        pipeline
            .on_frame(golden::NODE, golden::HELLO, 0, &stats)
            .expect("valid");
        let replay = pipeline
            .on_frame(golden::NODE, &encode(&samples(5, 1.0)), 0, &stats)
            .expect("valid");
        assert!(replay.is_empty(), "same boot: seq 5 was forwarded already");
        let mut rebooted = golden::hello();
        if let Frame::Hello(h) = &mut rebooted {
            h.boot += 1;
        }
        pipeline
            .on_frame(golden::NODE, &encode(&rebooted), 0, &stats)
            .expect("valid");
        let fresh = pipeline
            .on_frame(golden::NODE, &encode(&samples(1, 1.0)), 0, &stats)
            .expect("valid");
        assert_eq!(fresh.len(), 1, "new boot: seq 1 is new");
    }

    #[test]
    fn implausible_readings_are_dropped_and_energy_is_integrated_from_power() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        pipeline
            .on_frame(golden::NODE, golden::HELLO, 0, &stats)
            .expect("valid");
        let mut energies = Vec::new();
        for seq in 1..=3u32 {
            let mut frame = samples(seq, 3600.0);
            if let Frame::Samples(s) = &mut frame {
                s.uptime_ms = u64::from(seq) * 1000;
                s.readings[3].value = if seq == 2 { 300.0 } else { 2.0 }; // state.code 300: impossible
            }
            let actions = pipeline
                .on_frame(golden::NODE, &encode(&frame), 0, &stats)
                .expect("valid");
            let [Action::Data(sample)] = &actions[..] else {
                panic!("one sample: {actions:?}")
            };
            energies.push(
                sample
                    .values
                    .iter()
                    .find(|v| v.0.as_str() == "energy.total_wh")
                    .map(|v| v.2),
            );
        }
        // 3600 W for one second is 1 Wh.
        assert_eq!(energies, [Some(0.0), Some(1.0), Some(2.0)]);
        assert_eq!(stats.snapshot().dropped(DropReason::OutOfRange), 1);
    }

    #[test]
    fn samples_before_hello_request_one_hello_and_are_counted() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        let first = pipeline
            .on_frame(golden::NODE, golden::SAMPLES, 0, &stats)
            .expect("valid");
        assert!(matches!(
            &first[..],
            [Action::Command(Command {
                kind: CommandKind::RequestHello,
                ..
            })]
        ));
        let second = pipeline
            .on_frame(golden::NODE, golden::SAMPLES, 0, &stats)
            .expect("valid");
        assert!(second.is_empty(), "one request per silence, not per frame");
        assert_eq!(stats.snapshot().dropped(DropReason::NoHello), 2);
    }

    #[test]
    fn bad_frames_and_foreign_node_ids_are_counted() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        assert!(
            pipeline
                .on_frame(golden::NODE, &[1, 2, 3, 4, 5], 0, &stats)
                .is_err()
        );
        let other = NodeId(7);
        assert_eq!(
            pipeline.on_frame(other, golden::HELLO, 0, &stats),
            Ok(Vec::new())
        );
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.dropped(DropReason::BadFrame), 1);
        assert_eq!(snapshot.dropped(DropReason::NodeMismatch), 1);
    }

    #[test]
    fn non_finite_readings_are_dropped_but_the_sample_goes_on() {
        let stats = GatewayStats::default();
        let mut pipeline = Pipeline::new(HashMap::new(), true);
        pipeline
            .on_frame(golden::NODE, golden::HELLO, 0, &stats)
            .expect("valid");
        let actions = pipeline
            .on_frame(golden::NODE, &encode(&samples(1, f32::NAN)), 0, &stats)
            .expect("valid");
        assert!(
            matches!(&actions[..], [Action::Data(BufferedSample { values, .. })] if values.len() == 3)
        );
        assert_eq!(stats.snapshot().dropped(DropReason::NotFinite), 1);
    }
}
