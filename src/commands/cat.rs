//! `imgmount cat`: stream files from an image to standard output.

use super::source;
use super::walk::{self, show, why};
use crate::cli::CatArgs;
use fs_drivers::vfs::{FileSystem, FileType};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;

/// Bytes asked of the filesystem per read: large, so drivers can read whole extents at once.
const CHUNK: usize = 1 << 20;

pub fn run(args: &CatArgs) -> i32 {
    // One process, no fork: sequential reads of a compressed image may decode ahead.
    fs_drivers::container::compressed::allow_read_ahead(true);
    let fs = match source::open(
        "cat",
        &args.image,
        args.partition,
        args.open.offset,
        args.cow.as_deref(),
    ) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("imgmount: cat: {e}");
            return 1;
        }
    };
    let mut out = io::stdout().lock();
    let mut warn = |msg: String| eprintln!("imgmount: cat: {msg}");
    let paths: Vec<&[u8]> = args.paths.iter().map(|p| p.as_bytes()).collect();
    match cat(&*fs, &paths, &mut out, &mut warn).and_then(|ok| {
        out.flush()?;
        Ok(ok)
    }) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => super::die_of_sigpipe(),
        Err(e) => {
            eprintln!("imgmount: cat: standard output: {e}");
            1
        }
    }
}

/// Writes each path's contents to `out` in order. A path that cannot be read is reported to
/// `warn` and skipped (the result becomes `Ok(false)`); `Err` is a failed write to `out`.
pub fn cat(
    fs: &dyn FileSystem,
    paths: &[&[u8]],
    out: &mut dyn Write,
    warn: &mut dyn FnMut(String),
) -> io::Result<bool> {
    let mut ok = true;
    let mut buf = vec![0u8; CHUNK];
    for &path in paths {
        let r = match walk::resolve(fs, path, true) {
            Ok(r) => r,
            Err(e) => {
                warn(format!("{}: {}", show(path), why(&e)));
                ok = false;
                continue;
            }
        };
        match r.attr.kind {
            FileType::Regular => {}
            FileType::Directory => {
                warn(format!("{}: is a directory", show(path)));
                ok = false;
                continue;
            }
            _ => {
                warn(format!(
                    "{}: not a regular file (a {} in the image)",
                    show(path),
                    super::json::type_name(r.attr.kind)
                ));
                ok = false;
                continue;
            }
        }
        let size = r.attr.size;
        let mut off = 0u64;
        while off < size {
            let want = usize::try_from(size - off).unwrap_or(usize::MAX).min(CHUNK);
            match fs.read(r.ino, off, &mut buf[..want]) {
                Ok(0) => {
                    warn(format!(
                        "{}: file ends at byte {off} of {size} (corrupt image?)",
                        show(path)
                    ));
                    ok = false;
                    break;
                }
                Ok(n) => {
                    // A driver returning more than asked would be a bug; never trust it.
                    let n = n.min(want);
                    out.write_all(&buf[..n])?;
                    off += n as u64;
                }
                Err(e) => {
                    warn(format!("{}: read at byte {off}: {}", show(path), why(&e)));
                    ok = false;
                    break;
                }
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::testfs::MemFs;

    #[test]
    fn streams_files_and_reports_dirs() {
        let mut m = MemFs::new();
        let r = m.root_ino();
        let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 7 % 251) as u8).collect();
        m.file(r, b"big", &big, 0o644);
        m.file(r, b"small", b"hello\n", 0o644);
        m.dir(r, b"d", 0o755);
        m.symlink(r, b"s", b"small");
        let fs = m.build();
        let mut out = Vec::new();
        let mut w = Vec::new();
        let ok = cat(&fs, &[b"/big", b"d", b"/s", b"/none"], &mut out, &mut |m| {
            w.push(m)
        })
        .unwrap();
        assert!(!ok);
        let mut want = big.clone();
        want.extend_from_slice(b"hello\n");
        assert!(out == want, "contents differ");
        assert_eq!(
            w,
            vec![
                "d: is a directory".to_string(),
                "/none: no such file or directory".to_string()
            ]
        );
    }

    #[test]
    fn write_errors_propagate() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut m = MemFs::new();
        let r = m.root_ino();
        m.file(r, b"f", b"data", 0o644);
        let fs = m.build();
        let e = cat(&fs, &[b"/f"], &mut Broken, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
