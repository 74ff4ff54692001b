#![no_main]
//! Fuzz target: see `checkvalve_common::fuzz::assembler`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| checkvalve_common::fuzz::assembler(data));
