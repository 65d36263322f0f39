//! Opening an image: the file, the cache over it, the partition table, and the filesystem(s).
//!
//! The stack is the kernel's, in userspace: the image file is the loop device, the block cache
//! sits over it once (so every partition shares one cache budget), and each partition is a
//! linear `Slice` over the cache. A disk opened without `-p` becomes a `MultiFs` whose root
//! holds one directory per partition.

use crate::block::{BlockCache, CacheStats, DeviceRef, DirectFileDevice, FileDevice, Slice};
use crate::container::luks::{self, KeySource};
use crate::container::{self, Layer, PeelContext};
use crate::cow::{self, CowOptions, Overlay};
use crate::ext::{ExtFs, ExtOptions};
use crate::fat::{FatFs, FatOptions};
use crate::multi::{MultiFs, Slot};
use crate::partition::{self, Guid, PartitionTable, PartitionType, Scheme};
use crate::probe::{self, FsKind, Probe};
use crate::squashfs::{SquashFs, SquashOptions};
use crate::vfs::{FileSystem, Timespec};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// Which filesystem driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsType {
    /// Whatever the probe finds.
    #[default]
    Auto,
    Ext2,
    Ext3,
    Ext4,
    Fat,
    Squashfs,
    Erofs,
    Iso9660,
}

impl FsType {
    fn name(self) -> &'static str {
        match self {
            FsType::Auto => "auto",
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Fat => "fat",
            FsType::Squashfs => "squashfs",
            FsType::Erofs => "erofs",
            FsType::Iso9660 => "iso9660",
        }
    }
}

/// How to open a filesystem; what every driver is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsOptions {
    pub writable: bool,
    pub fs_type: FsType,
    /// Check metadata checksums (ext4 metadata_csum, journal) and refuse what fails.
    pub verify_checksums: bool,
    /// FAT stores local times: the offset east of UTC, in minutes, to read them with.
    /// `None` means UTC here; the front end resolves the host's time zone (that needs libc's
    /// localtime, which this crate does not call).
    pub fat_utc_offset_minutes: Option<i32>,
    /// FAT has no owners: the uid/gid every file shows (the front end passes the caller's).
    pub fat_owner: (u32, u32),
    /// FAT has no modes: files and directories show 0777 less this mask (read-only files lose
    /// their write bits too).
    pub fat_umask: u16,
    /// Punch holes in the image for clusters a writable filesystem frees.
    pub discard: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            writable: false,
            fs_type: FsType::Auto,
            verify_checksums: true,
            fat_utc_offset_minutes: None,
            fat_owner: (0, 0),
            fat_umask: 0o022,
            discard: false,
        }
    }
}

/// Which part of a disk to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// 1-based partition table index (logical MBR partitions from 5).
    Index(u32),
    /// Every partition, as directories p1, p2, ...
    All,
}

/// A filesystem-sized piece of the image: a partition, or the whole image when it is a bare
/// filesystem (`index == None`).
#[derive(Clone)]
pub struct Volume {
    pub index: Option<u32>,
    /// Byte offset in the image.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    pub ptype: Option<PartitionType>,
    /// GPT partition name.
    pub name: Option<String>,
    /// GPT unique partition GUID.
    pub uuid: Option<Guid>,
    pub bootable: bool,
    pub logical: bool,
    /// An MBR extended partition: it holds partitions, not a filesystem (never probed).
    pub container: bool,
    pub probe: Option<Probe>,
    /// Why probing failed (an I/O error), when it did.
    pub probe_error: Option<String>,
    /// The partition as a device (a slice over the cached image).
    pub device: DeviceRef,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("index", &self.index)
            .field("start", &self.start)
            .field("size", &self.size)
            .field("ptype", &self.ptype)
            .field("name", &self.name)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// "partition 3" or "the image", for messages.
    pub fn describe(&self) -> String {
        match self.index {
            Some(n) => format!("partition {n}"),
            None => "the image".into(),
        }
    }
}

