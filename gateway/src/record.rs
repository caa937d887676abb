//! What the disk buffer stores: one sample of one machine, independent of any Sparkplug session.
//!
//! Seq numbers and aliases belong to an MQTT session, so the buffer keeps names and units instead
//! and the uplink turns a record into DDATA (with the session's aliases) only when it sends it.
//! Encoded with postcard; the disk buffer adds its own length and CRC around it.

use protocol::{MachineId, MetricName, Unit};
use serde::{Deserialize, Serialize};

/// Layout version of [`BufferedSample`], first byte of every record.
const RECORD_VERSION: u8 = 1;

/// One sample, as buffered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferedSample {
    /// The machine it belongs to.
    pub machine: MachineId,
    /// The boot of the node that took it (`None` for sources without one).
    pub boot: Option<u32>,
    /// The node's sequence number.
    pub node_seq: u32,
    /// When the gateway received it, ms since the epoch.
    pub received_at_ms: u64,
    /// Taken while the uplink or the primary host was away: replayed with `is_historical`.
    pub historical: bool,
    /// Values by metric, with units so a machine can be born again from the buffer alone
    /// (after a gateway restart, before its node has said `Hello`).
    pub values: Vec<(MetricName, Unit, f32)>,
}

/// Why a buffered record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Written by a newer gateway.
    #[error("buffered record version {0} is not supported (this gateway writes {RECORD_VERSION})")]
    Version(u8),
    /// Not a record.
    #[error("buffered record is malformed: {0}")]
    Malformed(#[from] postcard::Error),
    /// An id inside is invalid.
    #[error("buffered record holds an invalid id: {0}")]
    InvalidId(#[from] protocol::IdError),
    /// Empty.
    #[error("buffered record is empty")]
    Empty,
}

impl BufferedSample {
    /// Serialises the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        // Serialising owned, validated values into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// Reads a record back, validating its ids.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let record: BufferedSample = postcard::from_bytes(body)?;
        record.machine.validate()?;
        for (name, _, _) in &record.values {
            name.validate()?;
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BufferedSample {
        BufferedSample {
            machine: "mill-1".parse().expect("valid"),
            boot: Some(7),
            node_seq: 42,
            received_at_ms: 1_764_201_600_000,
            historical: true,
            values: vec![(
                "spindle.power_w".parse().expect("valid"),
                Unit::Watt,
                5321.5,
            )],
        }
    }

    #[test]
    fn records_round_trip() {
        let record = sample();
        assert_eq!(
            BufferedSample::decode(&record.encode()).expect("valid"),
            record
        );
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert!(matches!(
            BufferedSample::decode(&[]),
            Err(RecordError::Empty)
        ));
        assert!(matches!(
            BufferedSample::decode(&[9, 1, 2]),
            Err(RecordError::Version(9))
        ));
        assert!(matches!(
            BufferedSample::decode(&[1, 0xFF]),
            Err(RecordError::Malformed(_))
        ));
        let mut bytes = sample().encode();
        let at = bytes
            .windows(6)
            .position(|w| w == b"mill-1")
            .expect("name in record");
        bytes[at] = b'M';
        assert!(matches!(
            BufferedSample::decode(&bytes),
            Err(RecordError::InvalidId(_))
        ));
    }
}
