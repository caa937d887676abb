//! Physical machine models that generate plausible shop-floor telemetry.
//!
//! Models are advanced by an injected time step rather than the wall clock and
//! draw all randomness from a seeded [`SimRng`](crate::rng::SimRng), so a
//! scenario replays identically from its seed, in tests as in demos.

mod cnc;

pub use cnc::{CncMill, CncParams, CncReading};

pub use protocol::MachineState;
