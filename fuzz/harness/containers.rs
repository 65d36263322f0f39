// The container fuzz targets (qcow2, vmdk), `include!`d by harness.rs: each runs one format's
// detector directly over the input (no other detector in the way) and reads the device it
// yields, at most 1 MiB of it, then a few far offsets a huge claimed size sends reads to.
// No path is given, so backing files, data files and extents named by the input cannot be
// opened.

#[allow(dead_code)]
fn read_peeled(dev: &DeviceRef) {
    let size = dev.size();
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < size.min(1 << 20) {
        let n = (size - at).min(buf.len() as u64) as usize;
        let _ = dev.read_at(at, &mut buf[..n]);
        at += n as u64;
    }
    for k in 1..4u64 {
        let pos = size / 4 * k;
        let n = (size - pos).min(4096) as usize;
        let _ = dev.read_at(pos, &mut buf[..n]);
    }
}

#[allow(dead_code)]
fn fuzz_container(data: &[u8], detect: fs_drivers::container::Detector) {
    let dev: DeviceRef = Arc::new(MemDevice::read_only(data.to_vec()));
    let ctx = fs_drivers::container::PeelContext::default();
    if let Ok(Some((inner, layer))) = detect(&dev, &ctx) {
        let _ = layer.to_string();
        read_peeled(&inner);
    }
}

pub fn fuzz_qcow2(data: &[u8]) {
    fuzz_container(data, fs_drivers::container::qcow2::detect);
}

pub fn fuzz_vmdk(data: &[u8]) {
    fuzz_container(data, fs_drivers::container::vmdk::detect);
}
