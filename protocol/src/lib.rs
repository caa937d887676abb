//! Demolab's wire contracts, shared by firmware, gateway, hub and simulators.
//!
//! Data path position: everywhere. A sensor node encodes [`Frame`]s with [`codec`] (and [`cobs`]
//! on serial links); the gateway decodes them, maps them to machines and speaks [`sparkplug`] to
//! the hub. Every id that appears in a topic, frame or URL is one of the validated types in [`ids`].
//!
//! `#![no_std]` without heap by default for firmware (`default-features = false`); the `alloc`
//! feature adds the Sparkplug B protobuf payloads, `std` adds `std::error::Error`.
//!
//! ```
//! use demolab_protocol::{codec, golden};
//! let frame = golden::samples();
//! let mut buf = [0u8; codec::MAX_FRAME_LEN];
//! let bytes = codec::encode(&frame, &mut buf).unwrap();
//! assert_eq!(bytes, golden::SAMPLES);
//! assert_eq!(codec::decode(bytes).unwrap(), frame);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

pub mod cobs;
pub mod codec;
pub mod frame;
pub mod golden;
pub mod ids;
pub mod metric_names;
pub mod sparkplug;
pub mod state;
pub mod unit;

pub use codec::{DecodeError, EncodeError};
pub use frame::{
    Ack, AckResult, Command, CommandKind, Event, EventKind, FirmwareVersion, Frame, FrameError,
    Hello, MetricDescriptor, Reading, ResetReason, Samples,
};
pub use ids::{GatewayId, HostId, IdError, IdKind, LabId, MachineId, MetricName, NodeId};
pub use state::MachineState;
pub use unit::Unit;

/// MQTT topic helpers for node frames: `demolab/v1/node/{node_hex}/up` and `.../down`.
pub mod node_topic {
    use crate::ids::NodeId;

    /// Prefix of every node topic.
    pub const PREFIX: &str = "demolab/v1/node/";
    /// Subscription filter for every node's uplink.
    pub const ALL_UP: &str = "demolab/v1/node/+/up";

    /// Which way a node topic carries frames.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Direction {
        /// Node → gateway.
        Up,
        /// Gateway → node.
        Down,
    }

    /// Parses `demolab/v1/node/{hex}/up|down`; `None` for any other topic.
    pub fn parse(topic: &str) -> Option<(NodeId, Direction)> {
        let rest = topic.strip_prefix(PREFIX)?;
        let (hex, direction) = rest.split_once('/')?;
        let direction = match direction {
            "up" => Direction::Up,
            "down" => Direction::Down,
            _ => return None,
        };
        Some((hex.parse().ok()?, direction))
    }

    /// Formats a node topic into a fixed buffer (no heap).
    pub fn format(node: NodeId, direction: Direction) -> heapless::String<40> {
        use core::fmt::Write;
        let mut out = heapless::String::new();
        let suffix = match direction {
            Direction::Up => "up",
            Direction::Down => "down",
        };
        // 16 (prefix) + 16 (hex) + 1 + 4 = 37 bytes: always fits.
        let _ = write!(out, "{PREFIX}{node}/{suffix}");
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn node_topics_round_trip() {
            let node = NodeId(0x0123_4567_89ab_cdef);
            let topic = format(node, Direction::Up);
            assert_eq!(topic.as_str(), "demolab/v1/node/0123456789abcdef/up");
            assert_eq!(parse(&topic), Some((node, Direction::Up)));
            assert_eq!(parse("demolab/v1/node/xyz/up"), None);
            assert_eq!(parse("demolab/v1/node/0123456789abcdef/sideways"), None);
        }
    }
}
