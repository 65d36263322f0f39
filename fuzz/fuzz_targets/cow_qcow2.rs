#![no_main]

include!("../harness/harness.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_cow_qcow2(data));
