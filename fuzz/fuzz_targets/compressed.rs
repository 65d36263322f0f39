#![no_main]

include!("../harness/compressed.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_compressed(data));
