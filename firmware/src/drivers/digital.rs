//! Debounced digital input, for "machine running" signals and part-counter pulses.
//!
//! Sans-time: the caller polls with its own clock (`now_ms`, monotonic). A new level is
//! accepted once every poll has seen it for at least `stable_ms`; any poll that sees the old
//! level again in between starts the wait over. Bounce is therefore filtered as well as the
//! poll rate can see it: poll several times per `stable_ms`.

use embedded_hal::digital::InputPin;

/// An accepted change of the debounced level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// Low to high.
    Rising,
    /// High to low.
    Falling,
}

/// A digital input with debouncing and a rising-edge counter.
#[derive(Debug)]
pub struct DebouncedInput<P> {
    pin: P,
    stable_ms: u32,
    /// The debounced level, `None` before the first poll.
    level: Option<bool>,
    /// Since when (ms) the pin has read the opposite of `level` without interruption.
    changing_since: Option<u64>,
    rising_edges: u32,
}

impl<P: InputPin> DebouncedInput<P> {
    /// A debounced input on `pin` that accepts a level once it has held `stable_ms`. It does
    /// not read the pin; the first [`poll`](Self::poll) takes the pin's level as the starting
    /// level, without an edge.
    pub fn new(pin: P, stable_ms: u32) -> Self {
        Self {
            pin,
            stable_ms,
            level: None,
            changing_since: None,
            rising_edges: 0,
        }
    }

    /// Gives the pin back.
    pub fn release(self) -> P {
        self.pin
    }

    /// How long a level must hold before it counts, ms.
    pub fn stable_ms(&self) -> u32 {
        self.stable_ms
    }

    /// Reads the pin at `now_ms` and returns the edge when a new level has now held
    /// `stable_ms`. A rising edge also increments [`rising_edges`](Self::rising_edges).
    pub fn poll(&mut self, now_ms: u64) -> Result<Option<Edge>, P::Error> {
        let raw = self.pin.is_high()?;
        let Some(level) = self.level else {
            self.level = Some(raw);
            return Ok(None);
        };
        if raw == level {
            self.changing_since = None;
            return Ok(None);
        }
        let since = *self.changing_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) < u64::from(self.stable_ms) {
            return Ok(None);
        }
        self.level = Some(raw);
        self.changing_since = None;
        if raw {
            self.rising_edges = self.rising_edges.wrapping_add(1);
            Ok(Some(Edge::Rising))
        } else {
            Ok(Some(Edge::Falling))
        }
    }

    /// The debounced level (low before the first poll).
    pub fn is_high(&self) -> bool {
        self.level.unwrap_or(false)
    }

    /// Accepted rising edges so far (the pulse count); wraps at `u32::MAX`.
    pub fn rising_edges(&self) -> u32 {
        self.rising_edges
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::io::ErrorKind;
    use std::vec::Vec;

    use embedded_hal_mock::eh1::MockError;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    use super::*;

    use State::{High as H, Low as L};

    /// Expectations for reading `levels` in order.
    fn reads(levels: &[State]) -> Vec<Transaction> {
        levels.iter().map(|&s| Transaction::get(s)).collect()
    }

    /// Polls once per entry of `times`, collecting the edges.
    fn poll_all(input: &mut DebouncedInput<Mock>, times: &[u64]) -> Vec<Option<Edge>> {
        times
            .iter()
            .map(|&t| input.poll(t).expect("pin reads"))
            .collect()
    }

    #[test]
    fn the_first_poll_sets_the_level_without_an_edge() {
        let mut pin = Mock::new(&reads(&[H, H]));
        let mut input = DebouncedInput::new(pin.clone(), 20);
        assert!(!input.is_high());
        assert_eq!(poll_all(&mut input, &[0, 5]), [None, None]);
        assert!(input.is_high());
        assert_eq!(input.rising_edges(), 0);
        pin.done();
    }

    #[test]
    fn bounce_shorter_than_stable_ms_is_ignored() {
        // Low, then spikes of 0..15 ms high, then low again for long.
        let levels = [L, H, L, H, H, L, L, L, L];
        let times = [0, 5, 10, 15, 25, 30, 40, 60, 100];
        let mut pin = Mock::new(&reads(&levels));
        let mut input = DebouncedInput::new(pin.clone(), 20);
        let edges = poll_all(&mut input, &times);
        assert!(edges.iter().all(Option::is_none), "{edges:?}");
        assert!(!input.is_high());
        assert_eq!(input.rising_edges(), 0);
        pin.done();
    }

    #[test]
    fn a_clean_pulse_counts_once() {
        let levels = [L, H, H, H, H, L, L, L, L];
        let times = [0, 10, 20, 30, 40, 50, 60, 70, 80];
        let mut pin = Mock::new(&reads(&levels));
        let mut input = DebouncedInput::new(pin.clone(), 20);
        let edges = poll_all(&mut input, &times);
        // High seen at 10, held 20 ms at 30; low seen at 50, held at 70.
        assert_eq!(
            edges,
            [
                None,
                None,
                None,
                Some(Edge::Rising),
                None,
                None,
                None,
                Some(Edge::Falling),
                None
            ]
        );
        assert_eq!(input.rising_edges(), 1);
        assert!(!input.is_high());
        pin.done();
    }

    #[test]
    fn a_bouncing_pulse_counts_once() {
        // Contact bounce on both edges of one real pulse.
        let levels = [L, H, L, H, H, H, H, L, H, L, L, L, L];
        let times = [0, 1, 2, 3, 10, 20, 30, 31, 32, 33, 40, 50, 60];
        let mut pin = Mock::new(&reads(&levels));
        let mut input = DebouncedInput::new(pin.clone(), 20);
        let edges = poll_all(&mut input, &times);
        let rising = edges.iter().filter(|e| **e == Some(Edge::Rising)).count();
        let falling = edges.iter().filter(|e| **e == Some(Edge::Falling)).count();
        assert_eq!((rising, falling), (1, 1), "{edges:?}");
        assert_eq!(input.rising_edges(), 1);
        pin.done();
    }

    #[test]
    fn zero_stable_ms_takes_every_change() {
        let mut pin = Mock::new(&reads(&[L, H, L, H]));
        let mut input = DebouncedInput::new(pin.clone(), 0);
        let edges = poll_all(&mut input, &[0, 0, 0, 0]);
        assert_eq!(
            edges,
            [
                None,
                Some(Edge::Rising),
                Some(Edge::Falling),
                Some(Edge::Rising)
            ]
        );
        assert_eq!(input.rising_edges(), 2);
        pin.done();
    }

    #[test]
    fn a_pin_error_surfaces() {
        let err = MockError::Io(ErrorKind::NotConnected);
        let expectations = [
            Transaction::get(L),
            Transaction::get(H).with_error(err.clone()),
        ];
        let mut pin = Mock::new(&expectations);
        let mut input = DebouncedInput::new(pin.clone(), 20);
        assert_eq!(input.poll(0), Ok(None));
        assert_eq!(input.poll(10), Err(err));
        assert!(!input.is_high());
        pin.done();
    }
}
