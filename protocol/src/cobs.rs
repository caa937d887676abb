//! COBS framing for byte streams (serial links), and a streaming frame decoder that resynchronises.
//!
//! Each frame is COBS-encoded (so it holds no 0x00) and followed by one 0x00 delimiter. A receiver
//! that starts mid-stream, or sees line noise, loses at most the frame in progress: the next
//! delimiter starts a fresh frame.

use crate::codec::{self, DecodeError, EncodeError, MAX_FRAME_LEN};
use crate::frame::Frame;

/// Worst-case COBS size of `len` bytes, without the delimiter.
pub const fn max_encoded_len(len: usize) -> usize {
    len + len / 254 + 1
}

/// Largest COBS-framed node frame including its delimiter.
pub const MAX_WIRE_LEN: usize = max_encoded_len(MAX_FRAME_LEN) + 1;

/// COBS-encodes `src` into `dst` (no delimiter); returns the encoded length, or `None` if `dst`
/// is too small.
pub fn cobs_encode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let mut code_at = 0;
    let mut out = 1;
    let mut code: u8 = 1;
    for &byte in src {
        if byte == 0 {
            *dst.get_mut(code_at)? = code;
            code_at = out;
            out += 1;
            code = 1;
        } else {
            *dst.get_mut(out)? = byte;
            out += 1;
            code += 1;
            if code == 0xFF {
                *dst.get_mut(code_at)? = code;
                code_at = out;
                out += 1;
                code = 1;
            }
        }
    }
    *dst.get_mut(code_at)? = code;
    Some(out)
}

/// Decodes COBS in place (input without the delimiter); returns the decoded length.
pub fn cobs_decode_in_place(buf: &mut [u8]) -> Result<usize, DecodeError> {
    let mut read = 0;
    let mut write = 0;
    while read < buf.len() {
        let code = buf[read];
        if code == 0 {
            return Err(DecodeError::BadCobs { at: read });
        }
        let run_end = read + usize::from(code);
        if run_end > buf.len() {
            return Err(DecodeError::BadCobs { at: read });
        }
        for i in read + 1..run_end {
            if buf[i] == 0 {
                return Err(DecodeError::BadCobs { at: i });
            }
            buf[write] = buf[i];
            write += 1;
        }
        read = run_end;
        // A 0xFF run carries no implied zero, and neither does the final run.
        if code != 0xFF && read < buf.len() {
            buf[write] = 0;
            write += 1;
        }
    }
    Ok(write)
}

/// Encodes `frame` for a byte stream: COBS plus the trailing 0x00 delimiter.
pub fn encode_framed<'a>(frame: &Frame, buf: &'a mut [u8]) -> Result<&'a [u8], EncodeError> {
    let mut raw = [0u8; MAX_FRAME_LEN];
    let raw = codec::encode(frame, &mut raw)?;
    let too_large = EncodeError::TooLarge {
        capacity: buf.len(),
    };
    let len = cobs_encode(raw, buf).ok_or(too_large)?;
    *buf.get_mut(len).ok_or(too_large)? = 0;
    Ok(&buf[..=len])
}

