//! qcow2 (QEMU's copy-on-write format, versions 2 and 3) as a read-only BlockDevice: a mapping
//! function from guest offsets to zero / backing / data / compressed (map.rs) over a header
//! checked against the file size (header.rs), with compressed clusters decoded and cached in
//! compressed.rs. Backing files and an external data file are opened through
//! `PeelContext::open_referenced`, which bounds the chain and refuses loops.

pub(crate) mod header;
pub(crate) mod map;

use super::cluster_cache::{self, Codec, Decoder};
use super::{Layer, PeelContext};
use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::{Error, Result};
use header::{Compression, Header};
use map::{Mapper, Mapping};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Qcow2 {
    size: u64,
    cluster_bits: u32,
    map: Mapper,
    /// Where allocated clusters live: the image itself, or its external data file.
    data: DeviceRef,
    backing: Option<DeviceRef>,
    decoder: Decoder,
    /// End of the previous read, to tell a sequential reader (decode ahead) from a random one.
    last_end: AtomicU64,
}

/// The container detector: `Ok(None)` unless `dev` starts with the qcow2 magic.
pub fn detect(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    if !header::has_magic(dev.as_ref()) {
        return Ok(None);
    }
    let (q, layer) = Qcow2::open(dev.clone(), ctx)?;
    Ok(Some((Arc::new(q), layer)))
}

/// "64 KiB" for a power of two.
fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// Prefixes an error from a referenced file with its name, so the one line says which file
/// of a chain is broken.
fn within(name: &str, e: Error) -> Error {
    match e {
        Error::Corrupt(s) => Error::Corrupt(format!("{name}: {s}")),
        Error::Unsupported(s) => Error::Unsupported(format!("{name}: {s}")),
        other => other,
    }
}

impl Qcow2 {
    /// Opens the qcow2 image in `file`, its data file and its backing chain.
    pub fn open(file: DeviceRef, ctx: &PeelContext) -> Result<(Qcow2, Layer)> {
        let h = Header::read(file.as_ref())?;
        let mut detail = vec![format!("{} clusters", human(h.cluster_size()))];
        if h.compression == Compression::Zstd {
            detail.push("zstd".into());
        }
        if h.extended_l2 {
            detail.push("extended L2".into());
        }
        let data = match &h.data_file {
            Some(name) => {
                detail.push(format!("data file: {name}"));
                ctx.open_referenced(name)?.0
            }
            None => file.clone(),
        };
        let backing = match &h.backing_file {
            Some(name) => {
                let (dev, fmt) = open_backing(name, h.backing_format.as_deref(), ctx)?;
                detail.push(format!("backing: {name} ({fmt})"));
                Some(dev)
            }
            None => None,
        };
        let map = Mapper::new(&h, file.clone())?;
        let q = Qcow2 {
            size: h.size,
            cluster_bits: h.cluster_bits,
            map,
            data,
            backing,
            decoder: Decoder::new(
                match h.compression {
                    Compression::Deflate => Codec::RawDeflate,
                    Compression::Zstd => Codec::Zstd,
                },
                "qcow2",
                h.cluster_size(),
                // A backing file serves only what the layers above lack: halve its cache per
                // level, so a 16-deep chain holds ~2x one image's, not 16x.
                cluster_cache::CACHE_BYTES >> ctx.opened.len().min(4),
                file,
            ),
            last_end: AtomicU64::new(u64::MAX),
        };
        let layer = Layer {
            format: format!("qcow2 v{}", h.version),
            detail: detail.join(", "),
        };
        Ok((q, layer))
    }

    /// Reads from the data file, zeros past its end (QEMU's file driver does the same: a
    /// preallocated image may be shorter than its last cluster).
    fn read_data(&self, host: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.data.size();
        let have = size.saturating_sub(host).min(buf.len() as u64) as usize;
        if have > 0 {
            self.data.read_at(host, &mut buf[..have])?;
        }
        buf[have..].fill(0);
        Ok(())
    }

