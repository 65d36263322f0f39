#![no_main]

include!("../harness/luks.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_luks_header(data));
