//! Shared by the virtual-disk container tests: a deterministic source disk, qemu-img/img2simg
//! runners, and builders that write differencing VHD/VHDX children and Android sparse images
//! from their specifications (qemu-img cannot create differencing VHD or VHDX files, and this
//! img2simg never writes don't-care chunks).
#![allow(dead_code)]

use fs_drivers::block::{BlockDevice, DeviceRef};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIP: {tool} missing");
    }
    found
}

pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("imgmount-vdisk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A disk of `size` bytes that exercises every mapping: distinct bytes per sector, a run of
/// zeros (unallocated blocks, don't-care/zero-fill chunks), a repeated 4-byte pattern (fill
/// chunks) and an all-0xff stretch.
pub fn source_disk(size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size];
    for (i, b) in d.iter_mut().enumerate() {
        let sector = i / 512;
        *b = match sector % 64 {
            0..=20 => (i.wrapping_mul(31) ^ (sector * 7)) as u8,
            21..=30 => 0,
            31..=40 => [0xde, 0xad, 0xbe, 0xef][i % 4],
            _ => 0xff,
        };
    }
    // A long zero stretch in the middle so dynamic formats leave whole blocks out.
    let (a, b) = (size / 4, size / 2);
    d[a..b].fill(0);
    d
}

pub fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut out = vec![0u8; dev.size() as usize];
    for (i, chunk) in out.chunks_mut(256 << 10).enumerate() {
        dev.read_at((i as u64) * (256 << 10), chunk).expect("read");
    }
    out
}

pub fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

