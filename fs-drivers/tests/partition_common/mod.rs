//! Helpers shared by the partition and probe tests: temp images, the util-linux tools that
//! build and describe them, and a small seeded RNG.
#![allow(dead_code)]

use fs_drivers::block::FileDevice;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A sparse file in the temp dir, removed on drop.
pub struct TempImage {
    pub path: PathBuf,
}

impl TempImage {
    pub fn new(size: u64) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("imgmount-pt-{}-{n}.img", std::process::id()));
        let f = std::fs::File::create(&path).expect("create temp image");
        f.set_len(size).expect("size temp image");
        TempImage { path }
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read temp image")
    }

    /// The image opened read-only, as imgmount opens it.
    pub fn device(&self) -> FileDevice {
        FileDevice::open(&self.path, false).expect("open temp image")
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs a tool, feeding `stdin`, and returns stdout; panics with stderr on failure.
pub fn run(name: &str, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> String {
    use std::io::Write;
    let exe = tool(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut child = Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sfdisk(img: &Path, script: &str) {
    run(
        "sfdisk",
        &["-q", "--no-reread", "--no-tell-kernel", path_str(img)],
        script,
        &[],
    );
}

pub fn sfdisk_json(img: &Path) -> serde_json::Value {
    let out = run("sfdisk", &["--json", path_str(img)], "", &[]);
    serde_json::from_str(&out).expect("sfdisk --json output")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// SplitMix64: small, seeded, good enough to drive mutations reproducibly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Recomputes the entry-array and header CRCs of the GPT header at `lba`, so a mutation
/// inside it reaches the field checks instead of stopping at the CRC. Does nothing when
/// the (mutated) header's own fields make that impossible.
pub fn fix_gpt_crcs(img: &mut [u8], ss: usize, lba: usize) {
    let h = lba * ss;
    if h + ss > img.len() {
        return;
    }
    let hsize = le32(img, h + 12) as usize;
    let count = le32(img, h + 80) as usize;
    let esize = le32(img, h + 84) as usize;
    let array = (le64(img, h + 72) as usize).saturating_mul(ss);
    let len = count.saturating_mul(esize);
    if len <= 1 << 20 && array.saturating_add(len) <= img.len() {
        let crc = crc32fast::hash(&img[array..array + len]);
        img[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
    }
    if (92..=ss).contains(&hsize) {
        img[h + 16..h + 20].fill(0);
        let crc = crc32fast::hash(&img[h..h + hsize]);
        img[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
    }
}

pub use crate::support::{require_tools as have, tool_path as tool};
