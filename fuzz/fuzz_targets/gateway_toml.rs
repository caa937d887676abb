#![no_main]
//! Fuzz target `gateway_toml`: see `demolab_tests::fuzz::gateway_toml` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::gateway_toml(data));
