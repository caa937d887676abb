//! OPC UA machines: variables subscribed on a server, published as one virtual node per machine.
//!
//! A machine tool or PLC that speaks OPC UA is attached by naming its variables
//! ([`OpcUaServer`], an `[[opcua]]` table). [`run_opcua_server`] opens one client session per
//! server with one subscription per machine; the server pushes each change (with its source
//! timestamp) and the source hands it to the pipeline as a `Samples` frame of that machine's
//! virtual node, after a `Hello` naming the configured metrics and units, exactly as the Modbus
//! source does. Nothing downstream is OPC UA-specific.
//!
//! Across a reconnect the session is resumed when the server still has it (subscriptions and
//! their queued changes survive); otherwise a new session gets the subscriptions transferred
//! or recreated. A recreated monitored item reports its current value again: changes are taken
//! only when their source timestamp is newer than the last one taken for that variable, so
//! nothing is forwarded twice or out of order. What changed while no session existed on the
//! server (it restarted, or the subscription's lifetime ran out) is lost, as OPC UA defines:
//! the first value after the gap is the current one.

mod config;
mod link;
mod translate;

pub use config::{
    Mode, OpcUaConfigError, OpcUaMachine, OpcUaMetric, OpcUaServer, Policy, Secret, opcua_node_id,
};
pub use link::run_opcua_server;
pub use translate::{Outcome, Translator, unix_ms};
