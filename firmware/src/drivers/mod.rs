//! Sensor drivers on `embedded-hal` 1.0: each takes its bus (or pin) by value and gives it back
//! with `release`, reports errors generic over the bus error, and keeps register maps and unit
//! conversions as pure functions so they are tested without any bus.

pub mod ads1115;
pub mod digital;
pub mod lis3dh;
pub mod sht3x;
