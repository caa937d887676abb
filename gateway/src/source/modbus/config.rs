//! What a lab writes to attach one Modbus TCP machine, and the checks run before polling it.

use std::collections::HashSet;

use protocol::frame::MAX_METRICS;
use protocol::{MachineId, MetricName, NodeId, Unit};
use serde::Deserialize;

/// One Modbus TCP device polled as a virtual node (a `[[modbus]]` table in the gateway's TOML).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// The device's name; also its [`SourceId::Modbus`](crate::source::SourceId::Modbus) and the
    /// seed of its virtual [`NodeId`] (see [`virtual_node_id`]).
    pub name: String,
    /// The machine (digital twin) the device's metrics belong to.
    pub machine: MachineId,
    /// `host:port` of the Modbus TCP server (an IP or a host name; `[v6]:port` for IPv6).
    pub address: String,
    /// Modbus unit identifier sent with every request; default 1.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Milliseconds between polls; also each metric's announced period. Default 1000.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Milliseconds to wait for a connection or for each read response. Default 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The registers to read, one metric each; their order is the metric index order.
    pub registers: Vec<RegisterMap>,
}

/// One metric read from one or two registers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    /// The metric's name, `feature.property`.
    pub metric: MetricName,
    /// The metric's unit symbol as [`Unit::symbol`] writes it (`W`, `degC`, `rpm`); default `""`
    /// (dimensionless).
    #[serde(default)]
    pub unit: String,
    /// Which register table to read.
    pub table: RegisterTable,
    /// The (first) register's 0-based protocol address.
    pub address: u16,
    /// How the register contents encode the value.
    pub data_type: RegisterType,
    /// The order of the two registers of a 32-bit value; default big (high word first).
    #[serde(default)]
    pub word_order: WordOrder,
    /// The order of the two bytes inside each register; default big (as Modbus specifies).
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Multiplier applied to the decoded value; default 1.0.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Added after scaling; default 0.0.
    #[serde(default)]
    pub offset: f64,
}

/// A Modbus register table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterTable {
    /// Holding registers, read with function 0x03.
    Holding,
    /// Input registers, read with function 0x04.
    Input,
}

/// How register contents encode a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterType {
    /// Unsigned 16-bit, one register.
    U16,
    /// Two's complement 16-bit, one register.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Two's complement 32-bit, two registers.
    I32,
    /// IEEE 754 single precision, two registers.
    F32,
}

impl RegisterType {
    /// How many 16-bit registers a value occupies.
    pub const fn words(self) -> u16 {
        match self {
            RegisterType::U16 | RegisterType::I16 => 1,
            RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
        }
    }
}

/// The order of the two registers of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word at the lower address.
    #[default]
    Big,
    /// Low word at the lower address ("word swapped").
    Little,
}

/// The order of the two bytes inside each register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    /// High byte first, as the Modbus specification says.
    #[default]
    Big,
    /// Bytes swapped within each register.
    Little,
}

fn default_unit_id() -> u8 {
    1
}

fn default_poll_interval_ms() -> u64 {
    1000
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_scale() -> f64 {
    1.0
}

/// A [`ModbusDevice`] that cannot be polled; the message names the device and the offending key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModbusConfigError {
    /// `name` is empty.
    #[error("modbus device with empty `name`")]
    EmptyName,
    /// `address` is not `host:port`.
    #[error("modbus device `{device}`: `address` {address:?} is not `host:port`")]
    BadAddress {
        /// The device.
        device: String,
        /// What was configured.
        address: String,
    },
    /// `poll_interval_ms` is 0.
    #[error("modbus device `{device}`: `poll_interval_ms` must be greater than 0")]
    ZeroPollInterval {
        /// The device.
        device: String,
    },
    /// `timeout_ms` is 0.
    #[error("modbus device `{device}`: `timeout_ms` must be greater than 0")]
    ZeroTimeout {
        /// The device.
        device: String,
    },
    /// `registers` is empty.
    #[error("modbus device `{device}`: `registers` is empty")]
    NoRegisters {
        /// The device.
        device: String,
    },
    /// More registers than one node may announce metrics.
    #[error("modbus device `{device}`: `registers` has {count} entries; a node has at most {max}")]
    TooManyRegisters {
        /// The device.
        device: String,
        /// How many were configured.
        count: usize,
        /// [`MAX_METRICS`].
        max: usize,
    },
    /// Two registers map to the same metric.
    #[error("modbus device `{device}`: `metric` {metric} is mapped twice")]
    DuplicateMetric {
        /// The device.
        device: String,
        /// The repeated metric.
        metric: MetricName,
    },
    /// A register's `unit` is not a known unit symbol.
    #[error("modbus device `{device}`: register `{metric}`: unknown `unit` symbol {symbol:?}")]
    UnknownUnit {
        /// The device.
        device: String,
        /// The register's metric.
        metric: MetricName,
        /// What was configured.
        symbol: String,
    },
    /// A 32-bit register starts at 65535, so its second word has no address.
    #[error(
        "modbus device `{device}`: register `{metric}`: `address` {address} plus {words} registers \
         runs past 65535"
    )]
    SpanOverflow {
        /// The device.
        device: String,
        /// The register's metric.
        metric: MetricName,
        /// Its first address.
        address: u16,
        /// Its width in registers.
        words: u16,
    },
    /// `scale` or `offset` is NaN or infinite.
    #[error("modbus device `{device}`: register `{metric}`: `{key}` must be finite")]
    NotFinite {
        /// The device.
        device: String,
        /// The register's metric.
        metric: MetricName,
        /// `scale` or `offset`.
        key: &'static str,
    },
}

