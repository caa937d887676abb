#![no_main]
//! Fuzz target `sparkplug_topic`: see `demolab_tests::fuzz::sparkplug_topic` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::sparkplug_topic(data));
