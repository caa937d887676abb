#![no_main]
//! Fuzz target `rest_api`: see `demolab_tests::fuzz::rest_api` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::rest_api(data));
