//! The qcow2 header and its extensions (docs/interop/qcow2.txt in QEMU): every field that
//! sizes or places something is checked against the file size here, once, so the mapping code
//! can trust what it gets.

use crate::block::BlockDevice;
use crate::{Error, Result};

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Incompatible feature bits (header offset 72, version 3).
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

pub(crate) const EXT_END: u32 = 0;
pub(crate) const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Extensions whose payload the writer of a COW store keeps (qemu keeps unknown ones too).
const MAX_KEPT_EXTENSION: u64 = 4096;

/// QEMU refuses L1 tables above 32 MiB (QCOW_MAX_L1_SIZE); so do we, whatever the file size.
const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on a backing file name (1023 bytes) and on extension payloads we keep.
const MAX_NAME: usize = 1023;
/// The header and all its extensions live in the first cluster; 2 MiB is the largest cluster.
const MAX_HEADER_AREA: u64 = 2 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Deflate,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u64,
    pub l1_offset: u64,
    pub extended_l2: bool,
    pub compression: Compression,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    /// What a writer needs besides the mapping (the COW store in crate::cow::qcow2_store).
    pub incompatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    /// Extensions this reader does not interpret: (type, payload offset, payload), payloads
    /// of up to 4 KiB only.
    pub other_extensions: Vec<(u32, u64, Vec<u8>)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn corrupt(why: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("qcow2 header: {why}"))
}

