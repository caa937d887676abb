#![no_main]
//! Fuzz target `sparkplug_host`: see `demolab_tests::fuzz::sparkplug_host` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::sparkplug_host(data));
