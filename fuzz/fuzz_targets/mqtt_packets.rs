#![no_main]
//! Fuzz target `mqtt_packets`: see `demolab_tests::fuzz::mqtt_packets` for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| demolab_tests::fuzz::mqtt_packets(data));
