#![no_main]
//! Fuzz target `cobs_stream`: see `demolab_tests::fuzz::cobs_stream` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::cobs_stream(data));
