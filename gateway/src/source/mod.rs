//! Southbound sources: where node frames come from. MQTT network nodes (the gateway's `run` module), serial
//! nodes ([`serial`]), Modbus TCP machines ([`modbus`], which poll registers and speak as a
//! virtual node) and OPC UA machines ([`opcua`], subscribed variables, one virtual node per
//! machine) all deliver [`Inbound`] frames to the one pipeline task.

pub mod modbus;
pub mod opcua;
pub mod serial;

use std::fmt;

use protocol::{DecodeError, Frame};

/// Which link a frame came in on; commands for a node go back the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceId {
    /// The lab's MQTT broker (network nodes).
    Mqtt,
    /// A serial port, by path (`/dev/ttyUSB0`).
    Serial(String),
    /// A polled Modbus TCP device, by its configured name.
    Modbus(String),
    /// An OPC UA server, by its configured name.
    OpcUa(String),
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceId::Mqtt => f.write_str("mqtt"),
            SourceId::Serial(port) => write!(f, "serial:{port}"),
            SourceId::Modbus(name) => write!(f, "modbus:{name}"),
            SourceId::OpcUa(name) => write!(f, "opcua:{name}"),
        }
    }
}

/// One frame (or one framing failure) from a source.
#[derive(Debug)]
pub struct Inbound {
    /// Where it came from.
    pub source: SourceId,
    /// The decoded frame, or why the bytes were not one.
    pub frame: Result<Frame, DecodeError>,
    /// When the source's own clock says the values were taken, Unix ms. Only sources that
    /// stamp their values (OPC UA source timestamps) set it; the others are stamped on receipt.
    pub taken_at_ms: Option<u64>,
}
