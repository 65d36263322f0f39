#![no_main]

include!("../harness/vdisk.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_vdisk_vdi(data));