/// qemu-img's virtual size of `img`.
pub fn qemu_size(img: &Path) -> u64 {
    let out = qemu_img(&["info", "--output=json", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

pub fn open_peeled(
    path: &Path,
) -> fs_drivers::Result<(DeviceRef, Vec<fs_drivers::container::Layer>)> {
    let file: DeviceRef = std::sync::Arc::new(fs_drivers::block::FileDevice::open(path, false)?);
    let ctx = fs_drivers::container::PeelContext {
        path: Some(path.to_path_buf()),
        ..Default::default()
    };
    fs_drivers::container::peel(file, &ctx)
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// Overlays sector-aligned writes on `base` (what a child with those writes must read as).
pub fn overlay(base: &[u8], writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (at, data) in writes {
        out[*at as usize..*at as usize + data.len()].copy_from_slice(data);
    }
    out
}

// ---- VHD -------------------------------------------------------------------------------

fn vhd_checksum(b: &[u8], skip: std::ops::Range<usize>) -> u32 {
    !b.iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(u32::from(x)))
}

pub fn vhd_fix_footer(f: &mut [u8]) {
    f[64..68].fill(0);
    let c = vhd_checksum(f, 64..68);
    f[64..68].copy_from_slice(&c.to_be_bytes());
}

pub fn vhd_fix_header(h: &mut [u8]) {
    h[36..40].fill(0);
    let c = vhd_checksum(h, 36..40);
    h[36..40].copy_from_slice(&c.to_be_bytes());
}

/// The unique id in a VHD's footer (its last 512 bytes).
pub fn vhd_unique_id(img: &[u8]) -> [u8; 16] {
    let f = &img[img.len() - 512..];
    f[0x44..0x54].try_into().unwrap()
}

/// A differencing VHD from the specification: `writes` (sector-aligned, within one block
/// each) land in this file with their sectors' bitmap bits set; everything else reads from
/// the parent named by a W2ru locator (`.\<parent>`) and a W2ku one (`C:\vms\<parent>`).
pub struct VhdChild<'a> {
    pub size: u64,
    pub block_size: u64,
    pub uid: [u8; 16],
    pub parent_uid: [u8; 16],
    pub parent: &'a str,
    /// What the W2ru (relative) locator says, when not `.\<parent>`.
    pub relative: Option<&'a str>,
    pub writes: &'a [(u64, Vec<u8>)],
}

impl VhdChild<'_> {
    pub fn build(&self) -> Vec<u8> {
        let bs = self.block_size;
        let entries = self.size.div_ceil(bs);
        let bat_at = 1536u64;
        let bat_len = (entries * 4).div_ceil(512) * 512;
        let rel = utf16le(
            &self
                .relative
                .map_or_else(|| format!(".\\{}", self.parent), str::to_string),
        );
        let abs = utf16le(&format!("C:\\vms\\{}", self.parent));
        let loc_at = bat_at + bat_len;
        let blocks_at = loc_at + 1024;
        let bitmap_len = (bs / 512).div_ceil(8).div_ceil(512) * 512;
        let mut touched: Vec<u64> = self.writes.iter().map(|(o, _)| o / bs).collect();
        touched.sort();
        touched.dedup();
        let mut img = vec![0u8; blocks_at as usize + touched.len() * (bitmap_len + bs) as usize];
        let mut bat = vec![0xffu8; bat_len as usize];
        for (n, &b) in touched.iter().enumerate() {
            let start = blocks_at + n as u64 * (bitmap_len + bs);
            bat[b as usize * 4..b as usize * 4 + 4]
                .copy_from_slice(&((start / 512) as u32).to_be_bytes());
        }
        for (at, data) in self.writes {
            let b = at / bs;
            let n = touched.iter().position(|&t| t == b).unwrap() as u64;
            let start = blocks_at + n * (bitmap_len + bs);
            let within = at % bs;
            assert!(within + data.len() as u64 <= bs && at % 512 == 0 && data.len() % 512 == 0);
            for s in within / 512..(within + data.len() as u64) / 512 {
                img[(start + s / 8) as usize] |= 0x80 >> (s % 8);
            }
            let d = (start + bitmap_len + within) as usize;
            img[d..d + data.len()].copy_from_slice(data);
        }
        img[bat_at as usize..(bat_at + bat_len) as usize].copy_from_slice(&bat);
        img[loc_at as usize..loc_at as usize + rel.len()].copy_from_slice(&rel);
        img[loc_at as usize + 512..loc_at as usize + 512 + abs.len()].copy_from_slice(&abs);
        // Dynamic header.
        let mut h = vec![0u8; 1024];
        h[..8].copy_from_slice(b"cxsparse");
        h[8..16].fill(0xff);
        h[16..24].copy_from_slice(&bat_at.to_be_bytes());
        h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        h[28..32].copy_from_slice(&(entries as u32).to_be_bytes());
        h[32..36].copy_from_slice(&(bs as u32).to_be_bytes());
        h[40..56].copy_from_slice(&self.parent_uid);
        for (i, u) in self.parent.encode_utf16().enumerate() {
            h[64 + i * 2..66 + i * 2].copy_from_slice(&u.to_be_bytes());
        }
        for (i, (code, at, len)) in [
            (b"W2ru", loc_at, rel.len()),
            (b"W2ku", loc_at + 512, abs.len()),
        ]
        .into_iter()
        .enumerate()
        {
            let e = &mut h[0x240 + i * 24..0x240 + (i + 1) * 24];
            e[..4].copy_from_slice(code);
            e[4..8].copy_from_slice(&512u32.to_be_bytes());
            e[8..12].copy_from_slice(&(len as u32).to_be_bytes());
            e[16..24].copy_from_slice(&at.to_be_bytes());
        }
        vhd_fix_header(&mut h);
        img[512..1536].copy_from_slice(&h);
        let mut f = vec![0u8; 512];
        f[..8].copy_from_slice(b"conectix");
        f[8..12].copy_from_slice(&2u32.to_be_bytes());
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        f[16..24].copy_from_slice(&512u64.to_be_bytes());
        f[0x1c..0x20].copy_from_slice(b"win ");
        f[0x24..0x28].copy_from_slice(b"Wi2k");
        f[0x28..0x30].copy_from_slice(&self.size.to_be_bytes());
        f[0x30..0x38].copy_from_slice(&self.size.to_be_bytes());
        f[0x38..0x3c].copy_from_slice(&[0x01, 0x00, 0x10, 0x3f]);
        f[0x3c..0x40].copy_from_slice(&4u32.to_be_bytes());
        f[0x44..0x54].copy_from_slice(&self.uid);
        vhd_fix_footer(&mut f);
        img[..512].copy_from_slice(&f);
        img.extend_from_slice(&f);
        img
    }
}

// ---- VHDX ------------------------------------------------------------------------------

const MIB: usize = 1 << 20;

pub fn guid_bytes(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[..4].copy_from_slice(&d1.to_le_bytes());
    g[4..6].copy_from_slice(&d2.to_le_bytes());
    g[6..8].copy_from_slice(&d3.to_le_bytes());
    g[8..].copy_from_slice(&d4);
    g
}

pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes(g[..4].try_into().unwrap()),
        u16::from_le_bytes(g[4..6].try_into().unwrap()),
        u16::from_le_bytes(g[6..8].try_into().unwrap()),
        g[8..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        g[10..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

pub fn crc32c_with_hole(b: &[u8], at: usize) -> u32 {
    let mut z = b.to_vec();
    z[at..at + 4].fill(0);
    crc32c::crc32c(&z)
}

/// Recomputes the CRC-32C of a VHDX header (4 KiB) or region table (64 KiB).
pub fn vhdx_fix_crc(b: &mut [u8]) {
    let c = crc32c_with_hole(b, 4);
    b[4..8].copy_from_slice(&c.to_le_bytes());
}

/// The data write GUID of the current header of a VHDX file.
pub fn vhdx_data_write_guid(img: &[u8]) -> [u8; 16] {
    let seq = |at: usize| u64::from_le_bytes(img[at + 8..at + 16].try_into().unwrap());
    let at = if seq(128 << 10) > seq(64 << 10) {
        128 << 10
    } else {
        64 << 10
    };
    img[at + 32..at + 48].try_into().unwrap()
}

pub const VHDX_BAT: [u8; 16] = [
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
];
pub const VHDX_METADATA: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];

/// One payload block of a VHDX child.
pub enum VhdxBlock {
    NotPresent,
    Zero,
    /// Every sector from this file.
    Full(Vec<u8>),
    /// Sectors `(first, data)` from this file, the rest from the parent.
    Partial(Vec<(u64, Vec<u8>)>),
}

/// A differencing VHDX from the specification, 1 MiB blocks and 512-byte sectors; the parent
/// is named by relative_path `.\<parent>` and an absolute Windows path.
pub struct VhdxChild<'a> {
    pub size: u64,
    pub data_write_guid: [u8; 16],
    pub parent_linkage: [u8; 16],
    pub parent: &'a str,
    pub blocks: Vec<VhdxBlock>,
}

impl VhdxChild<'_> {
    pub fn build(&self) -> Vec<u8> {
        let bs = MIB;
        let payload = (self.size as usize).div_ceil(bs);
        assert!(payload <= 4096 && self.blocks.len() == payload);
        let chunk_ratio = 4096usize;
        let data_at = 5 * MIB;
        let present = self
            .blocks
            .iter()
            .filter(|b| matches!(b, VhdxBlock::Full(_) | VhdxBlock::Partial(_)))
            .count();
        let mut img = vec![0u8; data_at + present * bs];
        img[..8].copy_from_slice(b"vhdxfile");
        // Headers: sequence 1 and 2, so the second is current.
        for (n, at) in [(1u64, 64 << 10), (2u64, 128 << 10)] {
            let h = &mut img[at..at + 4096];
            h[..4].copy_from_slice(b"head");
            h[8..16].copy_from_slice(&n.to_le_bytes());
            h[16..32].copy_from_slice(&[0x11; 16]);
            h[32..48].copy_from_slice(&self.data_write_guid);
            h[66..68].copy_from_slice(&1u16.to_le_bytes());
            h[68..72].copy_from_slice(&(MIB as u32).to_le_bytes());
            h[72..80].copy_from_slice(&(MIB as u64).to_le_bytes());
            vhdx_fix_crc(h);
        }
        for at in [192 << 10, 256 << 10] {
            let r = &mut img[at..at + (64 << 10)];
            r[..4].copy_from_slice(b"regi");
            r[8..12].copy_from_slice(&2u32.to_le_bytes());
            for (i, (g, off)) in [(VHDX_BAT, 3 * MIB), (VHDX_METADATA, 2 * MIB)]
                .iter()
                .enumerate()
            {
                let e = &mut r[16 + i * 32..48 + i * 32];
                e[..16].copy_from_slice(g);
                e[16..24].copy_from_slice(&(*off as u64).to_le_bytes());
                e[24..28].copy_from_slice(&(MIB as u32).to_le_bytes());
                e[28..32].copy_from_slice(&1u32.to_le_bytes());
            }
            vhdx_fix_crc(r);
        }
        // Metadata region at 2 MiB: table, then items from 64 KiB.
        let locator = self.locator();
        let items: Vec<([u8; 16], Vec<u8>, u32)> = vec![
            (
                guid_bytes(
                    0xcaa16737,
                    0xfa36,
                    0x4d43,
                    [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b],
                ),
                [(bs as u32).to_le_bytes(), 2u32.to_le_bytes()].concat(),
                4,
            ),
            (
                guid_bytes(
                    0x2fa54224,
                    0xcd1b,
                    0x4876,
                    [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8],
                ),
                self.size.to_le_bytes().to_vec(),
                6,
            ),
            (
                guid_bytes(
                    0xbeca12ab,
                    0xb2e6,
                    0x4523,
                    [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46],
                ),
                vec![0x22; 16],
                6,
            ),
            (
                guid_bytes(
                    0x8141bf1d,
                    0xa96f,
                    0x4709,
                    [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f],
                ),
                512u32.to_le_bytes().to_vec(),
                6,
            ),
            (
                guid_bytes(
                    0xcda348c7,
                    0x445d,
                    0x4471,
                    [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56],
                ),
                4096u32.to_le_bytes().to_vec(),
                6,
            ),
            (
                guid_bytes(
                    0xa8d35f2d,
                    0xb30b,
                    0x454d,
                    [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c],
                ),
                locator,
                4,
            ),
        ];
        let md = 2 * MIB;
        img[md..md + 8].copy_from_slice(b"metadata");
        img[md + 10..md + 12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        let mut item_at = 64 << 10;
        for (i, (g, data, flags)) in items.iter().enumerate() {
            let e = md + 32 + i * 32;
            img[e..e + 16].copy_from_slice(g);
            img[e + 16..e + 20].copy_from_slice(&(item_at as u32).to_le_bytes());
            img[e + 20..e + 24].copy_from_slice(&(data.len() as u32).to_le_bytes());
            img[e + 24..e + 28].copy_from_slice(&flags.to_le_bytes());
            img[md + item_at..md + item_at + data.len()].copy_from_slice(data);
            item_at += data.len().div_ceil(8) * 8;
        }
        // BAT at 3 MiB; the chunk's sector bitmap at 4 MiB; payload from 5 MiB.
        let bat = 3 * MIB;
        let sbm = 4 * MIB;
        let entry = |img: &mut Vec<u8>, idx: usize, v: u64| {
            img[bat + idx * 8..bat + idx * 8 + 8].copy_from_slice(&v.to_le_bytes())
        };
        entry(&mut img, chunk_ratio, sbm as u64 | 6);
        let mut next = data_at;
        for (i, b) in self.blocks.iter().enumerate() {
            match b {
                VhdxBlock::NotPresent => {}
                VhdxBlock::Zero => entry(&mut img, i, 2),
                VhdxBlock::Full(data) => {
                    assert_eq!(data.len(), bs);
                    img[next..next + bs].copy_from_slice(data);
                    entry(&mut img, i, next as u64 | 6);
                    next += bs;
                }
                VhdxBlock::Partial(parts) => {
                    for (first, data) in parts {
                        let at = next + *first as usize * 512;
                        img[at..at + data.len()].copy_from_slice(data);
                        for s in *first as usize..*first as usize + data.len() / 512 {
                            let bit = i * (bs / 512) + s;
                            img[sbm + bit / 8] |= 1 << (bit % 8);
                        }
                    }
                    entry(&mut img, i, next as u64 | 7);
                    next += bs;
                }
            }
        }
        img
    }

    fn locator(&self) -> Vec<u8> {
        let pairs = [
            (
                "parent_linkage".to_string(),
                format!("{{{}}}", guid_string(&self.parent_linkage)),
            ),
            ("relative_path".to_string(), format!(".\\{}", self.parent)),
            (
                "absolute_win32_path".to_string(),
                format!("\\\\?\\C:\\vms\\{}", self.parent),
            ),
        ];
        let mut out = guid_bytes(
            0xb04aefb7,
            0xd19e,
            0x4a81,
            [0xb7, 0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13],
        )
        .to_vec();
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
        let mut strings = Vec::new();
        let base = 20 + pairs.len() * 12;
        for (k, v) in &pairs {
            let (k, v) = (utf16le(k), utf16le(v));
            let ko = base + strings.len();
            strings.extend_from_slice(&k);
            let vo = base + strings.len();
            strings.extend_from_slice(&v);
            out.extend_from_slice(&(ko as u32).to_le_bytes());
            out.extend_from_slice(&(vo as u32).to_le_bytes());
            out.extend_from_slice(&(k.len() as u16).to_le_bytes());
            out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(&strings);
        out
    }
}

// ---- Android sparse --------------------------------------------------------------------

pub enum SparseChunk {
    Raw(Vec<u8>),
    Fill([u8; 4], u32),
    DontCare(u32),
    /// A CRC32 chunk over everything written so far.
    Crc,
}

/// An Android sparse image with 4 KiB blocks; returns it and the bytes it expands to.
pub fn sparse_image(chunks: &[SparseChunk]) -> (Vec<u8>, Vec<u8>) {
    const BS: usize = 4096;
    let mut body = Vec::new();
    let mut expanded = Vec::new();
    for c in chunks {
        let (kind, blocks, data): (u16, usize, Vec<u8>) = match c {
            SparseChunk::Raw(d) => {
                assert_eq!(d.len() % BS, 0);
                expanded.extend_from_slice(d);
                (0xcac1, d.len() / BS, d.clone())
            }
            SparseChunk::Fill(p, n) => {
                for _ in 0..*n as usize * BS / 4 {
                    expanded.extend_from_slice(p);
                }
                (0xcac2, *n as usize, p.to_vec())
            }
            SparseChunk::DontCare(n) => {
                expanded.resize(expanded.len() + *n as usize * BS, 0);
                (0xcac3, *n as usize, Vec::new())
            }
            SparseChunk::Crc => (0xcac4, 0, crc32fast::hash(&expanded).to_le_bytes().to_vec()),
        };
        body.extend_from_slice(&kind.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(blocks as u32).to_le_bytes());
        body.extend_from_slice(&((12 + data.len()) as u32).to_le_bytes());
        body.extend_from_slice(&data);
    }
    let mut img = Vec::new();
    img.extend_from_slice(&0xed26ff3au32.to_le_bytes());
    img.extend_from_slice(&1u16.to_le_bytes());
    img.extend_from_slice(&0u16.to_le_bytes());
    img.extend_from_slice(&28u16.to_le_bytes());
    img.extend_from_slice(&12u16.to_le_bytes());
    img.extend_from_slice(&(BS as u32).to_le_bytes());
    img.extend_from_slice(&((expanded.len() / BS) as u32).to_le_bytes());
    img.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    img.extend_from_slice(&0u32.to_le_bytes());
    img.extend_from_slice(&body);
    (img, expanded)
}

// ---- VHDX log --------------------------------------------------------------------------

pub enum LogOp {
    Zero(u64, u64),
    Data(u64, Vec<u8>),
}

/// One log entry (MS-VHDX 2.3.1): header and descriptors, then a data sector per data
/// descriptor, checksummed.
pub fn vhdx_log_entry(
    guid: [u8; 16],
    seq: u64,
    tail: u32,
    file_size: u64,
    ops: &[LogOp],
) -> Vec<u8> {
    let n = ops.len();
    let desc_sectors = (64 + 32 * n).div_ceil(4096);
    let data: Vec<&Vec<u8>> = ops
        .iter()
        .filter_map(|o| match o {
            LogOp::Data(_, d) => Some(d),
            LogOp::Zero(..) => None,
        })
        .collect();
    let mut e = vec![0u8; (desc_sectors + data.len()) * 4096];
    let len = e.len();
    e[..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    e[12..16].copy_from_slice(&tail.to_le_bytes());
    e[16..24].copy_from_slice(&seq.to_le_bytes());
    e[24..28].copy_from_slice(&(n as u32).to_le_bytes());
    e[32..48].copy_from_slice(&guid);
    e[48..56].copy_from_slice(&file_size.to_le_bytes());
    e[56..64].copy_from_slice(&file_size.to_le_bytes());
    let mut k = 0;
    for (i, op) in ops.iter().enumerate() {
        let d = 64 + 32 * i;
        match op {
            LogOp::Zero(at, zlen) => {
                e[d..d + 4].copy_from_slice(b"zero");
                e[d + 8..d + 16].copy_from_slice(&zlen.to_le_bytes());
                e[d + 16..d + 24].copy_from_slice(&at.to_le_bytes());
            }
            LogOp::Data(at, bytes) => {
                assert_eq!(bytes.len(), 4096);
                e[d..d + 4].copy_from_slice(b"desc");
                e[d + 4..d + 8].copy_from_slice(&bytes[4092..]);
                e[d + 8..d + 16].copy_from_slice(&bytes[..8]);
                e[d + 16..d + 24].copy_from_slice(&at.to_le_bytes());
                let s = (desc_sectors + k) * 4096;
                e[s..s + 4].copy_from_slice(b"data");
                e[s + 4..s + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
                e[s + 8..s + 4092].copy_from_slice(&bytes[8..4092]);
                e[s + 4092..s + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
                k += 1;
            }
        }
        e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
    }
    let c = crc32c_with_hole(&e, 4);
    e[4..8].copy_from_slice(&c.to_le_bytes());
    e
}

/// Writes two log entries into a qemu-made VHDX (1 MiB blocks, data in blocks 0, 2 and 3) and
/// sets the header's log GUID: the BAT sector with block 0 turned into a zero block and 8 KiB
/// of block 2 zeroed (entry 1), a 4 KiB sector of block 3 rewritten (entry 2). Returns the
/// log's offset and the two entries' lengths.
pub fn make_log_dirty(img: &mut [u8]) -> (usize, usize, usize) {
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64;
    let le64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let h = 64 << 10;
    let (log_len, log_at) = (le32(img, h + 68), le64(img, h + 72) as usize);
    // The BAT from the region table; every block of the source holds data but block 1.
    let r = 192 << 10;
    let bat = (0..le32(img, r + 8) as usize)
        .map(|i| r + 16 + i * 32)
        .find(|&e| img[e..e + 16] == VHDX_BAT)
        .map(|e| le64(img, e + 16))
        .unwrap();
    let entry = |img: &[u8], i: u64| le64(img, (bat + i * 8) as usize);
    assert_eq!(entry(img, 0) & 7, 6, "block 0 fully present");
    let block2 = entry(img, 2) & !0xfffff;
    let block3 = entry(img, 3) & !0xfffff;
    assert!(block2 > 0 && block3 > 0);
    let mut bat_sector = img[bat as usize..bat as usize + 4096].to_vec();
    bat_sector[..8].copy_from_slice(&2u64.to_le_bytes()); // block 0 → PAYLOAD_BLOCK_ZERO
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let guid = [0x4c; 16];
    let size = img.len() as u64 & !0xfffff;
    let e1 = vhdx_log_entry(
        guid,
        5,
        0,
        size,
        &[
            LogOp::Data(bat, bat_sector),
            LogOp::Zero(block2 + 8192, 8192),
        ],
    );
    let e2 = vhdx_log_entry(guid, 6, 0, size, &[LogOp::Data(block3 + 4096, pattern)]);
    img[log_at..log_at + e1.len()].copy_from_slice(&e1);
    img[log_at + e1.len()..log_at + e1.len() + e2.len()].copy_from_slice(&e2);
    assert!(e1.len() + e2.len() <= log_len as usize);
    for at in [64 << 10, 128 << 10] {
        img[at + 48..at + 64].copy_from_slice(&guid);
        vhdx_fix_crc(&mut img[at..at + 4096]);
    }
    (log_at, e1.len(), e2.len())
}
