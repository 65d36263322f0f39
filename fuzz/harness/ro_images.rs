// Fuzz targets for the read-only image drivers (EROFS, ISO 9660). `include!`d after
// harness.rs (which provides `walk_all`, `Target` and the imports) by the cargo-fuzz targets
// and by fs-drivers/tests/fuzz_replay_ro.rs.

/// The names the replay test and the fuzz project agree on for these drivers.
#[allow(dead_code)]
pub const RO_TARGETS: &[(&str, Target)] = &[
    ("erofs_walk", fuzz_erofs_walk),
    ("iso9660_walk", fuzz_iso9660_walk),
];

/// An EROFS image: open, walk, read every file (compressed ones through the index walk and
/// LZ4), list and read xattrs.
pub fn fuzz_erofs_walk(data: &[u8]) {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(data.to_vec()));
    if let Ok(fs) = fs_drivers::erofs::ErofsFs::open(dev) {
        walk_all(&fs);
    }
}

/// An ISO 9660 image: open (Rock Ridge, Joliet or plain names), walk, read every file; and
/// the whole-image path (`disk::Image`), which also tries the hybrid-ISO rule.
pub fn fuzz_iso9660_walk(data: &[u8]) {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(data.to_vec()));
    let _ = fs_drivers::iso9660::boot_summary(dev.as_ref());
    if let Ok(fs) = fs_drivers::iso9660::IsoFs::open(dev) {
        walk_all(&fs);
    }
}
