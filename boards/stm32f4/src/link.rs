//! The serial link to the gateway: USART2, 115200 8N1, COBS-framed node frames.
//!
//! Receive is interrupt driven: the USART2 handler moves every received byte into a queue, so
//! no byte is lost while the main loop sits in a blocking I2C transfer or sensor wait (the
//! USART holds one byte; at 115200 baud the next one lands 87 µs later). The main loop takes
//! the bytes out and feeds its `FrameDecoder`. Transmit is blocking: a frame of a few hundred
//! bytes takes tens of milliseconds, which the main loop can afford.

use core::cell::RefCell;

use critical_section::Mutex;
use heapless::Deque;
use protocol::Frame;
use protocol::cobs::{MAX_WIRE_LEN, encode_framed};
use stm32f4xx_hal::nb;
use stm32f4xx_hal::pac::{self, USART2, interrupt};
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::serial::{Rx, Tx};

/// Received bytes buffered between two main-loop passes (a command frame is ~20 bytes; the
/// loop runs at least every few tens of milliseconds, i.e. every few hundred bytes at most).
const RX_QUEUE_LEN: usize = 512;

/// A byte lost here (queue full, or a framing/noise/overrun error reported by the USART) is
/// not counted: it corrupts the frame it belonged to, which then fails its CRC in the decoder,
/// and a command lost that way is never acknowledged, which the gateway sees.
struct Receiver {
    rx: Rx<USART2>,
    queue: Deque<u8, RX_QUEUE_LEN>,
}

static RECEIVER: Mutex<RefCell<Option<Receiver>>> = Mutex::new(RefCell::new(None));

/// Starts interrupt-driven reception on `rx`.
pub fn start_receiving(mut rx: Rx<USART2>) {
    rx.listen();
    critical_section::with(|cs| {
        RECEIVER.borrow_ref_mut(cs).replace(Receiver {
            rx,
            queue: Deque::new(),
        });
    });
    // SAFETY: unmasking an interrupt is `unsafe` in cortex-m because it can break critical
    // sections built on interrupt masking. This firmware's critical sections disable all
    // interrupts (cortex-m's `critical-section-single-core`), and the handler only touches
    // `RECEIVER`, which was installed just above.
    #[allow(unsafe_code)]
    unsafe {
        pac::NVIC::unmask(pac::Interrupt::USART2);
    }
}

/// Moves received bytes into `buf`; returns how many.
pub fn take_received(buf: &mut [u8]) -> usize {
    critical_section::with(|cs| {
        let mut receiver = RECEIVER.borrow_ref_mut(cs);
        let Some(receiver) = receiver.as_mut() else {
            return 0;
        };
        let mut n = 0;
        for slot in buf.iter_mut() {
            let Some(byte) = receiver.queue.pop_front() else {
                break;
            };
            *slot = byte;
            n += 1;
        }
        n
    })
}

#[interrupt]
fn USART2() {
    critical_section::with(|cs| {
        let mut receiver = RECEIVER.borrow_ref_mut(cs);
        let Some(receiver) = receiver.as_mut() else {
            return;
        };
        // Reading the data register clears RXNE (and, after an error, the error flags), so
        // this loop always ends and the interrupt does not fire again for the same byte.
        loop {
            match receiver.rx.read() {
                Ok(byte) => {
                    let _ = receiver.queue.push_back(byte);
                }
                Err(nb::Error::WouldBlock) => break,
                Err(nb::Error::Other(_)) => {}
            }
        }
    });
}

/// The transmit side: USART2 TX and the static buffer frames are encoded into.
pub struct Sender {
    tx: Tx<USART2>,
    buf: &'static mut [u8; MAX_WIRE_LEN],
    /// Frames that did not encode (cannot happen for the frames this node builds).
    pub encode_errors: u32,
}

impl Sender {
    /// A sender writing through `tx`, encoding into `buf`.
    pub fn new(tx: Tx<USART2>, buf: &'static mut [u8; MAX_WIRE_LEN]) -> Self {
        Self {
            tx,
            buf,
            encode_errors: 0,
        }
    }

    /// COBS-frames `frame` (with its 0x00 delimiter) and writes it, blocking until the last
    /// byte is in the USART.
    pub fn send(&mut self, frame: &Frame) {
        let Ok(bytes) = encode_framed(frame, &mut self.buf[..]) else {
            self.encode_errors = self.encode_errors.wrapping_add(1);
            return;
        };
        for &byte in bytes {
            // Writing only fails with WouldBlock (the data register is still full).
            let _ = nb::block!(self.tx.write(byte));
        }
    }

    /// Writes a lone delimiter: ends whatever partial frame the gateway's decoder holds from
    /// before this boot (back-to-back delimiters are legal padding).
    pub fn flush_line(&mut self) {
        let _ = nb::block!(self.tx.write(0));
    }
}