impl ModbusDevice {
    /// A device with the defaults a `[[modbus]]` table gets for the keys it leaves out, for
    /// callers that build devices from their own configuration (the demo's region file).
    pub fn with_defaults(
        name: String,
        machine: MachineId,
        address: String,
        registers: Vec<RegisterMap>,
    ) -> Self {
        Self {
            name,
            machine,
            address,
            unit_id: default_unit_id(),
            poll_interval_ms: default_poll_interval_ms(),
            timeout_ms: default_timeout_ms(),
            registers,
        }
    }

    /// Checks everything the poller relies on; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ModbusConfigError> {
        let device = || self.name.clone();
        if self.name.is_empty() {
            return Err(ModbusConfigError::EmptyName);
        }
        if !is_host_port(&self.address) {
            return Err(ModbusConfigError::BadAddress {
                device: device(),
                address: self.address.clone(),
            });
        }
        if self.poll_interval_ms == 0 {
            return Err(ModbusConfigError::ZeroPollInterval { device: device() });
        }
        if self.timeout_ms == 0 {
            return Err(ModbusConfigError::ZeroTimeout { device: device() });
        }
        if self.registers.is_empty() {
            return Err(ModbusConfigError::NoRegisters { device: device() });
        }
        if self.registers.len() > MAX_METRICS {
            return Err(ModbusConfigError::TooManyRegisters {
                device: device(),
                count: self.registers.len(),
                max: MAX_METRICS,
            });
        }
        let mut seen = HashSet::new();
        for register in &self.registers {
            let metric = || register.metric.clone();
            if !seen.insert(&register.metric) {
                return Err(ModbusConfigError::DuplicateMetric {
                    device: device(),
                    metric: metric(),
                });
            }
            if Unit::from_symbol(&register.unit).is_none() {
                return Err(ModbusConfigError::UnknownUnit {
                    device: device(),
                    metric: metric(),
                    symbol: register.unit.clone(),
                });
            }
            let words = register.data_type.words();
            if register.address.checked_add(words - 1).is_none() {
                return Err(ModbusConfigError::SpanOverflow {
                    device: device(),
                    metric: metric(),
                    address: register.address,
                    words,
                });
            }
            for (key, value) in [("scale", register.scale), ("offset", register.offset)] {
                if !value.is_finite() {
                    return Err(ModbusConfigError::NotFinite {
                        device: device(),
                        metric: metric(),
                        key,
                    });
                }
            }
        }
        Ok(())
    }

    /// The virtual node id the device speaks as: [`virtual_node_id`] of its name.
    pub fn node_id(&self) -> NodeId {
        virtual_node_id(&self.name)
    }
}

impl RegisterMap {
    /// The metric's value from the register contents starting at its address:
    /// [`decode_value`](super::decode_value) × `scale` + `offset`.
    pub fn value(&self, words: &[u16]) -> f64 {
        super::decode_value(words, self.data_type, self.word_order, self.byte_order) * self.scale
            + self.offset
    }
}

/// The [`NodeId`] a Modbus device named `name` speaks as: FNV-1a 64 of the UTF-8 bytes of
/// `modbus:{name}`.
///
/// Stable across restarts and gateways, so a config's node → machine map and the hub's history
/// survive; the `modbus:` prefix keeps it apart from hashes of other virtual sources. A clash
/// with a real node's hardware id is a 2⁻⁶⁴ chance per pair.
pub fn virtual_node_id(name: &str) -> NodeId {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"modbus:"
        .iter()
        .chain(name.as_bytes())
        .fold(OFFSET_BASIS, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
        });
    NodeId(hash)
}

/// `host:port` with a non-empty host and a non-zero port; DNS is left to connect time, where a
/// failure is a poll failure rather than a config error (hosts may come and go).
fn is_host_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|port| port != 0)
}
