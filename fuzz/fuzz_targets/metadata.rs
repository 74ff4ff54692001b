#![no_main]
//! Fuzz target: see `checkvalve_common::fuzz::metadata`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| checkvalve_common::fuzz::metadata(data));
