//! The serial link of a node: COBS-framed node frames over any `embedded_io` byte stream (a UART,
//! a USB CDC port, or a pseudo-terminal on the host).
//!
//! Writing frames a frame with a leading and a trailing `0x00`: the leading one makes a receiver
//! that joined mid-frame (after a reset, a replug) throw away the partial frame at once instead
//! of turning it into one error more. Reading feeds whatever arrived into a [`FrameDecoder`] and
//! hands out complete frames (or their decode errors, for counting).

use embedded_io::{Read, ReadReady, Write};
use protocol::cobs::{FrameDecoder, MAX_WIRE_LEN, cobs_encode};
use protocol::{DecodeError, Frame};

/// A node frame stream over `T`.
#[derive(Debug)]
pub struct SerialLink<T> {
    io: T,
    decoder: FrameDecoder,
}

/// Why a frame could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkError<E> {
    /// The encoded frame does not fit a wire buffer.
    TooLarge,
    /// The stream failed.
    Io(E),
}

impl<T: Read + Write> SerialLink<T> {
    /// A link over `io`.
    pub fn new(io: T) -> Self {
        Self {
            io,
            decoder: FrameDecoder::new(),
        }
    }

    /// Gives the stream back.
    pub fn release(self) -> T {
        self.io
    }

    /// Writes one encoded frame (as `protocol::codec::encode` made it).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), LinkError<T::Error>> {
        let mut wire = [0u8; MAX_WIRE_LEN + 1];
        let len = cobs_encode(frame, &mut wire[1..MAX_WIRE_LEN]).ok_or(LinkError::TooLarge)?;
        wire[len + 1] = 0;
        self.io.write_all(&wire[..len + 2]).map_err(LinkError::Io)?;
        self.io.flush().map_err(LinkError::Io)
    }
}

impl<T: Read + Write + ReadReady> SerialLink<T> {
    /// Reads what is waiting (without blocking when nothing is) and calls `on_frame` for every
    /// completed frame or decode error.
    pub fn poll(
        &mut self,
        mut on_frame: impl FnMut(Result<Frame, DecodeError>),
    ) -> Result<(), T::Error> {
        let mut buf = [0u8; 64];
        while self.io.read_ready()? {
            let n = self.io.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.decoder.feed(&buf[..n], &mut on_frame);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use protocol::golden;

    use super::*;

    /// An in-memory stream: what is written is what can be read back.
    #[derive(Default)]
    struct Loopback {
        bytes: Vec<u8>,
        read_at: usize,
    }

    impl embedded_io::ErrorType for Loopback {
        type Error = core::convert::Infallible;
    }

    impl Write for Loopback {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    impl Read for Loopback {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = buf.len().min(self.bytes.len() - self.read_at);
            buf[..n].copy_from_slice(&self.bytes[self.read_at..self.read_at + n]);
            self.read_at += n;
            Ok(n)
        }
    }

    impl ReadReady for Loopback {
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            Ok(self.read_at < self.bytes.len())
        }
    }

    #[test]
    fn every_golden_frame_goes_through_the_link_and_back() {
        let mut link = SerialLink::new(Loopback::default());
        for (_, bytes) in golden::all() {
            link.send(bytes).expect("fits");
        }
        let mut frames = Vec::new();
        link.poll(|frame| frames.push(frame.expect("valid")))
            .expect("infallible");
        let expected: Vec<Frame> = golden::all().into_iter().map(|(frame, _)| frame).collect();
        assert_eq!(frames, expected);
    }

    #[test]
    fn a_receiver_joining_mid_frame_loses_only_that_frame() {
        let mut link = SerialLink::new(Loopback::default());
        link.send(golden::SAMPLES).expect("fits");
        link.send(golden::ACK).expect("fits");
        let mut io = link.release();
        io.read_at = 5; // joined in the middle of the first frame
        let mut link = SerialLink::new(io);
        let mut results = Vec::new();
        link.poll(|frame| results.push(frame)).expect("infallible");
        assert_eq!(results.len(), 2, "{results:?}");
        assert!(results[0].is_err());
        assert_eq!(results[1], Ok(golden::ack()));
    }
}
