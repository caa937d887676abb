#![no_main]
//! Fuzz target `access_toml`: see `demolab_tests::fuzz::access_toml` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::access_toml(data));
