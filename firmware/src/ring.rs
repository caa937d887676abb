//! A fixed-capacity ring of encoded frames: what a node keeps while its link is down.
//!
//! Frames are stored encoded (each at most [`SLOT`] bytes) so the memory is known at compile
//! time. When full, the oldest frame is dropped and counted — the node reports that count in a
//! `LinkRegained` event, so the loss is visible end to end, never silent.

use heapless::{Deque, Vec};

/// Bytes per slot: a `Samples` frame with 16 readings, COBS-framed, fits.
pub const SLOT: usize = 160;

/// A ring of `N` encoded frames.
#[derive(Debug)]
pub struct FrameRing<const N: usize> {
    frames: Deque<Vec<u8, SLOT>, N>,
    dropped: u32,
}

/// A frame larger than a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge(pub usize);

impl<const N: usize> Default for FrameRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameRing<N> {
    /// An empty ring.
    pub const fn new() -> Self {
        Self {
            frames: Deque::new(),
            dropped: 0,
        }
    }

    /// Queues a frame, dropping (and counting) the oldest when full.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameTooLarge> {
        let slot = Vec::from_slice(bytes).map_err(|_| FrameTooLarge(bytes.len()))?;
        if self.frames.is_full() {
            self.frames.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        // Cannot fail: a slot was freed above when full.
        let _ = self.frames.push_back(slot);
        Ok(())
    }

    /// The oldest frame, to send next.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|f| f.as_slice())
    }

    /// Removes the oldest frame once it was sent.
    pub fn pop(&mut self) {
        self.frames.pop_front();
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames dropped since the last call, resetting the count.
    pub fn take_dropped(&mut self) -> u32 {
        core::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order_and_overflow_drops_the_oldest_counted() {
        let mut ring = FrameRing::<4>::new();
        for i in 0..6u8 {
            ring.push(&[i]).expect("fits");
        }
        assert_eq!(ring.take_dropped(), 2);
        assert_eq!(ring.take_dropped(), 0);
        let mut out = heapless::Vec::<u8, 8>::new();
        while let Some(frame) = ring.front() {
            let _ = out.push(frame[0]);
            ring.pop();
        }
        assert_eq!(out.as_slice(), &[2, 3, 4, 5]);
    }

    #[test]
    fn an_oversize_frame_is_refused() {
        let mut ring = FrameRing::<2>::new();
        assert_eq!(ring.push(&[0; SLOT + 1]), Err(FrameTooLarge(SLOT + 1)));
        assert!(ring.is_empty());
    }
}
