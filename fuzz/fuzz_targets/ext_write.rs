#![no_main]

include!("../harness/harness.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_ext_write(data));
