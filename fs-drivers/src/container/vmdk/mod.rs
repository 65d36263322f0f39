//! VMDK as a read-only BlockDevice: a disk is a list of extents (dm-linear's table), each a
//! flat file range, a hosted sparse extent (sparse.rs), or zeros. A file starting with the
//! "KDMV" magic is one sparse extent with its descriptor embedded (monolithicSparse,
//! streamOptimized); a text descriptor file (monolithicFlat, twoGbMaxExtentSparse/Flat) names
//! its extent files, opened through `PeelContext::open_referenced`.

mod descriptor;
mod sparse;

use super::{Layer, PeelContext};
use crate::block::{check_range, BlockDevice, DeviceRef};
use crate::{Error, Result};
use descriptor::{Descriptor, ExtentKind};
use sparse::{SparseExtent, SparseHeader};
use std::sync::Arc;

enum Source {
    Zero,
    /// A flat range of a file starting at this byte offset; zeros past the file's end.
    Flat(DeviceRef, u64),
    Sparse(DeviceRef),
}

struct Extent {
    start: u64,
    len: u64,
    source: Source,
}

pub struct Vmdk {
    size: u64,
    extents: Vec<Extent>,
}

/// The container detector: a sparse file with the KDMV magic, or a descriptor file.
pub fn detect(dev: &DeviceRef, ctx: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
    let size = dev.size();
    let mut head = [0u8; 512];
    if size < 32 {
        return Ok(None);
    }
    let n = size.min(512) as usize;
    if dev.read_at(0, &mut head[..n]).is_err() {
        return Ok(None);
    }
    if head[..4] == sparse::MAGIC {
        if n < 512 {
            return Err(Error::Corrupt("vmdk: header cut short".into()));
        }
        return open_sparse_file(dev, &head, ctx).map(Some);
    }
    if size <= descriptor::MAX_DESCRIPTOR && descriptor::looks_like_descriptor(&head[..n]) {
        let mut text = vec![0u8; size as usize];
        dev.read_at(0, &mut text)?;
        let d = Descriptor::parse(&text)?;
        return open_descriptor(&d, None, ctx).map(Some);
    }
    Ok(None)
}

fn open_sparse_file(
    dev: &DeviceRef,
    head: &[u8; 512],
    ctx: &PeelContext,
) -> Result<(DeviceRef, Layer)> {
    let h = SparseHeader::parse(head)?;
    let d = embedded_descriptor(dev, &h)?;
    let mut gd_budget = sparse::MAX_GD_BYTES;
    let ext: DeviceRef = Arc::new(SparseExtent::open(dev.clone(), h, 1, &mut gd_budget)?);
    match d {
        // The embedded descriptor's one extent is this file itself.
        Some(d) if d.extents.len() == 1 && d.extents[0].kind == ExtentKind::Sparse => {
            open_descriptor(&d, Some(ext), ctx)
        }
        Some(d) => Err(Error::Unsupported(format!(
            "VMDK sparse file whose embedded descriptor lists {} extents",
            d.extents.len()
        ))),
        None => {
            let size = ext.size();
            let vmdk = Vmdk {
                size,
                extents: vec![Extent {
                    start: 0,
                    len: size,
                    source: Source::Sparse(ext),
                }],
            };
            let layer = Layer {
                format: "vmdk".into(),
                detail: "sparse extent".into(),
            };
            Ok((Arc::new(vmdk), layer))
        }
    }
}

fn embedded_descriptor(dev: &DeviceRef, h: &SparseHeader) -> Result<Option<Descriptor>> {
    if h.descriptor_offset == 0 || h.descriptor_sectors == 0 {
        return Ok(None);
    }
    let at = h.descriptor_offset.saturating_mul(512);
    let len = h.descriptor_sectors.saturating_mul(512);
    if len > descriptor::MAX_DESCRIPTOR || at.checked_add(len).is_none_or(|e| e > dev.size()) {
        return Err(Error::Corrupt(format!(
            "vmdk: embedded descriptor of {len} bytes at {at} is outside the file"
        )));
    }
    let mut text = vec![0u8; len as usize];
    dev.read_at(at, &mut text)?;
    Descriptor::parse(&text).map(Some)
}

