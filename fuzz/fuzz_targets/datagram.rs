#![no_main]
//! Fuzz target: see `checkvalve_common::fuzz::datagram`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| checkvalve_common::fuzz::datagram(data));
