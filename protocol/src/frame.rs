//! Node frames: what a sensor node and its gateway say to each other.
//!
//! The types are fixed-capacity (no heap) so the same definitions run on a microcontroller. The
//! byte layout lives in [`crate::codec`]; this module is only the vocabulary.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::ids::{IdError, MachineId, MetricName, NodeId};
use crate::unit::Unit;

/// Most metrics one node can announce (and so the highest metric index + 1).
pub const MAX_METRICS: usize = 16;
/// Most readings in one `Samples` frame.
pub const MAX_READINGS: usize = 16;

/// Every frame a node or gateway may send. New variants go at the end: the variant index is on the wire.
// Boxing `Hello` would need a heap the firmware does not have; a frame lives briefly on the stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Node → gateway, at boot and on request: who I am and what I measure.
    Hello(Hello),
    /// Node → gateway: one sampling instant.
    Samples(Samples),
    /// Node → gateway: something happened to the node.
    Event(Event),
    /// Gateway → node: do something.
    Command(Command),
    /// Node → gateway: the outcome of a command.
    Ack(Ack),
}

impl Frame {
    /// The node the frame is from or for.
    pub fn node(&self) -> NodeId {
        match self {
            Frame::Hello(f) => f.node,
            Frame::Samples(f) => f.node,
            Frame::Event(f) => f.node,
            Frame::Command(f) => f.node,
            Frame::Ack(f) => f.node,
        }
    }

    /// A short name for logs and drop counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Samples(_) => "samples",
            Frame::Event(_) => "event",
            Frame::Command(_) => "command",
            Frame::Ack(_) => "ack",
        }
    }

    /// Checks what the binary decoder cannot: id syntax and metric index bounds.
    pub fn validate(&self) -> Result<(), FrameError> {
        match self {
            Frame::Hello(hello) => hello.validate(),
            Frame::Samples(samples) => samples.validate(),
            Frame::Event(_) | Frame::Command(_) | Frame::Ack(_) => Ok(()),
        }
    }
}

/// A frame that decoded but breaks a rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An id or metric name in the frame is invalid.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// A metric index is outside `0..MAX_METRICS`.
    #[error("metric index {index} is out of range; at most {max} metrics per node")]
    MetricIndexOutOfRange {
        /// The offending index.
        index: u8,
        /// [`MAX_METRICS`].
        max: usize,
    },
    /// Two descriptors or two readings use the same index.
    #[error("metric index {index} appears twice")]
    DuplicateMetricIndex {
        /// The repeated index.
        index: u8,
    },
}

fn check_unique_indices(indices: impl Iterator<Item = u8>) -> Result<(), FrameError> {
    let mut seen = 0u32;
    for index in indices {
        if usize::from(index) >= MAX_METRICS {
            return Err(FrameError::MetricIndexOutOfRange {
                index,
                max: MAX_METRICS,
            });
        }
        let bit = 1u32 << index;
        if seen & bit != 0 {
            return Err(FrameError::DuplicateMetricIndex { index });
        }
        seen |= bit;
    }
    Ok(())
}

/// Firmware version, semantic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareVersion {
    /// Incompatible changes.
    pub major: u8,
    /// Compatible features.
    pub minor: u8,
    /// Fixes.
    pub patch: u8,
}

/// One metric a node measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricDescriptor {
    /// The index readings refer to; `0..MAX_METRICS`.
    pub index: u8,
    /// The metric's name, `feature.property`.
    pub name: MetricName,
    /// The metric's unit.
    pub unit: Unit,
    /// How often the node samples it, in milliseconds.
    pub period_ms: u32,
}

/// Node → gateway at boot: identity and metric descriptors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The node's hardware id.
    pub node: NodeId,
    /// The firmware it runs.
    pub firmware: FirmwareVersion,
    /// Differs on every boot (a flash counter or a random number): `Samples` sequence numbers
    /// restart with each boot, so ordering and de-duplication are per (node, boot).
    pub boot: u32,
    /// The machine the node is clipped to, if it was configured on the node itself.
    pub machine: Option<MachineId>,
    /// What it measures.
    pub metrics: Vec<MetricDescriptor, MAX_METRICS>,
}

impl Hello {
    fn validate(&self) -> Result<(), FrameError> {
        if let Some(machine) = &self.machine {
            machine.validate()?;
        }
        for descriptor in &self.metrics {
            descriptor.name.validate()?;
        }
        check_unique_indices(self.metrics.iter().map(|d| d.index))
    }

    /// The descriptor for a metric index.
    pub fn metric(&self, index: u8) -> Option<&MetricDescriptor> {
        self.metrics.iter().find(|d| d.index == index)
    }
}

/// One reading: a metric index and its value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Index into the node's descriptors.
    pub index: u8,
    /// The value in the descriptor's unit.
    pub value: f32,
}

/// Node → gateway: readings taken at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// The node's hardware id.
    pub node: NodeId,
    /// Monotonic per node boot, starting at 1; the gateway and hub de-duplicate by it.
    pub seq: u32,
    /// Node uptime when sampled, ms.
    pub uptime_ms: u64,
    /// The readings.
    pub readings: Vec<Reading, MAX_READINGS>,
}

impl Samples {
    fn validate(&self) -> Result<(), FrameError> {
        check_unique_indices(self.readings.iter().map(|r| r.index))
    }
}

/// Why a node restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetReason {
    /// Power was applied.
    PowerOn,
    /// The watchdog fired.
    Watchdog,
    /// Supply voltage dipped.
    Brownout,
    /// The firmware asked for it.
    Software,
    /// The MCU did not say.
    Unknown,
}

/// What happened to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A sensor stopped answering or answered nonsense; `code` is driver-specific.
    SensorFault {
        /// Metric index of the failing sensor.
        index: u8,
        /// Driver error code.
        code: u8,
    },
    /// A failed sensor answers again.
    SensorRecovered {
        /// Metric index.
        index: u8,
    },
    /// The node booted.
    Reset {
        /// Why.
        reason: ResetReason,
    },
    /// The node lost its link.
    LinkLost,
    /// The link is back; `dropped_samples` did not fit the node's buffer meanwhile.
    LinkRegained {
        /// Samples lost on the node.
        dropped_samples: u32,
    },
}

/// Node → gateway: an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The node's hardware id.
    pub node: NodeId,
    /// Node uptime, ms.
    pub uptime_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// What a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Change a metric's sample period (all metrics when `index` is `None`).
    SetPeriod {
        /// Metric index, or all.
        index: Option<u8>,
        /// New period, ms.
        period_ms: u32,
    },
    /// Blink the identify LED.
    Identify {
        /// For how long, ms.
        duration_ms: u32,
    },
    /// Switch a digital output (a relay for a demo actuator).
    SetOutput {
        /// Output channel.
        channel: u8,
        /// On or off.
        on: bool,
    },
    /// Send `Hello` again.
    RequestHello,
}

/// Gateway → node: a command, correlated with its `Ack` by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The addressed node.
    pub node: NodeId,
    /// Correlation id, echoed in the `Ack`.
    pub id: u16,
    /// What to do.
    pub kind: CommandKind,
}

/// The outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckResult {
    /// Done.
    Ok,
    /// An argument was out of range.
    InvalidArgument,
    /// This node cannot do that.
    Unsupported,
    /// It was tried and failed.
    Failed,
}

/// Node → gateway: the result of command `command_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The node's hardware id.
    pub node: NodeId,
    /// The command's correlation id.
    pub command_id: u16,
    /// The outcome.
    pub result: AckResult,
}
