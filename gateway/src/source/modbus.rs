//! Modbus TCP machines: registers polled on a schedule, published as a virtual node.
//!
//! A PLC-style machine without a sensor node is attached by naming its registers
//! ([`ModbusDevice`]). [`run_modbus_device`] polls them and speaks to the pipeline exactly like a
//! node would — a `Hello` announcing one metric per register, then one `Samples` per successful
//! poll — so nothing downstream is Modbus-specific. The node id is derived from the device name
//! ([`virtual_node_id`]); map it to a machine like any other node, or rely on the `Hello`, which
//! names the configured machine.
//!
//! Each poll reads touching or overlapping registers of one table with a single request (gaps are
//! never bridged). A failed poll is counted as [`DropReason::ModbusTimeout`] or
//! [`DropReason::ModbusError`], and the link is re-established with a backoff.
//!
//! [`DropReason::ModbusTimeout`]: crate::stats::DropReason::ModbusTimeout
//! [`DropReason::ModbusError`]: crate::stats::DropReason::ModbusError

mod config;
mod decode;
mod plan;
mod poller;
#[cfg(test)]
mod tests;

pub use config::{
    ByteOrder, ModbusConfigError, ModbusDevice, RegisterMap, RegisterTable, RegisterType,
    WordOrder, virtual_node_id,
};
pub use decode::decode_value;
pub use poller::{ModbusLinkStatus, run_modbus_device, run_modbus_device_with_status};
