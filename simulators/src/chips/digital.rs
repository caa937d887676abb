//! A simulated digital input pin: a "machine running" contact or a part-counter sensor.
//!
//! The simulation sets the level with [`SimPin::set_high`]; the firmware reads it through
//! `embedded_hal::digital::InputPin`. Clones share one pin, so a test or a machine model keeps a
//! clone while a driver owns another. [`SimPin::bounce`] scripts contact bounce: the next `n`
//! reads alternate, starting with the opposite of the level (opposite, level, opposite, ...),
//! after which the pin reads its level again. Reads never fail.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use embedded_hal::digital::{ErrorType, InputPin};

#[derive(Debug, Default)]
struct PinState {
    level: bool,
    /// Reads still to bounce.
    bounce_left: u32,
    /// Bouncing reads done so far in the current bounce.
    bounced: u32,
}

/// A simulated input pin; clones share the level.
#[derive(Debug, Clone, Default)]
pub struct SimPin {
    state: Arc<Mutex<PinState>>,
}

impl SimPin {
    /// A pin at `high`, not bouncing.
    pub fn new(high: bool) -> Self {
        let pin = Self::default();
        pin.set_high(high);
        pin
    }

    fn state(&self) -> MutexGuard<'_, PinState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the level (high when `high`). A bounce in progress continues around the new level.
    pub fn set_high(&self, high: bool) {
        self.state().level = high;
    }

    /// The level set by the simulation (bounce aside).
    pub fn level(&self) -> bool {
        self.state().level
    }

    /// Makes the next `reads` reads bounce: odd-numbered ones (the 1st, 3rd, ...) return the
    /// opposite of the level, even-numbered ones the level. Replaces a bounce in progress.
    pub fn bounce(&self, reads: u32) {
        let mut state = self.state();
        state.bounce_left = reads;
        state.bounced = 0;
    }

    /// One read of the pin, consuming a bouncing read if any are left.
    fn read(&self) -> bool {
        let mut state = self.state();
        if state.bounce_left == 0 {
            return state.level;
        }
        state.bounce_left -= 1;
        state.bounced += 1;
        // The 1st, 3rd, ... bouncing read is the opposite level.
        state.level ^ (state.bounced % 2 == 1)
    }
}

impl ErrorType for SimPin {
    type Error = Infallible;
}

impl InputPin for SimPin {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        Ok(self.read())
    }

    fn is_low(&mut self) -> Result<bool, Self::Error> {
        Ok(!self.read())
    }
}

#[cfg(test)]
mod tests {
    use firmware::drivers::digital::{DebouncedInput, Edge};

    use super::*;

    const STABLE_MS: u32 = 20;
    const POLL_MS: u64 = 5;

    /// Polls `input` every [`POLL_MS`] for `duration_ms` from `*now`, collecting the edges.
    fn run(input: &mut DebouncedInput<SimPin>, now: &mut u64, duration_ms: u64) -> Vec<Edge> {
        let end = *now + duration_ms;
        let mut edges = Vec::new();
        while *now < end {
            let Ok(edge) = input.poll(*now);
            edges.extend(edge);
            *now += POLL_MS;
        }
        edges
    }

    #[test]
    fn bounce_alternates_then_settles() {
        let mut pin = SimPin::new(true);
        pin.bounce(3);
        let reads: Vec<bool> = (0..5)
            .map(|_| pin.is_high().unwrap_or_else(|e| match e {}))
            .collect();
        assert_eq!(reads, [false, true, false, true, true]);
        pin.bounce(1);
        assert_eq!(pin.is_low(), Ok(true));
        assert_eq!(pin.is_low(), Ok(false));
    }

    #[test]
    fn three_bouncy_pulses_count_three() {
        let pin = SimPin::new(false);
        let mut input = DebouncedInput::new(pin.clone(), STABLE_MS);
        let mut now = 0;
        assert!(run(&mut input, &mut now, 50).is_empty());
        let mut edges = Vec::new();
        for _ in 0..3 {
            // Contact closes with 4 bouncing reads (20 ms at a 5 ms poll), stays closed 100 ms,
            // opens with 4 more.
            pin.set_high(true);
            pin.bounce(4);
            edges.extend(run(&mut input, &mut now, 100));
            assert!(input.is_high());
            pin.set_high(false);
            pin.bounce(4);
            edges.extend(run(&mut input, &mut now, 100));
            assert!(!input.is_high());
        }
        use Edge::{Falling, Rising};
        assert_eq!(edges, [Rising, Falling, Rising, Falling, Rising, Falling]);
        assert_eq!(input.rising_edges(), 3);
    }

    #[test]
    fn bounce_without_a_real_change_is_ignored() {
        let pin = SimPin::new(false);
        let mut input = DebouncedInput::new(pin.clone(), STABLE_MS);
        let mut now = 0;
        run(&mut input, &mut now, 50);
        // Vibration: spikes high on every other read for 40 ms, level stays low.
        pin.bounce(8);
        assert!(run(&mut input, &mut now, 100).is_empty());
        assert!(!input.is_high());
        assert_eq!(input.rising_edges(), 0);
    }
}
