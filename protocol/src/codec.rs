//! The byte layout of a node frame, and the checks every received frame passes.
//!
//! ```text
//! +---------+------------------------+----------------+
//! | version | postcard(Frame)        | CRC-16 (LE)    |
//! | 1 byte  | variable               | over the rest  |
//! +---------+------------------------+----------------+
//! ```
//! The version sits outside the postcard body so that a frame from newer firmware is reported as
//! "unsupported version" rather than as garbage. The CRC is CRC-16/IBM-3740 (CCITT-FALSE).
//! Over MQTT these bytes are the payload; on serial links they are COBS-framed ([`crate::cobs`]).

use crc::{CRC_16_IBM_3740, Crc};

use crate::frame::{Frame, FrameError};

/// The frame layout version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Largest frame (version + body + CRC) accepted or produced, bytes.
pub const MAX_FRAME_LEN: usize = 1024;
/// Smallest possible frame: version, a one-byte body, CRC.
pub const MIN_FRAME_LEN: usize = 4;

const CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer (or [`MAX_FRAME_LEN`]) is too small for this frame.
    #[error("frame does not fit in {capacity} bytes")]
    TooLarge {
        /// The space that was available.
        capacity: usize,
    },
}

/// Why received bytes are not a valid frame. Each variant is one drop reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the smallest frame.
    #[error("frame is truncated: {len} bytes, at least {MIN_FRAME_LEN} needed")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// More bytes than [`MAX_FRAME_LEN`].
    #[error("frame is oversize: {len} bytes, at most {MAX_FRAME_LEN} allowed")]
    Oversize {
        /// Bytes received (on a stream: at least this many).
        len: usize,
    },
    /// The CRC does not match the bytes.
    #[error("CRC mismatch: frame carries {received:#06x}, bytes give {computed:#06x}")]
    BadCrc {
        /// CRC in the frame.
        received: u16,
        /// CRC of the bytes.
        computed: u16,
    },
    /// A layout version this build does not speak.
    #[error("frame version {found} is not supported; this build speaks version {FRAME_VERSION}")]
    UnsupportedVersion {
        /// The version byte.
        found: u8,
    },
    /// The body is not a postcard `Frame`.
    #[error("frame body is malformed: {0}")]
    Malformed(postcard::Error),
    /// The body decoded but left bytes over.
    #[error("frame body has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The frame decoded but breaks the contract (bad id, bad index).
    #[error("frame is invalid: {0}")]
    Invalid(#[from] FrameError),
    /// COBS framing on a byte stream is broken.
    #[error("COBS framing is broken at byte {at}")]
    BadCobs {
        /// Offset of the bad code byte.
        at: usize,
    },
}

impl DecodeError {
    /// A stable short reason, for drop counters and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::BadCrc { .. } => "bad_crc",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::Invalid(FrameError::InvalidId(_)) => "invalid_id",
            DecodeError::Invalid(_) => "invalid_frame",
            DecodeError::BadCobs { .. } => "bad_cobs",
        }
    }
}

/// Encodes `frame` into `buf`, returning the written prefix.
pub fn encode<'a>(frame: &Frame, buf: &'a mut [u8]) -> Result<&'a [u8], EncodeError> {
    let capacity = buf.len().min(MAX_FRAME_LEN);
    let too_large = EncodeError::TooLarge { capacity };
    if capacity < MIN_FRAME_LEN {
        return Err(too_large);
    }
    let (version, rest) = buf[..capacity].split_at_mut(1);
    version[0] = FRAME_VERSION;
    let body_room = rest.len() - 2;
    let body_len = postcard::to_slice(frame, &mut rest[..body_room])
        .map_err(|_| too_large)?
        .len();
    let total = 1 + body_len;
    let crc = CRC.checksum(&buf[..total]);
    buf[total..total + 2].copy_from_slice(&crc.to_le_bytes());
    Ok(&buf[..total + 2])
}

/// Encodes `frame` into a new vector.
#[cfg(feature = "alloc")]
pub fn encode_to_vec(frame: &Frame) -> Result<alloc::vec::Vec<u8>, EncodeError> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    encode(frame, &mut buf).map(<[u8]>::to_vec)
}