/// Turns a byte stream into frames. Feed it bytes as they arrive; each 0x00 ends a frame.
///
/// Garbage between frames yields one error (bad COBS, CRC or body) at the next delimiter and the
/// decoder carries on; a run longer than any frame yields one [`DecodeError::Oversize`].
#[derive(Debug)]
pub struct FrameDecoder {
    buf: [u8; MAX_WIRE_LEN],
    len: usize,
    /// Bytes seen since the buffer overflowed, for the oversize report.
    overflow: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder waiting for the first delimiter-terminated frame.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_WIRE_LEN],
            len: 0,
            overflow: 0,
        }
    }

    /// Takes one byte; returns a result when the byte completes a frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, DecodeError>> {
        if byte != 0 {
            if self.len < self.buf.len() {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflow += 1;
            }
            return None;
        }
        let len = core::mem::take(&mut self.len);
        let overflow = core::mem::take(&mut self.overflow);
        if overflow > 0 {
            return Some(Err(DecodeError::Oversize {
                len: len + overflow,
            }));
        }
        if len == 0 {
            // Back-to-back delimiters are legal padding (senders use one to flush line noise).
            return None;
        }
        Some(
            cobs_decode_in_place(&mut self.buf[..len])
                .and_then(|decoded| codec::decode(&self.buf[..decoded])),
        )
    }

    /// Feeds a chunk of bytes, calling `on_frame` for every completed frame or error.
    pub fn feed(&mut self, bytes: &[u8], mut on_frame: impl FnMut(Result<Frame, DecodeError>)) {
        for &byte in bytes {
            if let Some(result) = self.push(byte) {
                on_frame(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;
    use crate::golden;

    fn framed(frame: &Frame) -> Vec<u8> {
        let mut buf = [0u8; MAX_WIRE_LEN];
        encode_framed(frame, &mut buf).expect("fits").to_vec()
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, DecodeError>> {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        decoder.feed(bytes, |r| out.push(r));
        out
    }

    #[test]
    fn cobs_round_trips_zero_runs_and_long_runs() {
        let cases: [&[u8]; 5] = [&[], &[0], &[0, 0, 1], &[1; 300], &[0xFF; 254]];
        for case in cases {
            let mut enc = [0u8; 400];
            let n = cobs_encode(case, &mut enc).expect("room");
            assert!(!enc[..n].contains(&0));
            let mut dec = enc[..n].to_vec();
            let m = cobs_decode_in_place(&mut dec).expect("valid");
            assert_eq!(&dec[..m], case);
        }
    }

    #[test]
    fn a_stream_of_every_golden_frame_decodes_in_order() {
        let mut stream = Vec::new();
        for (frame, _) in golden::all() {
            stream.extend(framed(&frame));
        }
        let frames: Vec<_> = decode_all(&stream)
            .into_iter()
            .map(|r| r.expect("valid"))
            .collect();
        let expected: Vec<_> = golden::all().into_iter().map(|(f, _)| f).collect();
        assert_eq!(frames, expected);
    }

    #[test]
    fn garbage_between_frames_costs_one_error_then_decoding_resumes() {
        let mut stream = framed(&golden::hello());
        stream.extend([0x13, 0x37, 0xAB, 0x00]);
        stream.extend(framed(&golden::samples()));
        let results = decode_all(&stream);
        assert_eq!(results.len(), 3);
        assert_eq!(results[0], Ok(golden::hello()));
        assert!(results[1].is_err(), "{:?}", results[1]);
        assert_eq!(results[2], Ok(golden::samples()));
    }

    #[test]
    fn starting_mid_frame_loses_only_that_frame() {
        let first = framed(&golden::samples());
        let mut stream = first[first.len() / 2..].to_vec();
        stream.extend(framed(&golden::event()));
        let results = decode_all(&stream);
        assert_eq!(results.len(), 2);
        assert!(results[0].is_err());
        assert_eq!(results[1], Ok(golden::event()));
    }

    #[test]
    fn an_endless_run_is_one_oversize_error_then_recovery() {
        let mut stream = alloc::vec![0x55; MAX_WIRE_LEN + 100];
        stream.push(0);
        stream.extend(framed(&golden::ack()));
        let results = decode_all(&stream);
        assert_eq!(
            results,
            [
                Err(DecodeError::Oversize {
                    len: MAX_WIRE_LEN + 100
                }),
                Ok(golden::ack())
            ]
        );
    }

    #[test]
    fn a_corrupted_byte_in_a_framed_frame_is_a_crc_or_cobs_error() {
        let mut stream = framed(&golden::samples());
        stream[6] ^= 0x01;
        let results = decode_all(&stream);
        assert!(matches!(
            results.as_slice(),
            [Err(DecodeError::BadCrc { .. } | DecodeError::BadCobs { .. })]
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_stream_never_panics_and_a_valid_frame_after_it_decodes(
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)
        ) {
            let mut stream = noise;
            stream.push(0);
            stream.extend(framed(&golden::command()));
            let results = decode_all(&stream);
            proptest::prop_assert_eq!(results.last(), Some(&Ok(golden::command())));
        }
    }
}
