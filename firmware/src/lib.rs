//! Sensor-node firmware core: `#![no_std]`, no heap, memory fixed at compile time.
//!
//! Data path position: first hop. A node samples its sensors, and this core turns readings into
//! node frames with a monotonic sequence number, answers gateway commands with `Ack`s, and says
//! `Hello` at boot and on request. It is sans-IO: the board (or the host simulator) owns the
//! sensors, the clock and the link, and passes readings and received frames in.
//!
//! ```
//! use demolab_firmware::NodeCore;
//! use protocol::{golden, Frame};
//! let Frame::Hello(hello) = golden::hello() else { unreachable!() };
//! let mut node = NodeCore::new(hello.node, hello.firmware, hello.boot, hello.machine, hello.metrics);
//! let frame = node.sample(1_000, &[(0, 5321.5)]).unwrap();
//! assert!(matches!(frame, Frame::Samples(s) if s.seq == 1));
//! ```
#![no_std]
#![warn(missing_docs)]

use heapless::Vec;
pub mod drivers;
pub mod features;
pub mod mqtt;
pub mod ring;
pub mod runtime;
pub mod serial_link;

use protocol::frame::{MAX_METRICS, MAX_READINGS};
use protocol::{
    Ack, AckResult, Command, CommandKind, FirmwareVersion, Frame, Hello, MachineId,
    MetricDescriptor, NodeId, Reading, Samples,
};

/// Shortest sample period a node accepts, ms; faster would starve the link.
pub const MIN_PERIOD_MS: u32 = 10;
/// Number of digital outputs (relays) a node drives.
pub const OUTPUTS: u8 = 8;

/// Why the core refused to build a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeError {
    /// A reading names a metric index the node did not announce.
    UnknownMetric(u8),
    /// More readings than fit one frame.
    TooManyReadings,
}

/// What the node must send after handling a received frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The `Ack` of the command.
    pub ack: Frame,
    /// A `Hello` to send after the ack, when the command asked for one.
    pub hello: Option<Frame>,
}

/// The node's state: identity, metric descriptors, sequence counter, outputs.
#[derive(Debug, Clone)]
pub struct NodeCore {
    node: NodeId,
    firmware: FirmwareVersion,
    boot: u32,
    machine: Option<MachineId>,
    metrics: Vec<MetricDescriptor, MAX_METRICS>,
    last_seq: u32,
    identify_until_ms: u64,
    outputs: u8,
}

impl NodeCore {
    /// A node that has not sampled yet; its first `Samples` frame carries `seq` 1. `boot`
    /// must differ on every boot (a counter kept in flash, or a hardware random number).
    pub fn new(
        node: NodeId,
        firmware: FirmwareVersion,
        boot: u32,
        machine: Option<MachineId>,
        metrics: Vec<MetricDescriptor, MAX_METRICS>,
    ) -> Self {
        Self {
            node,
            firmware,
            boot,
            machine,
            metrics,
            last_seq: 0,
            identify_until_ms: 0,
            outputs: 0,
        }
    }

    /// The node's hardware id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The announced metrics, with their current periods.
    pub fn metrics(&self) -> &[MetricDescriptor] {
        &self.metrics
    }

    /// The `seq` of the last `Samples` frame built (0 before the first).
    pub fn last_seq(&self) -> u32 {
        self.last_seq
    }

    /// Whether the identify LED should be lit at `uptime_ms`.
    pub fn identifying(&self, uptime_ms: u64) -> bool {
        uptime_ms < self.identify_until_ms
    }

    /// The state of digital output `channel`.
    pub fn output(&self, channel: u8) -> bool {
        channel < OUTPUTS && self.outputs & (1 << channel) != 0
    }

    /// The boot / on-request `Hello`.
    pub fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            node: self.node,
            firmware: self.firmware,
            boot: self.boot,
            machine: self.machine.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Builds the next `Samples` frame from `(metric index, value)` readings.
    pub fn sample(&mut self, uptime_ms: u64, readings: &[(u8, f32)]) -> Result<Frame, NodeError> {
        if readings.len() > MAX_READINGS {
            return Err(NodeError::TooManyReadings);
        }
        let mut out = Vec::new();
        for &(index, value) in readings {
            if !self.metrics.iter().any(|d| d.index == index) {
                return Err(NodeError::UnknownMetric(index));
            }
            // Cannot fail: the length was checked above.
            let _ = out.push(Reading { index, value });
        }
        self.last_seq = self.last_seq.wrapping_add(1);
        Ok(Frame::Samples(Samples {
            node: self.node,
            seq: self.last_seq,
            uptime_ms,
            readings: out,
        }))
    }