/// Decodes and validates one frame: length, CRC, version, body, ids and bounds, in that order.
pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    if bytes.len() < MIN_FRAME_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    if bytes.len() > MAX_FRAME_LEN {
        return Err(DecodeError::Oversize { len: bytes.len() });
    }
    let (checked, crc_bytes) = bytes.split_at(bytes.len() - 2);
    let received = u16::from_le_bytes([crc_bytes[0], crc_bytes[1]]);
    let computed = CRC.checksum(checked);
    if received != computed {
        return Err(DecodeError::BadCrc { received, computed });
    }
    if checked[0] != FRAME_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: checked[0] });
    }
    let (frame, rest): (Frame, _) =
        postcard::take_from_bytes(&checked[1..]).map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    frame.validate()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden;

    #[test]
    fn every_golden_frame_round_trips() {
        for (frame, _) in golden::all() {
            let mut buf = [0u8; MAX_FRAME_LEN];
            let bytes = encode(&frame, &mut buf).expect("golden frames fit");
            assert_eq!(decode(bytes), Ok(frame));
        }
    }

    #[test]
    fn truncated_frames_are_reported_as_such_or_as_bad_crc() {
        let bytes = golden::SAMPLES;
        assert_eq!(decode(&bytes[..3]), Err(DecodeError::Truncated { len: 3 }));
        // A cut frame still has 4+ bytes: its last two bytes no longer match the CRC.
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::BadCrc { .. })
        ));
    }

    #[test]
    fn a_flipped_bit_is_a_crc_error() {
        let mut bytes = golden::SAMPLES.to_vec();
        bytes[5] ^= 0x10;
        assert!(matches!(decode(&bytes), Err(DecodeError::BadCrc { .. })));
    }

    #[test]
    fn an_unknown_version_is_named() {
        let mut bytes = golden::HELLO.to_vec();
        bytes[0] = 7;
        reseal(&mut bytes);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion { found: 7 })
        );
    }

    #[test]
    fn an_oversize_frame_is_refused_before_any_work() {
        let bytes = [0u8; MAX_FRAME_LEN + 1];
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::Oversize {
                len: MAX_FRAME_LEN + 1
            })
        );
    }

    #[test]
    fn an_invalid_metric_name_in_a_hello_is_an_invalid_id() {
        let mut bytes = golden::HELLO.to_vec();
        let at = find(&bytes, b"spindle.power_w").expect("golden hello names spindle.power_w");
        bytes[at] = b'S';
        reseal(&mut bytes);
        let err = decode(&bytes).expect_err("upper-case name");
        assert_eq!(err.reason(), "invalid_id");
        assert!(err.to_string().contains("Spindle.power_w"), "{err}");
    }

    #[test]
    fn a_reading_index_out_of_range_is_invalid() {
        let mut frame = golden::samples();
        if let Frame::Samples(samples) = &mut frame {
            samples.readings[0].index = 40;
        }
        let mut buf = [0u8; MAX_FRAME_LEN];
        let bytes = encode(&frame, &mut buf).expect("fits");
        assert_eq!(
            decode(bytes),
            Err(DecodeError::Invalid(FrameError::MetricIndexOutOfRange {
                index: 40,
                max: 16
            }))
        );
    }

    #[test]
    fn an_unknown_frame_variant_is_malformed() {
        let mut bytes = alloc::vec![FRAME_VERSION, 9, 0, 0];
        reseal(&mut bytes);
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn encoding_into_a_small_buffer_fails_cleanly() {
        let mut buf = [0u8; 8];
        assert_eq!(
            encode(&golden::hello(), &mut buf),
            Err(EncodeError::TooLarge { capacity: 8 })
        );
    }

    /// Replaces the trailing CRC so a test can reach the checks behind it.
    fn reseal(bytes: &mut [u8]) {
        let len = bytes.len();
        let crc = CRC.checksum(&bytes[..len - 2]);
        bytes[len - 2..].copy_from_slice(&crc.to_le_bytes());
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1100)) {
            let _ = decode(&bytes);
        }
    }
}
