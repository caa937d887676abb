#![no_main]
//! Fuzz target `scenario_toml`: see `demolab_tests::fuzz::scenario_toml` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::scenario_toml(data));