    fn read_backing(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let have = b.size().saturating_sub(pos).min(buf.len() as u64) as usize;
        // Past the backing file's end (an overlay grown beyond it) even an empty read would
        // be out of range: zeros only.
        if have > 0 {
            b.read_at(pos, &mut buf[..have])?;
        }
        buf[have..].fill(0);
        Ok(())
    }

    /// The compressed clusters right after the one holding `pos`, for decoding ahead.
    fn ahead(&self, pos: u64) -> Vec<cluster_cache::Extent> {
        let cs = 1u64 << self.cluster_bits;
        let mut next = (pos | (cs - 1)).saturating_add(1);
        let mut out = Vec::new();
        while out.len() < self.decoder.plan() && next < self.size {
            match self.map.map(next) {
                Ok(Mapping::Compressed { offset, len }) => out.push((offset, len)),
                _ => break,
            }
            next += cs;
        }
        out
    }
}

/// Opens a backing file named by a qcow2 header: a raw one as it is (QEMU never probes a file
/// declared raw, so a raw disk holding a qcow2 header is not reinterpreted), anything else
/// peeled like the top image.
fn open_backing(
    name: &str,
    format: Option<&str>,
    ctx: &PeelContext,
) -> Result<(DeviceRef, String)> {
    let (dev, child) = ctx.open_referenced(name)?;
    if format == Some("raw") {
        return Ok((dev, "raw".into()));
    }
    let (inner, layers) = super::peel(dev, &child).map_err(|e| within(name, e))?;
    let found = layers
        .first()
        .map(|l| l.format.clone())
        .unwrap_or_else(|| "raw".into());
    if let Some(want) = format {
        if !found.starts_with(want) {
            return Err(Error::Corrupt(format!(
                "{name}: the header says the backing file is {want}, it is {found}"
            )));
        }
    }
    Ok((inner, found))
}

impl BlockDevice for Qcow2 {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let len = buf.len() as u64;
        // Decode ahead for a reader that continues where the last read ended, or reads more
        // than a cluster at once (FUSE threads may deliver a stream's reads out of order).
        let sequential = self.last_end.swap(offset + len, Ordering::Relaxed) == offset
            || len > (1u64 << self.cluster_bits);
        let unit = self.map.unit();
        let cs_mask = (1u64 << self.cluster_bits) - 1;
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let step = (unit - pos % unit).min(len - done);
            let mut n = step;
            match self.map.map(pos)? {
                Mapping::Zero => buf[done as usize..(done + n) as usize].fill(0),
                Mapping::Backing => {
                    self.read_backing(pos, &mut buf[done as usize..(done + n) as usize])?
                }
                Mapping::Data(host) => {
                    // One read for a run of units that are contiguous in the file too.
                    while done + n < len {
                        let more = unit.min(len - done - n);
                        match self.map.map(pos + n)? {
                            Mapping::Data(h) if h == host + n => n += more,
                            _ => break,
                        }
                    }
                    self.read_data(host, &mut buf[done as usize..(done + n) as usize])?
                }
                Mapping::Compressed {
                    offset: at,
                    len: clen,
                } => {
                    let bytes = self.decoder.get((at, clen), || {
                        if sequential {
                            self.ahead(pos)
                        } else {
                            Vec::new()
                        }
                    })?;
                    let from = (pos & cs_mask) as usize;
                    buf[done as usize..(done + n) as usize]
                        .copy_from_slice(&bytes[from..from + n as usize]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Passes the hint on to where the range's bytes live (the data file, the backing file),
    /// so the host starts reading them; compressed and zero clusters need nothing.
    fn readahead(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.size);
        let unit = self.map.unit();
        let mut pos = offset;
        // A hint must stay cheap: at most this many lookups, each at most one L2 slice read.
        for _ in 0..64 {
            if pos >= end {
                break;
            }
            let step = (unit - pos % unit).min(end - pos);
            match self.map.map(pos) {
                Ok(Mapping::Data(host)) => self.data.readahead(host, step),
                Ok(Mapping::Backing) => {
                    if let Some(b) = &self.backing {
                        b.readahead(pos, step.min(b.size().saturating_sub(pos)));
                    }
                }
                _ => {}
            }
            pos += step;
        }
    }

    crate::read_only_device_writes!();
}
