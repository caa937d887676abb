//! Metric names that gateway and hub agree on beyond a machine's own metrics: the contract of
//! the Sparkplug payloads between them (the gateway writes them, the hub reads them).

/// The node's sample sequence number, in every DDATA of a sample (UInt32).
pub const NODE_SEQ: &str = "node.seq";
/// The node's boot id, in the DBIRTH (UInt32): sequence numbers are ordered within one boot.
pub const NODE_BOOT: &str = "node.boot";
/// A command's outcome, reported after a DCMD: 0 ok, 1 invalid argument, 2 unsupported,
/// 3 failed, 4 no node answered in time.
pub const COMMAND_RESULT: &str = "command.result";
/// Energy derived by the gateway from power, Wh; a meter that restarts with the gateway.
pub const ENERGY_TOTAL_WH: &str = "energy.total_wh";
/// The machine's state as a [`crate::MachineState`] code.
pub const STATE_CODE: &str = "state.code";
