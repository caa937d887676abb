#![no_main]
//! Fuzz target `hub_toml`: see `demolab_tests::fuzz::hub_toml` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::hub_toml(data));
