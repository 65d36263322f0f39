//! Container layers: formats that wrap a disk (VM disk formats, sparse and compressed images)
//! peeled by magic before the partition table is read, each a read-only `BlockDevice` over the
//! device below it — device-mapper's stacking, where every target maps onto the one under it.
//!
//! A format adds one `Detector` to `DETECTORS`; `peel` tries them in order until none matches,
//! so a `.qcow2.gz` becomes gzip → qcow2 → raw bytes. Nothing here knows what is above.

mod android_sparse;
mod cluster_cache;
pub mod compressed;
mod helper_pool;
mod parent_file;
pub mod qcow2;
pub(crate) mod run_map;
mod vdi;
mod vhd;
mod vhdx;
pub mod vmdk;

use crate::block::{DeviceRef, FileDevice};
use crate::{Error, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod luks;

/// One peeled layer, for `info`: `format` names it ("qcow2 v3"), `detail` says what matters
/// about this instance ("64 KiB clusters, zstd, backing: base.qcow2"), empty when nothing does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub format: String,
    pub detail: String,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.format)
        } else {
            write!(f, "{} ({})", self.format, self.detail)
        }
    }
}

/// Told to a long job (building a seek index, decoding a whole stream): `done` of `total`
/// bytes. The front end draws a bar; the library only reports.
pub trait Progress: Send + Sync {
    fn start(&self, what: &str, total: u64);
    fn advance(&self, done: u64);
    fn finish(&self);
}

/// What a detector may need besides the device: where the image lives (backing files and
/// descriptor extents are named relative to it), the index cache, and whom to tell progress.
#[derive(Clone, Default)]
pub struct PeelContext {
    /// The image file's path; `None` for an in-memory device (then relative references fail).
    pub path: Option<PathBuf>,
    /// Where seek indexes are cached; `None`: do not cache.
    pub index_cache_dir: Option<PathBuf>,
    pub progress: Option<Arc<dyn Progress>>,
    /// (device, inode) of every file opened on the way here (the image, then each backing
    /// file it named): a reference back to one of them is a loop.
    pub opened: Vec<(u64, u64)>,
    /// Where a LUKS passphrase comes from; `None`: LUKS volumes stay locked.
    pub luks_key: Option<Arc<luks::KeySource>>,
}

/// How many files a chain of backing/parent references may span (qemu's limit is similar).
pub const MAX_BACKING_DEPTH: usize = 16;

impl PeelContext {
    /// The directory that relative references in the image at `path` are resolved against.
    pub fn base_dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }

    /// Opens a file the image refers to (a backing file, a parent disk, a descriptor's
    /// extent) read-only: `name` relative to the image's directory unless absolute. Refuses a
    /// loop back to a file already in the chain and chains deeper than `MAX_BACKING_DEPTH`.
    /// Returns the file and the context to peel or open its own references with.
    pub fn open_referenced(&self, name: &str) -> Result<(DeviceRef, PeelContext)> {
        let given = Path::new(name);
        let path = if given.is_absolute() {
            given.to_path_buf()
        } else {
            match self.base_dir() {
                Some(dir) => dir.join(given),
                None => given.to_path_buf(),
            }
        };
        let not_usable = |why: String| Error::Invalid(format!("{}: {why}", path.display()));
        if self.opened.len() >= MAX_BACKING_DEPTH {
            return Err(not_usable(format!(
                "a chain of more than {MAX_BACKING_DEPTH} backing files"
            )));
        }
        let meta = std::fs::metadata(&path).map_err(|e| not_usable(e.to_string()))?;
        let id = (meta.dev(), meta.ino());
        if self.opened.contains(&id) || self.self_id() == Some(id) {
            return Err(not_usable(
                "the backing chain loops back to a file already in it".into(),
            ));
        }
        let dev = FileDevice::open(&path, false).map_err(|e| not_usable(e.to_string()))?;
        let mut opened = self.opened.clone();
        opened.extend(self.self_id());
        let child = PeelContext {
            path: Some(path),
            opened,
            ..self.clone()
        };
        Ok((Arc::new(dev), child))
    }

    fn self_id(&self) -> Option<(u64, u64)> {
        let meta = std::fs::metadata(self.path.as_deref()?).ok()?;
        Some((meta.dev(), meta.ino()))
    }
}

/// A format's entry point: `Ok(None)` when `dev` does not start with this format's magic,
/// `Ok(Some(..))` with the unwrapped device, or an error that names the problem in one line.
pub type Detector = fn(&DeviceRef, &PeelContext) -> Result<Option<(DeviceRef, Layer)>>;