/// True when `dev` starts with the qcow2 magic.
pub fn has_magic(dev: &dyn BlockDevice) -> bool {
    let mut m = [0u8; 4];
    dev.size() >= 72 && dev.read_at(0, &mut m).is_ok() && m == MAGIC
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Reads and checks the header of the qcow2 file `dev`.
    pub fn read(dev: &dyn BlockDevice) -> Result<Header> {
        let file_size = dev.size();
        let mut fixed = [0u8; 104];
        let n = file_size.min(104) as usize;
        dev.read_at(0, &mut fixed[..n])?;
        let version = be32(&fixed, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(&fixed, 20);
        // 512 B to 2 MiB, as QEMU allows.
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} outside 9..=21"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let crypt = be32(&fixed, 32);
        if crypt != 0 {
            let how = match crypt {
                1 => "AES",
                2 => "LUKS",
                _ => "an unknown method",
            };
            return Err(Error::Unsupported(format!(
                "qcow2 image encrypted with {how}: imgmount cannot decrypt it \
                 (qemu-img convert --object secret,... to a plain image first)"
            )));
        }
        let (incompat, header_len, compression_byte) = if version == 3 {
            if n < 104 {
                return Err(corrupt("version 3 header cut short"));
            }
            let header_len = u64::from(be32(&fixed, 100));
            if !(104..=cluster_size).contains(&header_len) {
                return Err(corrupt(format!("header length {header_len}")));
            }
            let mut c = [0u8; 1];
            if header_len > 104 {
                dev.read_at(104, &mut c)?;
            }
            (be64(&fixed, 72), header_len, c[0])
        } else {
            (0, 72, 0)
        };
        let unknown = incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "qcow2 incompatible features {unknown:#x}"
            )));
        }
        let compression = if incompat & INCOMPAT_COMPRESSION != 0 {
            match compression_byte {
                0 => Compression::Deflate,
                1 => Compression::Zstd,
                t => return Err(Error::Unsupported(format!("qcow2 compression type {t}"))),
            }
        } else {
            Compression::Deflate
        };
        let extended_l2 = incompat & INCOMPAT_EXTL2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(corrupt(
                "extended L2 entries need clusters of 16 KiB or more",
            ));
        }
        let size = be64(&fixed, 24);
        let l1_size = u64::from(be32(&fixed, 36));
        let l1_offset = be64(&fixed, 40);
        // Entries one L2 table holds, and so the guest bytes one L1 entry covers.
        let l2_entries = cluster_size / if extended_l2 { 16 } else { 8 };
        let per_l1 = cluster_size * l2_entries;
        let needed = size.div_ceil(per_l1);
        if l1_size < needed {
            return Err(corrupt(format!(
                "L1 table of {l1_size} entries is too small for a {size}-byte disk"
            )));
        }
        let l1_bytes = l1_size * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(corrupt(format!("L1 table of {l1_bytes} bytes")));
        }
        if l1_size > 0
            && (l1_offset % cluster_size != 0
                || l1_offset
                    .checked_add(l1_bytes)
                    .is_none_or(|e| e > file_size))
        {
            return Err(corrupt(format!(
                "L1 table at {l1_offset} ({l1_bytes} bytes) is outside the {file_size}-byte file"
            )));
        }

        let mut header = Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_offset,
            extended_l2,
            compression,
            backing_file: None,
            backing_format: None,
            data_file: None,
            incompatible: incompat,
            autoclear: if version == 3 { be64(&fixed, 88) } else { 0 },
            refcount_order: if version == 3 { be32(&fixed, 96) } else { 4 },
            refcount_table_offset: be64(&fixed, 48),
            refcount_table_clusters: be32(&fixed, 56),
            nb_snapshots: be32(&fixed, 60),
            other_extensions: Vec::new(),
        };
        let backing_offset = be64(&fixed, 8);
        let backing_len = u64::from(be32(&fixed, 16));
        if backing_offset != 0 && backing_len != 0 {
            if backing_len as usize > MAX_NAME
                || backing_offset
                    .checked_add(backing_len)
                    .is_none_or(|e| e > file_size.min(cluster_size))
            {
                return Err(corrupt("backing file name outside the first cluster"));
            }
            let mut name = vec![0u8; backing_len as usize];
            dev.read_at(backing_offset, &mut name)?;
            header.backing_file = Some(text(name, "backing file name")?);
        }
        header.read_extensions(dev, header_len, cluster_size.min(MAX_HEADER_AREA))?;
        if incompat & INCOMPAT_DATA_FILE != 0 && header.data_file.is_none() {
            return Err(Error::Unsupported(
                "qcow2 image with an external data file that the header does not name".into(),
            ));
        }
        if incompat & INCOMPAT_DATA_FILE == 0 {
            header.data_file = None;
        }
        Ok(header)
    }

    /// Walks the extension list after the fixed header, up to the end of the first cluster.
    fn read_extensions(&mut self, dev: &dyn BlockDevice, start: u64, limit: u64) -> Result<()> {
        let end = limit.min(dev.size());
        let mut at = start;
        // Each extension takes at least 8 bytes, so this visits at most limit/8 of them.
        while at + 8 <= end {
            let mut h = [0u8; 8];
            dev.read_at(at, &mut h)?;
            let (kind, len) = (be32(&h, 0), u64::from(be32(&h, 4)));
            if kind == EXT_END {
                return Ok(());
            }
            let data_at = at + 8;
            if data_at + len > end {
                return Err(corrupt(format!(
                    "extension {kind:#x} runs past the first cluster"
                )));
            }
            if kind == EXT_BACKING_FORMAT || kind == EXT_DATA_FILE {
                if len as usize > MAX_NAME {
                    return Err(corrupt(format!("extension {kind:#x} of {len} bytes")));
                }
                let mut v = vec![0u8; len as usize];
                dev.read_at(data_at, &mut v)?;
                if kind == EXT_BACKING_FORMAT {
                    self.backing_format = Some(text(v, "backing format")?);
                } else {
                    self.data_file = Some(text(v, "data file name")?);
                }
            } else if len <= MAX_KEPT_EXTENSION {
                let mut v = vec![0u8; len as usize];
                dev.read_at(data_at, &mut v)?;
                self.other_extensions.push((kind, data_at, v));
            }
            at = data_at + len.div_ceil(8) * 8;
        }
        Ok(())
    }
}

fn text(v: Vec<u8>, what: &str) -> Result<String> {
    let s = String::from_utf8(v).map_err(|_| corrupt(format!("{what} is not UTF-8")))?;
    let s = s.trim_end_matches('\0').to_string();
    if s.is_empty() || s.contains('\0') {
        return Err(corrupt(format!("{what} is empty or holds a NUL")));
    }
    Ok(s)
}