/// How to open an image file: the choices every layer below the filesystem takes. Each wave-2
/// layer (containers, overlays, decryption) adds its own field here, so callers keep one call.
#[derive(Clone, Default)]
pub struct ImageOptions {
    /// Open the image O_RDWR (else O_RDONLY).
    pub writable: bool,
    /// Bytes of block cache over the image (0: none).
    pub cache_bytes: u64,
    /// What container detectors get: the index cache and whom to tell progress. Its `path` is
    /// filled in by `Image::open`.
    pub peel: PeelContext,
    /// Where the image starts in the file (`--offset`, as fuse2fs and mtools take it): every
    /// layer above sees only the bytes from here.
    pub offset: u64,
    /// A copy-on-write overlay over the image (which is then opened read-only, with a shared
    /// lock): writes go to the store, never to the image.
    pub cow: Option<CowOptions>,
    /// Open the image O_DIRECT (buffered when the host filesystem refuses).
    pub direct: bool,
    /// How direct reads are kept in flight (`None`: `block::PoolMaker`, a thread pool).
    pub read_queue: Option<Arc<dyn crate::block::ReadQueueMaker>>,
}

impl ImageOptions {
    pub fn new(writable: bool, cache_bytes: u64) -> Self {
        ImageOptions {
            writable,
            cache_bytes,
            ..ImageOptions::default()
        }
    }
}

pub struct Image {
    device: DeviceRef,
    /// Container layers peeled off the file, outermost first (empty for a raw image).
    layers: Vec<Layer>,
    cache: Option<Arc<BlockCache>>,
    table: PartitionTable,
    volumes: Vec<Volume>,
    mtime: Timespec,
    overlay: Option<Overlay>,
    /// `direct` was asked for and the host filesystem refused O_DIRECT.
    direct_fallback: bool,
    /// The image file is read with O_DIRECT.
    direct: bool,
}

impl Image {
    /// Opens the image file O_RDONLY (or O_RDWR when `writable`), puts a block cache of
    /// `cache_bytes` over it (0: none), reads the partition table and probes every partition.
    /// Fails when the file is empty, a directory or unreadable; see `check_recognised` for a
    /// file that holds nothing imgmount knows.
    pub fn open(path: &Path, writable: bool, cache_bytes: u64) -> Result<Image> {
        Self::open_with(path, &ImageOptions::new(writable, cache_bytes))
    }

