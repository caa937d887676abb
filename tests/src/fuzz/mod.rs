//! The checks behind the fuzz targets in `fuzz/`: each takes arbitrary bytes, drives one decoder
//! or parser that faces untrusted input, and asserts what must hold for every input (no panic,
//! round trips, bounded buffers, JSON errors with a code).
//!
//! They live here, inside the workspace, so they are built, linted and kept in step with the
//! crates they drive by the normal `cargo test --workspace`; the `fuzz/` crate only wraps each in
//! a libFuzzer entry point, and `tests/tests/fuzz_regressions.rs` replays the kept inputs
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through the same functions.
//!
//! ```
//! demolab_tests::fuzz::frame(&[0x01, 0x01, 0x00]);
//! ```

mod config;
mod host;
mod mqtt;
mod protocol;
mod rest;

pub use config::{access_toml, gateway_toml, hub_toml, scenario_toml};
pub use host::sparkplug_host;
pub use mqtt::mqtt_packets;
pub use protocol::{cobs_stream, frame, sparkplug_payload, sparkplug_topic};
pub use rest::rest_api;

/// A fuzz check: takes one input, panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// Every target by name (the name is the `fuzz/fuzz_targets/<name>.rs` file and the directory
/// under `fuzz/seeds/` and `fuzz/regressions/`).
pub const TARGETS: &[(&str, Check)] = &[
    ("frame", frame),
    ("cobs_stream", cobs_stream),
    ("sparkplug_payload", sparkplug_payload),
    ("sparkplug_topic", sparkplug_topic),
    ("sparkplug_host", sparkplug_host),
    ("mqtt_packets", mqtt_packets),
    ("gateway_toml", gateway_toml),
    ("hub_toml", hub_toml),
    ("access_toml", access_toml),
    ("scenario_toml", scenario_toml),
    ("rest_api", rest_api),
];
