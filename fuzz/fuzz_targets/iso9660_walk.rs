#![no_main]

include!("../harness/harness.rs");
include!("../harness/ro_images.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_iso9660_walk(data));
