//! Real damaged images (../shared/corpus: e2fsprogs' and dosfstools' fsck test images) opened
//! the way the front ends open them — `disk::Image` (partition table, probe) and `open_fs`
//! (the driver) — then walked and read. Each image either opens and walks (broken objects
//! answer errors) or is refused with one line; never a panic, never more than a few seconds.
//! (ext_corpus.rs walks the e2fsprogs images through `ExtFs::open` directly; this is the
//! probe + driver path, and the FAT images.)

mod support;

use fs_drivers::disk::{FsOptions, Image};
use fs_drivers::vfs::{FileSystem, FileType};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous for a debug build on a loaded 2-core machine (the slowest image, f_many_subdirs,
/// takes 1-4 s there); a loop over on-disk links that is
/// not bounded blows through it.
const MAX_PER_IMAGE: Duration = Duration::from_secs(30);

#[derive(Default, Debug)]
struct Walked {
    nodes: usize,
    files_read: usize,
    errors: usize,
}

/// Everything reachable, every regular file read to its end (bounded: corpus images are small,
/// so a file larger than the image is read only as far as 4 MiB).
fn walk(fs: &dyn FileSystem) -> Walked {
    let mut w = Walked::default();
    let mut stack = vec![fs.root()];
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 64 << 10];
    while let Some(ino) = stack.pop() {
        if seen.len() >= 50_000 || !seen.insert(ino) {
            continue;
        }
        let attr = match fs.getattr(ino) {
            Ok(a) => a,
            Err(e) => {
                check_error(&e);
                w.errors += 1;
                continue;
            }
        };
        w.nodes += 1;
        match attr.kind {
            FileType::Directory => {
                let mut kids = Vec::new();
                if let Err(e) = fs.readdir(ino, 0, &mut |e| {
                    kids.push(e.ino);
                    kids.len() < 50_000
                }) {
                    check_error(&e);
                    w.errors += 1;
                }
                stack.extend(kids);
            }
            FileType::Regular => {
                let mut off = 0;
                loop {
                    if off >= attr.size.min(4 << 20) {
                        w.files_read += 1;
                        break;
                    }
                    match fs.read(ino, off, &mut buf) {
                        Ok(0) => {
                            w.files_read += 1;
                            break;
                        }
                        Ok(n) => off += n as u64,
                        Err(e) => {
                            check_error(&e);
                            w.errors += 1;
                            break;
                        }
                    }
                }
            }
            FileType::Symlink => {
                if let Err(e) = fs.readlink(ino) {
                    check_error(&e);
                    w.errors += 1;
                }
            }
            _ => {}
        }
    }
    w
}

/// A broken object must surface as an errno a program understands, with a message.
fn check_error(e: &fs_drivers::Error) {
    let errno = e.errno();
    assert!(errno > 0, "{e:?} maps to errno {errno}");
    assert!(!e.to_string().is_empty());
}

enum Outcome {
    Opened(Walked),
    Refused(String),
}

fn open_and_walk(path: &Path) -> Outcome {
    let img = match Image::open(path, false, 4 << 20) {
        Ok(i) => i,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    match img.open_fs(None, &FsOptions::default()) {
        Ok(fs) => Outcome::Opened(walk(fs.as_ref())),
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

fn run_corpus(sub: &str) -> Option<(usize, usize, usize)> {
    let paths = support::corpus_images(sub)?;
    let (mut opened, mut refused, mut files) = (0, 0, 0);
    let mut reasons = BTreeMap::new();
    let mut slowest = (Duration::ZERO, String::new());
    for p in &paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let path = support::inflated(p);
        let (tx, rx) = mpsc::channel();
        let t = Instant::now();
        // A thread per image so a hang is reported by name instead of stalling the suite.
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(move || open_and_walk(&path));
            let _ = tx.send(r.map_err(|_| ()));
        });
        match rx.recv_timeout(MAX_PER_IMAGE) {
            Ok(Ok(Outcome::Opened(w))) => {
                opened += 1;
                files += w.files_read;
            }
            Ok(Ok(Outcome::Refused(why))) => {
                assert!(!why.is_empty() && !why.contains('\n'), "{name}: {why:?}");
                refused += 1;
                *reasons
                    .entry(why.chars().take(70).collect::<String>())
                    .or_insert(0) += 1;
            }
            Ok(Err(())) => panic!("{name}: panicked"),
            Err(_) => panic!("{name}: still running after {MAX_PER_IMAGE:?}"),
        }
        if t.elapsed() > slowest.0 {
            slowest = (t.elapsed(), name);
        }
    }
    eprintln!(
        "{sub}: {} images, {opened} opened ({files} files read to the end), {refused} refused; slowest {} {:?}",
        paths.len(),
        slowest.1,
        slowest.0
    );
    for (r, n) in &reasons {
        eprintln!("  {n:3} × {r}");
    }
    Some((paths.len(), opened, refused))
}

#[test]
fn dosfstools_images_open_or_refuse_cleanly() {
    let Some((n, opened, _)) = run_corpus("dosfstools") else {
        return;
    };
    // Nearly all of these are damaged in one place only: the volume itself opens.
    assert!(opened * 2 > n, "only {opened} of {n} opened");
}

#[test]
fn e2fsprogs_images_open_or_refuse_cleanly() {
    let Some((n, opened, _)) = run_corpus("e2fsprogs") else {
        return;
    };
    assert!(opened * 2 > n, "only {opened} of {n} opened");
}
