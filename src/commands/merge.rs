//! `imgmount merge IMAGE STORE`: writes a copy-on-write store's chunks into its image, then
//! empties the store (dm's snapshot-merge). The order that makes it crash-safe and resumable
//! is fs_drivers::cow::merge's; here are the locks that keep everyone else out meanwhile.

use crate::cli::MergeArgs;
use crate::report::{CmdResult, Failure};
use fs_drivers::block::{DeviceRef, FileDevice};
use fs_drivers::container::{self, PeelContext};
use fs_drivers::cow::{self, MergeProgress};
use fs_drivers::vfs::Timespec;
use nix::fcntl::FlockArg;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

struct Bar;

impl MergeProgress for Bar {
    fn advance(&self, done: u64, total: u64) {
        let mut e = std::io::stderr();
        let _ = write!(e, "\rimgmount: merging: {done}/{total} chunks");
        if done == total {
            let _ = writeln!(e);
        }
    }
}

fn mtime_of(path: &Path) -> fs_drivers::Result<Timespec> {
    let m = std::fs::metadata(path)?.modified()?;
    let d = m.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(Timespec::new(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        d.subsec_nanos(),
    ))
}

pub fn run(args: &MergeArgs) -> CmdResult {
    let image = &args.image;
    let store = &args.store;
    let img_fail = |e: &fs_drivers::Error| Failure::new(image.display(), e);
    match std::fs::metadata(store) {
        Ok(m) if m.is_file() && m.len() > 0 => {}
        Ok(m) if m.is_file() => {
            return Err(Failure::msg(format!(
                "{}: an empty file, not a COW store",
                store.display()
            )))
        }
        _ => {
            return Err(Failure::msg(format!(
                "{}: no such COW store file",
                store.display()
            )))
        }
    }
    let dev = FileDevice::open(image, true).map_err(|e| img_fail(&e))?;
    let file = dev.file().try_clone().map_err(|e| img_fail(&e.into()))?;
    match cow::lock_file(file, FlockArg::LockExclusiveNonblock) {
        Ok(_) => {}
        Err(nix::errno::Errno::EWOULDBLOCK) => {
            return Err(Failure::msg(format!(
                "{}: the image is in use (mounted or read); unmount it first",
                image.display()
            )))
        }
        Err(e) => return Err(img_fail(&fs_drivers::Error::Io(e.into()))),
    }
    let raw: DeviceRef = Arc::new(dev);
    let ctx = PeelContext {
        path: Some(image.clone()),
        ..PeelContext::default()
    };
    let (_, layers) = container::peel(raw.clone(), &ctx).map_err(|e| img_fail(&e))?;
    if let Some(l) = layers.first() {
        return Err(Failure::msg(format!(
            "{}: merging into a {} image is not supported (only raw images)",
            image.display(),
            l.format
        )));
    }
    let store_file = cow::open_store_file(store).map_err(|e| Failure::new(image.display(), &e))?;
    let store_fail = |e: &fs_drivers::Error| Failure::new(store.display(), e);
    let mut opened = cow::open_for_merge(store_file, store).map_err(|e| store_fail(&e))?;
    let bar = Bar;
    let progress: Option<&dyn MergeProgress> = if std::io::stderr().is_terminal() {
        Some(&bar)
    } else {
        None
    };
    let report = cow::merge(raw.as_ref(), opened.as_mut(), &|| mtime_of(image), progress)
        .map_err(|e| store_fail(&e))?;
    if report.unchecked {
        eprintln!(
            "imgmount: warning: {}: the store did not record its image (written by the kernel or qemu-img?); merged without checking it belongs to {}",
            store.display(),
            image.display()
        );
    }
    println!(
        "{}: merged {} {} into {}{}",
        store.display(),
        report.chunks,
        // qemu's word for a qcow2 store's chunks.
        if cow::is_qcow2_name(store) {
            "clusters"
        } else {
            "chunks"
        },
        image.display(),
        if report.resumed {
            " (finishing an interrupted merge)"
        } else {
            ""
        }
    );
    Ok(())
}
