#![no_main]
//! Fuzz target `frame`: see `demolab_tests::fuzz::frame` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::frame(data));