    /// As `open`, with every layer's options; container formats are peeled off the file
    /// before the cache and the partition table.
    pub fn open_with(path: &Path, opts: &ImageOptions) -> Result<Image> {
        // Checked first so the message does not repeat the path the caller prints anyway.
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(Error::Invalid("is a directory, not a disk image".into()));
        }
        let file = FileDevice::open(path, opts.writable && opts.cow.is_none())?;
        if opts.cow.is_some() {
            cow::lock_image_shared(file.file())?;
        }
        let mtime = file
            .file()
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| {
                Timespec::new(
                    i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    d.subsec_nanos(),
                )
            })
            .unwrap_or_default();
        let mut direct_fallback = false;
        let mut raw: DeviceRef = match opts.direct {
            false => Arc::new(file),
            true => match DirectFileDevice::open_with(
                path,
                opts.writable && opts.cow.is_none(),
                opts.read_queue
                    .clone()
                    .unwrap_or_else(|| Arc::new(crate::block::PoolMaker)),
            )? {
                Some(direct) => Arc::new(direct),
                None => {
                    direct_fallback = true;
                    Arc::new(file)
                }
            },
        };
        if opts.offset > 0 {
            let size = raw.size();
            if opts.offset >= size {
                return Err(Error::Invalid(format!(
                    "offset {} is at or past the end of the {size}-byte file",
                    opts.offset
                )));
            }
            raw = Arc::new(Slice::new(raw, opts.offset, size - opts.offset)?);
        }
        let ctx = PeelContext {
            path: Some(path.to_path_buf()),
            ..opts.peel.clone()
        };
        let Some(cow_opts) = &opts.cow else {
            let mut img = Self::from_device_peeled(raw, &ctx, opts.cache_bytes, mtime)?;
            img.direct_fallback = direct_fallback;
            img.direct = opts.direct && !direct_fallback;
            return Ok(img);
        };
        if raw.size() == 0 {
            return Err(Error::Invalid("the file is empty, not a disk image".into()));
        }
        // The overlay goes over what the containers hold and under the cache.
        let (raw, layers) = container::peel(raw, &ctx)?;
        let origin_file = cow::OriginFile {
            path,
            offset: opts.offset,
            layers: &layers,
        };
        let overlay = cow::open_overlay(raw, cow_opts, mtime, Some(&origin_file))?;
        let dev: DeviceRef = overlay.snapshot.clone();
        let mut img = Self::from_layers(dev, layers, opts.cache_bytes, mtime, Some(&ctx))?;
        img.overlay = Some(overlay);
        img.direct_fallback = direct_fallback;
        img.direct = opts.direct && !direct_fallback;
        Ok(img)
    }

    /// The copy-on-write overlay, when the image was opened with one.
    pub fn overlay(&self) -> Option<&Overlay> {
        self.overlay.as_ref()
    }

    /// As `open`, over any device (tests use an in-memory disk); no container is peeled.
    pub fn from_device(raw: DeviceRef, cache_bytes: u64, mtime: Timespec) -> Result<Image> {
        Self::from_layers(raw, Vec::new(), cache_bytes, mtime, None)
    }

    /// As `from_device`, peeling container layers first.
    pub fn from_device_peeled(
        raw: DeviceRef,
        ctx: &PeelContext,
        cache_bytes: u64,
        mtime: Timespec,
    ) -> Result<Image> {
        if raw.size() == 0 {
            return Err(Error::Invalid("the file is empty, not a disk image".into()));
        }
        let (raw, layers) = container::peel(raw, ctx)?;
        Self::from_layers(raw, layers, cache_bytes, mtime, Some(ctx))
    }

    fn from_layers(
        raw: DeviceRef,
        layers: Vec<Layer>,
        cache_bytes: u64,
        mtime: Timespec,
        ctx: Option<&PeelContext>,
    ) -> Result<Image> {
        if raw.size() == 0 {
            return Err(Error::Invalid("the file is empty, not a disk image".into()));
        }
        let (device, cache) = if cache_bytes > 0 {
            let cache = Arc::new(BlockCache::new(raw, cache_bytes, 0));
            (cache.clone() as DeviceRef, Some(cache))
        } else {
            (raw, None)
        };
        let table = partition::read_table(device.as_ref())?;
        let keys = ctx.and_then(|c| c.luks_key.as_deref());
        let mut volumes = list_volumes(&device, &table, keys)?;
        // A hybrid ISO: the whole-disk ISO 9660 view comes first (see hybrid.rs).
        if let Some(iso) = crate::hybrid::iso_over_table(&device, &table)? {
            volumes.insert(0, iso);
        }
        Ok(Image {
            device,
            layers,
            cache,
            table,
            volumes,
            mtime,
            overlay: None,
            direct_fallback: false,
            direct: false,
        })
    }

    /// Fails when the image holds neither a partition table nor a filesystem the probe knows
    /// (random bytes, a file that is no disk image). `open_fs` then only works with a forced
    /// `-t`, which lets that driver judge the superblock itself.
    pub fn check_recognised(&self) -> Result<()> {
        if self.table.scheme != Scheme::None || self.volumes.iter().any(|v| v.probe.is_some()) {
            return Ok(());
        }
        if let Some(why) = self.volumes.iter().find_map(|v| v.probe_error.clone()) {
            return Err(Error::Io(std::io::Error::other(why)));
        }
        if let Some(off) = probe::appimage::squashfs_offset(self.device.as_ref())? {
            return Err(Error::Invalid(format!(
                "an ELF program with a squashfs at offset {off} (an AppImage): use --offset {off}"
            )));
        }
        Err(Error::Invalid(format!(
            "no partition table and no filesystem imgmount knows in these {} bytes (is it a disk image?)",
            self.device.size()
        )))
    }

    /// Whether O_DIRECT was asked for and refused (the image is read buffered).
    pub fn direct_fallback(&self) -> bool {
        self.direct_fallback
    }

    /// Whether the image file is read with O_DIRECT (`ImageOptions::read_queue` says how).
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    /// Container layers peeled off the file, outermost first (empty for a raw image).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The image as a device (behind the cache when there is one).
    pub fn device(&self) -> &DeviceRef {
        &self.device
    }

    pub fn size(&self) -> u64 {
        self.device.size()
    }

    pub fn table(&self) -> &PartitionTable {
        &self.table
    }

    /// The disk's identifier as fdisk shows it: the GPT disk GUID, or the MBR disk signature
    /// as `0x` and 8 hex digits.
    pub fn disk_id(&self) -> Result<Option<String>> {
        match self.table.scheme {
            Scheme::None => Ok(None),
            Scheme::Gpt => Ok(self.table.disk_guid.map(|g| g.to_string())),
            Scheme::Mbr => {
                let mut sig = [0u8; 4];
                self.device.read_at(440, &mut sig)?;
                Ok(Some(format!("0x{:08x}", u32::from_le_bytes(sig))))
            }
        }
    }

    /// Writes back everything the cache holds and fsyncs the image (for a writable image; a
    /// read-only one has nothing to write).
    pub fn flush(&self) -> Result<()> {
        self.device.flush()
    }

    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// The partitions in table order (extended containers included, marked `container`), or
    /// the one bare filesystem.
    pub fn volumes(&self) -> &[Volume] {
        &self.volumes
    }

    /// Set when the image is shorter than its partition table says (partitions were left out);
    /// the text says what is missing.
    pub fn truncation(&self) -> Option<&str> {
        // The partition reader words every "past the end" finding this way; a missing
        // partition says more than a missing backup header, so it is preferred.
        let past_end = || {
            self.table
                .warnings
                .iter()
                .filter(|w| w.contains("beyond the end of the image"))
        };
        past_end()
            .find(|w| w.starts_with("partition"))
            .or_else(|| past_end().next())
            .map(String::as_str)
    }

    fn partition_numbers(&self) -> String {
        let nums: Vec<String> = self
            .volumes
            .iter()
            .filter_map(|v| v.index)
            .map(|n| n.to_string())
            .collect();
        match nums.len() {
            0 => "no partitions".into(),
            1 => format!("partition {}", nums[0]),
            _ => format!("partitions {}", nums.join(", ")),
        }
    }

    fn no_table_error(&self, n: u32) -> Error {
        Error::Invalid(format!(
            "no partition {n}: the image has no partition table (it is a bare {} filesystem; leave out -p)",
            self.volumes
                .first()
                .and_then(|v| v.probe.as_ref())
                .map_or("unknown", |p| p.kind.name())
        ))
    }

    /// The volume for `-p N`, or an error naming the partitions that do exist.
    pub fn partition(&self, n: u32) -> Result<&Volume> {
        if self.table.scheme == Scheme::None {
            return Err(self.no_table_error(n));
        }
        self.volumes
            .iter()
            .find(|v| v.index == Some(n))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no partition {n} (the disk has {})",
                    self.partition_numbers()
                ))
            })
    }

    /// The filesystem to present: `-p N` gives that partition's; no selection gives a bare
    /// filesystem itself, or every partition as p1/, p2/, ... (also what `All` gives).
    pub fn open_fs(&self, sel: Option<Selection>, opts: &FsOptions) -> Result<Arc<dyn FileSystem>> {
        self.open_fs_warned(sel, opts).map(|(fs, _)| fs)
    }

    /// As `open_fs`, plus one line for each partition shown as an empty directory because
    /// its filesystem could not be opened.
    pub fn open_fs_warned(
        &self,
        sel: Option<Selection>,
        opts: &FsOptions,
    ) -> Result<(Arc<dyn FileSystem>, Vec<String>)> {
        if self.table.scheme == Scheme::None {
            if let Some(Selection::Index(n)) = sel {
                return Err(self.no_table_error(n));
            }
            if opts.fs_type == FsType::Auto {
                self.check_recognised()?;
            }
            // A bare image always has exactly one volume (see list_volumes).
            return Ok((open_volume(&self.volumes[0], opts)?, Vec::new()));
        }
        if let Some(Selection::Index(n)) = sel {
            return Ok((open_volume(self.partition(n)?, opts)?, Vec::new()));
        }
        if let (None, Some(iso)) = (sel, self.volumes.first().filter(|v| v.index.is_none())) {
            return Ok((open_volume(iso, opts)?, Vec::new()));
        }
        let data: Vec<&Volume> = self
            .volumes
            .iter()
            .filter(|v| !v.container && v.index.is_some())
            .collect();
        if data.is_empty() {
            return Err(Error::Invalid(format!(
                "the {} partition table lists no partitions",
                self.table.scheme.name()
            )));
        }
        let mut slots = Vec::with_capacity(data.len());
        let mut warnings = Vec::new();
        for v in data {
            // Never None here: only a bare image has an index-less volume.
            let n = v.index.unwrap_or(0);
            let fs = match open_volume(v, opts) {
                Ok(fs) => Some(fs),
                Err(e) => {
                    warnings.push(format!("p{n} is empty: {}", message(&e)));
                    None
                }
            };
            slots.push(Slot {
                name: format!("p{n}"),
                fs,
            });
        }
        let multi = MultiFs::new(slots, warnings.clone(), self.mtime)?;
        Ok((Arc::new(multi), warnings))
    }
}

