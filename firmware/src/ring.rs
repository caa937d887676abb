//! A fixed-capacity ring of encoded frames: what a node keeps while its link is down.
//!
//! Frames are stored encoded (each at most [`SLOT`] bytes) so the memory is known at compile
//! time. When full, the oldest frame is dropped; dropped *samples* are counted (each slot knows
//! whether it holds one) and the node reports that count in a `LinkRegained` event, so the loss
//! is visible end to end, exactly, never silent.

use heapless::{Deque, Vec};

/// Bytes per slot: a `Samples` frame with 16 readings, COBS-framed, fits.
pub const SLOT: usize = 160;

/// A ring of `N` encoded frames.
#[derive(Debug)]
pub struct FrameRing<const N: usize> {
    frames: Deque<(bool, Vec<u8, SLOT>), N>,
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

    /// Queues a frame (`is_sample` marks the frames whose loss is counted), dropping the
    /// oldest when full.
    pub fn push(&mut self, bytes: &[u8], is_sample: bool) -> Result<(), FrameTooLarge> {
        let slot = Vec::from_slice(bytes).map_err(|_| FrameTooLarge(bytes.len()))?;
        if self.frames.is_full()
            && let Some((true, _)) = self.frames.pop_front()
        {
            self.dropped = self.dropped.saturating_add(1);
        }
        // Cannot fail: a slot was freed above when full.
        let _ = self.frames.push_back((is_sample, slot));
        Ok(())
    }

    /// How many samples pushing `more` frames would drop from a full ring.
    pub fn samples_pushed_out_by(&self, more: usize) -> u32 {
        let out = (self.frames.len() + more).saturating_sub(N);
        self.frames
            .iter()
            .take(out)
            .filter(|(is_sample, _)| *is_sample)
            .count() as u32
    }

    /// The oldest frame, to send next.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|(_, f)| f.as_slice())
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

    /// Samples dropped since the last call, resetting the count.
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
        ring.push(&[9], false).expect("fits"); // an event: its loss is not a sample's
        for i in 0..6u8 {
            ring.push(&[i], true).expect("fits");
        }
        assert_eq!(
            ring.take_dropped(),
            2,
            "the event and samples 0 and 1 were dropped"
        );
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
        assert_eq!(
            ring.push(&[0; SLOT + 1], true),
            Err(FrameTooLarge(SLOT + 1))
        );
        assert!(ring.is_empty());
    }
}