/// Every container format, tried in order on each layer.
const DETECTORS: &[Detector] = &[
    // One line per format, so branches adding formats merge cleanly.
    qcow2::detect,
    vmdk::detect,
    vhdx::detect,
    vdi::detect,
    android_sparse::detect,
    // Last of the virtual disks: a fixed VHD is known only by the footer at its end.
    vhd::detect,
    compressed::detect_gzip,
    compressed::detect_xz,
    compressed::detect_zstd,
    compressed::detect_bzip2,
    luks::detect,
];

/// How many layers may be peeled; a chain deeper than this is refused (a file that decodes
/// into itself, or a hostile stack of wrappers).
pub const MAX_DEPTH: usize = 8;

/// Peels container layers off `dev` until raw bytes remain. Returns the innermost device and
/// the layers from the outermost in.
pub fn peel(mut dev: DeviceRef, ctx: &PeelContext) -> Result<(DeviceRef, Vec<Layer>)> {
    peel_with(&mut dev, ctx, DETECTORS).map(|layers| (dev, layers))
}

/// Formats whose inner device is a VM's disk as the guest wrote it: never probed for more
/// containers, as QEMU never probes a guest's disk (a guest could otherwise write a qcow2
/// header naming a host file as its backing file, and the host would read that file).
const GUEST_DISK_FORMATS: &[&str] = &["qcow2", "vmdk", "vhd", "vhdx", "vdi"];

fn is_guest_disk(layer: &Layer) -> bool {
    GUEST_DISK_FORMATS
        .iter()
        .any(|f| layer.format.split(' ').next() == Some(f))
}

fn peel_with(dev: &mut DeviceRef, ctx: &PeelContext, detectors: &[Detector]) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    'outer: loop {
        for detect in detectors {
            if let Some((inner, layer)) = detect(dev, ctx)? {
                if layers.len() == MAX_DEPTH {
                    return Err(Error::Unsupported(format!(
                        "more than {MAX_DEPTH} container layers (a file that unwraps into itself?)"
                    )));
                }
                let guest = is_guest_disk(&layer);
                layers.push(layer);
                *dev = inner;
                if guest {
                    return Ok(layers);
                }
                continue 'outer;
            }
        }
        return Ok(layers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockDevice, MemDevice};

    /// A toy format: "WRAP" then the payload.
    fn wrap(dev: &DeviceRef, _: &PeelContext) -> Result<Option<(DeviceRef, Layer)>> {
        let mut magic = [0u8; 4];
        if dev.size() < 4 || dev.read_at(0, &mut magic).is_err() || &magic != b"WRAP" {
            return Ok(None);
        }
        let inner = crate::block::Slice::new(dev.clone(), 4, dev.size() - 4)?;
        let layer = Layer {
            format: "wrap".into(),
            detail: String::new(),
        };
        Ok(Some((Arc::new(inner), layer)))
    }

    fn mem(data: &[u8]) -> DeviceRef {
        Arc::new(MemDevice::read_only(data.to_vec()))
    }

    #[test]
    fn peels_nested_layers_in_order() {
        let mut dev = mem(b"WRAPWRAPraw");
        let layers = peel_with(&mut dev, &PeelContext::default(), &[wrap]).unwrap();
        assert_eq!(layers.len(), 2);
        let mut rest = vec![0u8; dev.size() as usize];
        dev.read_at(0, &mut rest).unwrap();
        assert_eq!(rest, b"raw");
    }

    #[test]
    fn refuses_too_deep_a_chain() {
        let mut dev = mem(&b"WRAP".repeat(MAX_DEPTH + 2));
        let e = peel_with(&mut dev, &PeelContext::default(), &[wrap]).unwrap_err();
        assert!(e.to_string().contains("container layers"), "{e}");
    }

    #[test]
    fn referenced_files_resolve_relative_and_refuse_loops() {
        let dir = std::env::temp_dir().join(format!("imgmount-peel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a"), b"aaaa").unwrap();
        std::fs::write(dir.join("b"), b"bb").unwrap();
        let ctx = PeelContext {
            path: Some(dir.join("a")),
            ..PeelContext::default()
        };
        let (b, bctx) = ctx.open_referenced("b").unwrap();
        assert_eq!(b.size(), 2);
        let e = bctx.open_referenced("a").err().unwrap().to_string();
        assert!(e.contains("loops"), "{e}");
        let e = ctx.open_referenced("a").err().unwrap().to_string();
        assert!(e.contains("loops"), "{e}");
        let e = ctx.open_referenced("missing").err().unwrap().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn raw_bytes_peel_to_themselves() {
        let mut dev = mem(b"raw");
        assert!(peel_with(&mut dev, &PeelContext::default(), &[wrap])
            .unwrap()
            .is_empty());
    }
}
