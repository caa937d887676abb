#![no_main]
//! Fuzz target `sparkplug_payload`: see `demolab_tests::fuzz::sparkplug_payload` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::sparkplug_payload(data));
