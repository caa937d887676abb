//! Sparkplug sequence numbers: `seq` on every message of an edge node session, `bdSeq` per session.

/// The per-session message counter: NBIRTH carries 0, each later message the next value mod 256.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCounter {
    next: u8,
}

impl SeqCounter {
    /// Restarts at 0, as at every NBIRTH.
    pub fn reset(&mut self) {
        self.next = 0;
    }

    /// Takes the next value, wrapping 255 → 0.
    pub fn next_seq(&mut self) -> u64 {
        let value = self.next;
        self.next = self.next.wrapping_add(1);
        u64::from(value)
    }
}

/// How many messages were lost between `previous` and `received` (0 when `received` follows
/// directly); `None` when either is outside 0..=255.
pub fn seq_gap(previous: u64, received: u64) -> Option<u8> {
    let previous = u8::try_from(previous).ok()?;
    let received = u8::try_from(received).ok()?;
    Some(received.wrapping_sub(previous).wrapping_sub(1))
}

/// The birth/death sequence number: one value per MQTT session, carried by NBIRTH and by the
/// NDEATH registered as the session's Will, so the host can pair a death with its birth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BdSeq(u8);

impl BdSeq {
    /// Starts from a given value (e.g. one persisted across restarts).
    pub const fn new(value: u8) -> Self {
        BdSeq(value)
    }

    /// The current value as carried in the `bdSeq` metric (UInt64).
    pub const fn value(self) -> u64 {
        self.0 as u64
    }

    /// The value for the next session, wrapping 255 → 0.
    pub const fn next(self) -> Self {
        BdSeq(self.0.wrapping_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_wraps_after_255() {
        let mut counter = SeqCounter::default();
        let values: alloc::vec::Vec<u64> = (0..258).map(|_| counter.next_seq()).collect();
        assert_eq!(&values[254..], &[254, 255, 0, 1]);
        counter.reset();
        assert_eq!(counter.next_seq(), 0);
    }

    #[test]
    fn gaps_are_counted_across_the_wrap() {
        assert_eq!(seq_gap(4, 5), Some(0));
        assert_eq!(seq_gap(255, 0), Some(0));
        assert_eq!(seq_gap(254, 1), Some(2));
        assert_eq!(seq_gap(300, 1), None);
    }

    #[test]
    fn bd_seq_wraps() {
        assert_eq!(BdSeq::new(255).next(), BdSeq::new(0));
    }
}