    /// Handles a frame from the gateway. Frames for other nodes and non-commands are ignored.
    pub fn handle(&mut self, uptime_ms: u64, frame: &Frame) -> Option<Reply> {
        let Frame::Command(Command { node, id, kind }) = frame else {
            return None;
        };
        if *node != self.node {
            return None;
        }
        let mut hello = None;
        let result = match *kind {
            CommandKind::SetPeriod { period_ms, .. } if period_ms < MIN_PERIOD_MS => {
                AckResult::InvalidArgument
            }
            CommandKind::SetPeriod {
                index: Some(index),
                period_ms,
            } => match self.metrics.iter_mut().find(|d| d.index == index) {
                Some(descriptor) => {
                    descriptor.period_ms = period_ms;
                    AckResult::Ok
                }
                None => AckResult::InvalidArgument,
            },
            CommandKind::SetPeriod {
                index: None,
                period_ms,
            } => {
                self.metrics
                    .iter_mut()
                    .for_each(|d| d.period_ms = period_ms);
                AckResult::Ok
            }
            CommandKind::Identify { duration_ms } => {
                self.identify_until_ms = uptime_ms.saturating_add(u64::from(duration_ms));
                AckResult::Ok
            }
            CommandKind::SetOutput { channel, .. } if channel >= OUTPUTS => {
                AckResult::InvalidArgument
            }
            CommandKind::SetOutput { channel, on } => {
                if on {
                    self.outputs |= 1 << channel;
                } else {
                    self.outputs &= !(1 << channel);
                }
                AckResult::Ok
            }
            CommandKind::RequestHello => {
                hello = Some(self.hello());
                AckResult::Ok
            }
        };
        Some(Reply {
            ack: Frame::Ack(Ack {
                node: self.node,
                command_id: *id,
                result,
            }),
            hello,
        })
    }
}

#[cfg(test)]
mod tests {
    use protocol::golden;

    use super::*;

    fn golden_node() -> NodeCore {
        let Frame::Hello(hello) = golden::hello() else {
            unreachable!("golden hello")
        };
        NodeCore::new(
            hello.node,
            hello.firmware,
            hello.boot,
            hello.machine,
            hello.metrics,
        )
    }

    #[test]
    fn the_hello_is_the_golden_hello() {
        assert_eq!(golden_node().hello(), golden::hello());
    }

    #[test]
    fn samples_are_numbered_from_one_without_gaps() {
        let mut node = golden_node();
        for expected in 1..=5u32 {
            let frame = node
                .sample(u64::from(expected) * 1000, &[(0, 1.0)])
                .expect("known metric");
            assert!(matches!(frame, Frame::Samples(s) if s.seq == expected));
        }
    }

    #[test]
    fn unknown_metrics_are_refused_without_consuming_a_seq() {
        let mut node = golden_node();
        assert_eq!(
            node.sample(0, &[(9, 1.0)]),
            Err(NodeError::UnknownMetric(9))
        );
        assert_eq!(node.last_seq(), 0);
    }

    #[test]
    fn the_golden_command_sets_every_period_and_is_acked() {
        let mut node = golden_node();
        let reply = node
            .handle(0, &golden::command())
            .expect("addressed to this node");
        assert_eq!(reply.ack, golden::ack());
        assert!(node.metrics().iter().all(|d| d.period_ms == 500));
    }

    #[test]
    fn commands_for_other_nodes_are_ignored_and_bad_arguments_rejected() {
        let mut node = golden_node();
        let other = Frame::Command(Command {
            node: NodeId(1),
            id: 1,
            kind: CommandKind::RequestHello,
        });
        assert_eq!(node.handle(0, &other), None);
        let too_fast = Frame::Command(Command {
            node: node.node(),
            id: 2,
            kind: CommandKind::SetPeriod {
                index: None,
                period_ms: 1,
            },
        });
        let reply = node.handle(0, &too_fast).expect("addressed");
        assert!(matches!(
            reply.ack,
            Frame::Ack(Ack {
                result: AckResult::InvalidArgument,
                ..
            })
        ));
    }

    #[test]
    fn identify_and_outputs_follow_commands() {
        let mut node = golden_node();
        let identify = Frame::Command(Command {
            node: node.node(),
            id: 3,
            kind: CommandKind::Identify { duration_ms: 5000 },
        });
        node.handle(1000, &identify);
        assert!(node.identifying(5999) && !node.identifying(6000));
        let relay = Frame::Command(Command {
            node: node.node(),
            id: 4,
            kind: CommandKind::SetOutput {
                channel: 2,
                on: true,
            },
        });
        node.handle(0, &relay);
        assert!(node.output(2) && !node.output(1));
        let hello = Frame::Command(Command {
            node: node.node(),
            id: 5,
            kind: CommandKind::RequestHello,
        });
        assert_eq!(
            node.handle(0, &hello).and_then(|r| r.hello),
            Some(golden::hello())
        );
    }
}