/// Builds the disk from a descriptor; `embedded` is the sparse extent of the file the
/// descriptor lives in (monolithicSparse, streamOptimized).
fn open_descriptor(
    d: &Descriptor,
    embedded: Option<DeviceRef>,
    ctx: &PeelContext,
) -> Result<(DeviceRef, Layer)> {
    if let Some(parent) = &d.parent {
        return Err(Error::Unsupported(format!(
            "VMDK delta disk (parent {parent}): snapshot chains are not supported"
        )));
    }
    let mut extents = Vec::with_capacity(d.extents.len());
    let mut start = 0u64;
    let share = d.extents.len();
    let mut gd_budget = sparse::MAX_GD_BYTES;
    for e in &d.extents {
        let len = e
            .sectors
            .checked_mul(512)
            .filter(|l| start.checked_add(*l).is_some())
            .ok_or_else(|| Error::Corrupt("vmdk descriptor: extents add up past 2^64".into()))?;
        let source = match (e.kind, &embedded) {
            (ExtentKind::Zero, _) => Source::Zero,
            (ExtentKind::Sparse, Some(dev)) => Source::Sparse(dev.clone()),
            (ExtentKind::Sparse, None) => {
                let (file, _) = ctx.open_referenced(&e.file)?;
                let mut head = [0u8; 512];
                if file.size() < 512 {
                    return Err(Error::Corrupt(format!("{}: not a sparse extent", e.file)));
                }
                file.read_at(0, &mut head)?;
                let h = SparseHeader::parse(&head).map_err(|err| within(&e.file, err))?;
                // Only streamOptimized compresses, and it is always one file: a descriptor
                // listing compressed extents would give each its own decoded-grain cache.
                if h.compressed() && share > 1 {
                    return Err(Error::Unsupported(format!(
                        "{}: compressed grains in a VMDK of {share} extents",
                        e.file
                    )));
                }
                let ext = SparseExtent::open(file, h, share, &mut gd_budget)
                    .map_err(|err| within(&e.file, err))?;
                Source::Sparse(Arc::new(ext))
            }
            (ExtentKind::Flat, _) => {
                let (file, _) = ctx.open_referenced(&e.file)?;
                let at = e.offset.checked_mul(512).ok_or_else(|| {
                    Error::Corrupt(format!("vmdk descriptor: offset of {}", e.file))
                })?;
                Source::Flat(file, at)
            }
        };
        extents.push(Extent { start, len, source });
        start += len;
    }
    let kind = if d.create_type.is_empty() {
        "no createType"
    } else {
        &d.create_type
    };
    let detail = match extents.len() {
        1 => kind.to_string(),
        n => format!("{kind}, {n} extents"),
    };
    let vmdk = Vmdk {
        size: start,
        extents,
    };
    let layer = Layer {
        format: "vmdk".into(),
        detail,
    };
    Ok((Arc::new(vmdk), layer))
}

fn within(name: &str, e: Error) -> Error {
    match e {
        Error::Corrupt(s) => Error::Corrupt(format!("{name}: {s}")),
        Error::Unsupported(s) => Error::Unsupported(format!("{name}: {s}")),
        other => other,
    }
}

impl BlockDevice for Vmdk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = self.extents.partition_point(|e| e.start + e.len <= pos);
            let Some(e) = self.extents.get(i) else {
                return Err(Error::OutOfRange);
            };
            let within = pos - e.start;
            let n = (e.len - within).min((buf.len() - done) as u64) as usize;
            let out = &mut buf[done..done + n];
            match &e.source {
                Source::Zero => out.fill(0),
                Source::Flat(file, base) => {
                    let at = base.saturating_add(within);
                    let have = file.size().saturating_sub(at).min(n as u64) as usize;
                    if have > 0 {
                        file.read_at(at, &mut out[..have])?;
                    }
                    out[have..].fill(0);
                }
                Source::Sparse(dev) => {
                    // The descriptor may claim more sectors than the extent's header holds.
                    let have = dev.size().saturating_sub(within).min(n as u64) as usize;
                    if have > 0 {
                        dev.read_at(within, &mut out[..have])?;
                    }
                    out[have..].fill(0);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Passes the hint on for flat extents (a sparse extent's grains are wherever its tables
    /// say; reading those tables is not a hint's job).
    fn readahead(&self, offset: u64, len: u64) {
        let i = self.extents.partition_point(|e| e.start + e.len <= offset);
        if let Some(Extent {
            start,
            len: elen,
            source: Source::Flat(file, base),
        }) = self.extents.get(i)
        {
            let within = offset - start;
            file.readahead(base.saturating_add(within), len.min(elen - within));
        }
    }

    crate::read_only_device_writes!();
}