/// An error's text without the variant's generic prefix where the text is already a sentence.
fn message(e: &Error) -> String {
    match e {
        Error::Invalid(s) | Error::Unsupported(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list_volumes(
    device: &DeviceRef,
    table: &PartitionTable,
    keys: Option<&KeySource>,
) -> Result<Vec<Volume>> {
    if table.scheme == Scheme::None {
        let mut v = Volume {
            index: None,
            start: 0,
            size: device.size(),
            ptype: None,
            name: None,
            uuid: None,
            bootable: false,
            logical: false,
            container: false,
            probe: None,
            probe_error: None,
            device: device.clone(),
        };
        probe_into(&mut v);
        return Ok(vec![v]);
    }
    let mut out = Vec::with_capacity(table.partitions.len());
    for p in &table.partitions {
        let slice: DeviceRef = Arc::new(Slice::new(device.clone(), p.start, p.size)?);
        let container = p.ptype.is_extended();
        let mut v = Volume {
            index: Some(p.index),
            start: p.start,
            size: p.size,
            ptype: Some(p.ptype),
            name: p.name.clone(),
            uuid: p.uuid,
            bootable: p.bootable,
            logical: p.logical,
            container,
            probe: None,
            probe_error: None,
            device: slice,
        };
        if !container {
            probe_into(&mut v);
            if let Some(keys) = keys {
                unlock_volume(&mut v, keys)?;
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// A LUKS partition (the full-disk-encryption layout: ESP, /boot, LUKS root) is unlocked in
/// place: its device becomes the decrypted data and is probed again. The one key source is
/// tried on every encrypted partition.
fn unlock_volume(v: &mut Volume, keys: &KeySource) -> Result<()> {
    if v.probe.as_ref().map(|p| p.kind) != Some(FsKind::Luks) {
        return Ok(());
    }
    if let Some(h) =
        luks::read_header(v.device.as_ref()).map_err(|e| in_context(&v.describe(), e))?
    {
        v.device =
            luks::open_with(&v.device, &h, keys).map_err(|e| in_context(&v.describe(), e))?;
        probe_into(v);
    }
    Ok(())
}

fn probe_into(v: &mut Volume) {
    match probe::probe(v.device.as_ref()) {
        Ok(p) => v.probe = p,
        Err(e) => v.probe_error = Some(e.to_string()),
    }
}

/// Opens the filesystem on one volume, with errors that say which volume.
pub fn open_volume(v: &Volume, opts: &FsOptions) -> Result<Arc<dyn FileSystem>> {
    let what = v.describe();
    if v.container {
        return Err(Error::Invalid(format!(
            "{what} is an extended partition: it holds the logical partitions (5, 6, ...), not a filesystem"
        )));
    }
    if let (None, Some(why)) = (&v.probe, &v.probe_error) {
        return Err(Error::Io(std::io::Error::other(format!(
            "{what} could not be probed: {why}"
        ))));
    }
    let driver = choose_driver(&what, v.probe.as_ref(), opts.fs_type)?;
    open_driver(driver, v.device.clone(), opts).map_err(|e| in_context(&what, e))
}

/// Opens the filesystem the probe found (or the one `opts.fs_type` forces, which must agree
/// with the probe's family).
pub fn open_filesystem(
    dev: DeviceRef,
    probe: &Probe,
    opts: &FsOptions,
) -> Result<Arc<dyn FileSystem>> {
    let driver = choose_driver("the device", Some(probe), opts.fs_type)?;
    open_driver(driver, dev, opts)
}

/// The drivers imgmount has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Ext,
    Fat,
    Squashfs,
    Erofs,
    Iso9660,
}

fn driver_of_kind(kind: FsKind) -> Option<Driver> {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => Some(Driver::Ext),
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => Some(Driver::Fat),
        FsKind::Squashfs => Some(Driver::Squashfs),
        FsKind::Erofs => Some(Driver::Erofs),
        FsKind::Iso9660 => Some(Driver::Iso9660),
        _ => None,
    }
}

/// Which driver reads `what`: the probe's answer, or the forced type when it agrees with the
/// probe (or nothing was recognised: then that driver judges the superblock itself).
fn choose_driver(what: &str, probe: Option<&Probe>, forced: FsType) -> Result<Driver> {
    let forced_driver = match forced {
        FsType::Auto => None,
        FsType::Ext2 | FsType::Ext3 | FsType::Ext4 => Some(Driver::Ext),
        FsType::Fat => Some(Driver::Fat),
        FsType::Squashfs => Some(Driver::Squashfs),
        FsType::Erofs => Some(Driver::Erofs),
        FsType::Iso9660 => Some(Driver::Iso9660),
    };
    match (probe, forced_driver) {
        (None, None) => Err(Error::Invalid(format!(
            "{what} holds no filesystem imgmount recognises"
        ))),
        (None, Some(d)) => Ok(d),
        (Some(p), want) => match (driver_of_kind(p.kind), want) {
            (None, _) => Err(Error::Unsupported(format!(
                "{what} holds {}, which imgmount does not read",
                p.kind.name()
            ))),
            (Some(found), Some(want)) if found != want => Err(Error::Invalid(format!(
                "{what} holds {}, not {} (-t {})",
                p.kind.name(),
                forced.name(),
                forced.name()
            ))),
            (Some(found), _) => Ok(found),
        },
    }
}

/// Prefixes a message-carrying driver error with which volume it is about.
fn in_context(what: &str, e: Error) -> Error {
    match e {
        Error::Corrupt(s) => Error::Corrupt(format!("{what}: {s}")),
        Error::Unsupported(s) => Error::Unsupported(format!("{what}: {s}")),
        Error::Invalid(s) => Error::Invalid(format!("{what}: {s}")),
        other => other,
    }
}

fn open_driver(driver: Driver, dev: DeviceRef, opts: &FsOptions) -> Result<Arc<dyn FileSystem>> {
    match driver {
        Driver::Ext => {
            let ext_opts = ExtOptions {
                verify_checksums: opts.verify_checksums,
            };
            if opts.writable {
                return Ok(Arc::new(ExtFs::open_rw(dev, ext_opts)?));
            }
            Ok(Arc::new(ExtFs::open(dev, ext_opts)?))
        }
        Driver::Fat => {
            let fat_opts = FatOptions {
                writable: opts.writable,
                tz_offset_minutes: opts.fat_utc_offset_minutes.unwrap_or(0),
                discard: opts.discard,
                uid: opts.fat_owner.0,
                gid: opts.fat_owner.1,
                umask: opts.fat_umask,
            };
            Ok(Arc::new(FatFs::open(dev, fat_opts)?))
        }
        Driver::Squashfs => {
            if opts.writable {
                return Err(Error::Invalid(
                    "squashfs is read-only; mount without -o rw".into(),
                ));
            }
            Ok(Arc::new(SquashFs::open(dev, SquashOptions::default())?))
        }
        Driver::Erofs | Driver::Iso9660 if opts.writable => Err(Error::ReadOnly),
        Driver::Erofs => Ok(Arc::new(crate::erofs::ErofsFs::open(dev)?)),
        Driver::Iso9660 => Ok(Arc::new(crate::iso9660::IsoFs::open(dev)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDevice;

    const MIB: usize = 1 << 20;

    fn mbr_entry(disk: &mut [u8], slot: usize, kind: u8, start: u32, sectors: u32) {
        let e = 446 + 16 * slot;
        disk[e + 4] = kind;
        disk[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        disk[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
    }

    /// An ext2 superblock good enough for the probe, at `off`.
    fn ext2_at(disk: &mut [u8], off: usize, label: &str) {
        let sb = off + 1024;
        disk[sb + 56..sb + 58].copy_from_slice(&0xef53u16.to_le_bytes());
        disk[sb + 104..sb + 120].copy_from_slice(&[0x11; 16]);
        disk[sb + 120..sb + 120 + label.len()].copy_from_slice(label.as_bytes());
    }

    fn swap_at(disk: &mut [u8], off: usize) {
        disk[off + 4086..off + 4096].copy_from_slice(b"SWAPSPACE2");
    }

    /// 4 MiB MBR disk: p1 ext2 (1 MiB at 1 MiB), p2 swap (1 MiB at 2 MiB), p3 zeros.
    fn mbr_disk() -> Vec<u8> {
        let mut d = vec![0u8; 4 * MIB];
        mbr_entry(&mut d, 0, 0x83, 2048, 2048);
        mbr_entry(&mut d, 1, 0x82, 4096, 2048);
        mbr_entry(&mut d, 2, 0x83, 6144, 2048);
        d[440..444].copy_from_slice(&0x1a2b_3c4du32.to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xaa;
        ext2_at(&mut d, MIB, "first");
        swap_at(&mut d, 2 * MIB);
        d
    }

    fn image(data: Vec<u8>) -> Result<Image> {
        Image::from_device(
            Arc::new(MemDevice::read_only(data)),
            1 << 20,
            Timespec::default(),
        )
    }

    fn err_text<T>(r: Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn lists_partitions_with_probes() {
        let img = image(mbr_disk()).unwrap();
        assert_eq!(img.table().scheme, Scheme::Mbr);
        let v = img.volumes();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].index, Some(1));
        assert_eq!(v[0].start, MIB as u64);
        assert_eq!(v[0].size, MIB as u64);
        assert_eq!(v[0].device.size(), MIB as u64);
        let p = v[0].probe.as_ref().unwrap();
        assert_eq!(p.kind, FsKind::Ext2);
        assert_eq!(p.label.as_deref(), Some("first"));
        assert_eq!(v[1].probe.as_ref().unwrap().kind, FsKind::Swap);
        assert!(v[2].probe.is_none());
        // The slice reads the partition's bytes, not the disk's.
        let mut magic = [0u8; 2];
        v[0].device.read_at(1024 + 56, &mut magic).unwrap();
        assert_eq!(magic, [0x53, 0xef]);
        assert!(img.truncation().is_none());
        assert!(img.cache_stats().is_some());
        assert_eq!(img.disk_id().unwrap().as_deref(), Some("0x1a2b3c4d"));
    }

    #[test]
    fn missing_partition_names_the_existing_ones() {
        let img = image(mbr_disk()).unwrap();
        let e = err_text(img.open_fs(Some(Selection::Index(7)), &FsOptions::default()));
        assert!(
            e.contains("no partition 7 (the disk has partitions 1, 2, 3)"),
            "{e}"
        );
    }

    #[test]
    fn foreign_and_empty_partitions_say_why() {
        let img = image(mbr_disk()).unwrap();
        let opts = FsOptions::default();
        let e = err_text(img.open_fs(Some(Selection::Index(2)), &opts));
        assert!(
            e.contains("partition 2 holds swap, which imgmount does not read"),
            "{e}"
        );
        let e = err_text(img.open_fs(Some(Selection::Index(3)), &opts));
        assert!(
            e.contains("partition 3 holds no filesystem imgmount recognises"),
            "{e}"
        );
        let forced = FsOptions {
            fs_type: FsType::Fat,
            ..FsOptions::default()
        };
        let e = err_text(img.open_fs(Some(Selection::Index(1)), &forced));
        assert!(
            e.contains("partition 1 holds ext2, not fat (-t fat)"),
            "{e}"
        );
    }

    #[test]
    fn whole_disk_is_a_tree_of_partitions_even_when_some_fail() {
        let img = image(mbr_disk()).unwrap();
        let (fs, warnings) = img.open_fs_warned(None, &FsOptions::default()).unwrap();
        let mut names = Vec::new();
        fs.readdir(fs.root(), 0, &mut |e| {
            names.push(String::from_utf8(e.name).unwrap());
            true
        })
        .unwrap();
        assert_eq!(names, ["p1", "p2", "p3"]);
        assert!(warnings
            .iter()
            .any(|w| w.starts_with("p2 is empty: partition 2 holds swap")));
        assert!(warnings
            .iter()
            .any(|w| w.starts_with("p3 is empty: partition 3 holds no filesystem")));
        let same = img
            .open_fs_warned(Some(Selection::All), &FsOptions::default())
            .unwrap();
        assert_eq!(same.1, warnings);
    }

    #[test]
    fn extended_container_is_listed_but_not_opened() {
        let mut d = vec![0u8; 4 * MIB];
        mbr_entry(&mut d, 0, 0x83, 2048, 2048);
        mbr_entry(&mut d, 1, 0x05, 4096, 4096);
        d[510] = 0x55;
        d[511] = 0xaa;
        ext2_at(&mut d, MIB, "first");
        // The extended partition's first EBR: one logical partition 1 MiB into it.
        let ebr = 4096 * 512;
        mbr_entry(&mut d[ebr..], 0, 0x83, 2048, 2048);
        d[ebr + 510] = 0x55;
        d[ebr + 511] = 0xaa;
        ext2_at(&mut d, 3 * MIB, "logical");
        let img = image(d).unwrap();
        let idx: Vec<_> = img
            .volumes()
            .iter()
            .map(|v| (v.index, v.container))
            .collect();
        assert_eq!(idx, [(Some(1), false), (Some(2), true), (Some(5), false)]);
        assert!(img.volumes()[1].probe.is_none());
        assert_eq!(
            img.volumes()[2].probe.as_ref().unwrap().label.as_deref(),
            Some("logical")
        );
        let e = err_text(img.open_fs(Some(Selection::Index(2)), &FsOptions::default()));
        assert!(e.contains("partition 2 is an extended partition"), "{e}");
        let (fs, _) = img.open_fs_warned(None, &FsOptions::default()).unwrap();
        let mut names = Vec::new();
        fs.readdir(fs.root(), 0, &mut |e| {
            names.push(String::from_utf8(e.name).unwrap());
            true
        })
        .unwrap();
        assert_eq!(names, ["p1", "p5"]);
    }

    #[test]
    fn bare_filesystem_is_one_volume() {
        let mut d = vec![0u8; MIB];
        ext2_at(&mut d, 0, "bare");
        let img = image(d).unwrap();
        assert_eq!(img.table().scheme, Scheme::None);
        assert_eq!(img.volumes().len(), 1);
        let v = &img.volumes()[0];
        assert_eq!((v.index, v.start, v.size), (None, 0, MIB as u64));
        let e = err_text(img.open_fs(Some(Selection::Index(1)), &FsOptions::default()));
        assert!(
            e.contains(
                "no partition 1: the image has no partition table (it is a bare ext2 filesystem"
            ),
            "{e}"
        );
    }

    fn unrecognised(data: Vec<u8>) -> String {
        let img = image(data).unwrap();
        let e = err_text(img.check_recognised());
        let same = err_text(img.open_fs(None, &FsOptions::default()));
        assert_eq!(e, same);
        // A forced type reaches the driver, which judges the superblock itself.
        let forced = FsOptions {
            fs_type: FsType::Ext4,
            ..FsOptions::default()
        };
        let driver = err_text(img.open_fs(None, &forced));
        assert_ne!(driver, e);
        e
    }

    #[test]
    fn not_an_image() {
        let e = err_text(image(Vec::new()));
        assert!(e.contains("empty"), "{e}");
        // Deterministic noise (an LCG), no table, no superblock.
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..MIB)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let e = unrecognised(noise);
        assert!(e.contains("no partition table and no filesystem"), "{e}");
        let e = unrecognised(vec![0u8; 100]);
        assert!(e.contains("no partition table and no filesystem"), "{e}");
    }

    #[test]
    fn truncated_disk_is_reported() {
        let mut d = mbr_disk();
        d.truncate(2 * MIB + 4096 * 2);
        let img = image(d).unwrap();
        let idx: Vec<_> = img.volumes().iter().map(|v| v.index).collect();
        assert_eq!(idx, [Some(1)]);
        assert!(img.truncation().is_some());
    }
}
