//! `imgmount extract`: copy a file or tree out of an image, like `cp -a` / `tar x`.
//!
//! The image is untrusted. Every host file is created relative to a directory fd we hold
//! (`openat`/`mkdirat`/`symlinkat`/`mknodat`/`linkat`), new files with O_EXCL and O_NOFOLLOW,
//! directories entered with O_DIRECTORY|O_NOFOLLOW, so a symlink extracted earlier can never
//! redirect a later write; names that are not a single path component are refused. Nothing is
//! allocated by an on-disk size: file data is streamed through one fixed buffer.

use super::progress::Progress;
use super::walk::{self, bad_name, child_path, show, why};
use super::{hostxattr, source};
use crate::cli::ExtractArgs;
use fs_drivers::vfs::{Attr, FileSystem, FileType, Ino, Timespec};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, umask, utimensat, FchmodatFlags, Mode,
    SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::HashMap;
use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes asked of the filesystem per read.
const CHUNK: usize = 1 << 20;
/// All-zero runs of this size (aligned in the file) become holes instead of writes.
const HOLE: usize = 64 << 10;
/// Stack for the recursive walk: walk::MAX_DEPTH levels of a few KiB each, with room to spare.
const WALK_STACK: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct ExtractOpts {
    /// Give files the image's owners (root only, and not with --no-same-owner).
    pub same_owner: bool,
    pub xattrs: bool,
    pub overwrite: bool,
    /// Create device nodes (needs CAP_MKNOD; refused with a warning otherwise).
    pub devices: bool,
    pub progress: bool,
}

pub fn run(args: &ExtractArgs) -> i32 {
    // One process, no fork: sequential reads of a compressed image may decode ahead.
    fs_drivers::container::compressed::allow_read_ahead(true);
    let fs = match source::open(
        "extract",
        &args.image,
        args.partition,
        args.open.offset,
        args.cow.as_deref(),
    ) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("imgmount: extract: {e}");
            return 1;
        }
    };
    let (path, dest) = match &args.dest {
        None => (&b"/"[..], &args.path),
        Some(dest) => (args.path.as_bytes(), dest),
    };
    let root = nix::unistd::geteuid().is_root();
    let opts = ExtractOpts {
        same_owner: root && !args.no_same_owner,
        xattrs: args.xattrs,
        overwrite: args.overwrite,
        devices: root,
        progress: std::io::stderr().is_terminal(),
    };
    let mut warn = |msg: String| eprintln!("imgmount: extract: {msg}");
    if extract(&*fs, path, Path::new(dest), &opts, &mut warn) {
        0
    } else {
        1
    }
}

/// Extracts `path` from the image to `dest`. Every problem goes to `warn` as one line
/// ("<path>: <why>"); the rest is still done. Returns whether there was no problem.
pub fn extract(
    fs: &dyn FileSystem,
    path: &[u8],
    dest: &Path,
    opts: &ExtractOpts,
    warn: &mut (dyn FnMut(String) + Send),
) -> bool {
    // The walk recurses once per directory level (up to walk::MAX_DEPTH); give it a stack
    // that surely holds that (only reserved address space until used).
    let w = &mut *warn;
    let res = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("extract".into())
            .stack_size(WALK_STACK)
            .spawn_scoped(s, move || extract_here(fs, path, dest, opts, w))
            .map(|h| h.join())
    });
    match res {
        Ok(Ok(ok)) => ok,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => {
            warn(format!("cannot start the extraction thread: {e}"));
            false
        }
    }
}

fn extract_here(
    fs: &dyn FileSystem,
    path: &[u8],
    dest: &Path,
    opts: &ExtractOpts,
    warn: &mut dyn FnMut(String),
) -> bool {
    // Modes are set explicitly; the umask must not take bits off what we create meanwhile.
    umask(Mode::empty());
    let mut x = Extractor {
        fs,
        opts,
        warn,
        ok: true,
        links: HashMap::new(),
        buf: vec![0u8; CHUNK],
        progress: Progress::new(opts.progress),
        euid: nix::unistd::geteuid().as_raw(),
        egid: nix::unistd::getegid().as_raw(),
    };
    x.top(path, dest);
    x.progress.finish();
    x.ok
}

struct Extractor<'a> {
    fs: &'a dyn FileSystem,
    opts: &'a ExtractOpts,
    warn: &'a mut dyn FnMut(String),
    ok: bool,
    /// Files with nlink > 1 already extracted: inode -> (parent directories below the top
    /// directory fd, name), to recreate later names as hard links.
    links: HashMap<Ino, (Vec<Vec<u8>>, Vec<u8>)>,
    buf: Vec<u8>,
    progress: Progress,
    euid: u32,
    egid: u32,
}

fn ts(t: Timespec) -> TimeSpec {
    TimeSpec::new(t.sec as libc::time_t, i64::from(t.nsec) as _)
}

/// A host I/O error's text without the "(os error N)" tail, as every other message.
fn io_why(e: std::io::Error) -> String {
    crate::report::describe(&fs_drivers::Error::Io(e))
}

fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.split_at(b.len() / 8 * 8);
    words
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && rest.iter().all(|&x| x == 0)
}

impl Extractor<'_> {
    /// Opens a directory the user named on the host (it may be a symlink to one); a failure
    /// is reported and gives None.
    fn open_host_dir(&mut self, path: &Path) -> Option<OwnedFd> {
        match openat(
            AT_FDCWD,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(e) => {
                self.problem(format!("{}: {}", path.display(), e.desc()));
                None
            }
        }
    }

    fn problem(&mut self, msg: String) {
        let warn = &mut self.warn;
        self.progress.suspend(|| warn(msg));
        self.ok = false;
    }

    fn top(&mut self, path: &[u8], dest: &Path) {
        let start = match walk::resolve(self.fs, path, false) {
            Ok(r) => r,
            Err(e) => return self.problem(format!("{}: {}", show(path), why(&e))),
        };
        let dest_dir = std::fs::metadata(dest).map(|m| m.is_dir()).unwrap_or(false);
        if start.attr.kind == FileType::Directory {
            let created = !dest.exists();
            if created {
                if let Err(e) = std::fs::create_dir_all(dest) {
                    return self.problem(format!("{}: {}", dest.display(), io_why(e)));
                }
            } else if !dest_dir {
                return self.problem(format!("{}: exists and is not a directory", dest.display()));
            }
            // DEST itself is the user's own path and may be a symlink to a directory.
            let Some(fd) = self.open_host_dir(dest) else {
                return;
            };
            let mut rel = Vec::new();
            let mut stack = vec![start.ino];
            self.fill_dir(
                fd.as_fd(),
                fd.as_fd(),
                start.ino,
                &start.path,
                &mut rel,
                &mut stack,
            );
            if created {
                self.meta_fd(fd.as_fd(), &start.attr, &start.path);
            }
            return;
        }
        // A single non-directory: into DEST when it is a directory, else as DEST.
        let (dir, name): (&Path, Vec<u8>) = if dest_dir {
            (dest, start.name.clone())
        } else {
            use std::os::unix::ffi::OsStrExt;
            match dest.file_name() {
                Some(n) => (
                    dest.parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new(".")),
                    n.as_bytes().to_vec(),
                ),
                None => {
                    return self.problem(format!("{}: not a file name", dest.display()));
                }
            }
        };
        let Some(fd) = self.open_host_dir(dir) else {
            return;
        };
        let mut stack = Vec::new();
        self.entry(
            fd.as_fd(),
            fd.as_fd(),
            &name,
            &start.attr,
            &start.path,
            &mut Vec::new(),
            &mut stack,
        );
    }

    /// Extracts the entries of image directory `ino` into the host directory `fd`.
    /// `rel` is `fd`'s path below `top` (for hard links); `stack` the image directories being
    /// extracted, to refuse cycles.
    fn fill_dir(
        &mut self,
        top: BorrowedFd<'_>,
        fd: BorrowedFd<'_>,
        ino: Ino,
        ipath: &[u8],
        rel: &mut Vec<Vec<u8>>,
        stack: &mut Vec<Ino>,
    ) {
        let entries = match walk::list_dir(self.fs, ino) {
            Ok(e) => e,
            Err(e) => return self.problem(format!("{}: {}", show(ipath), why(&e))),
        };
        for e in entries {
            if let Some(reason) = bad_name(&e.name) {
                self.problem(format!(
                    "{}: entry \"{}\" refused: {reason}",
                    show(ipath),
                    show(&e.name)
                ));
                continue;
            }
            let child = child_path(ipath, &e.name);
            let attr = match self.fs.getattr(e.ino) {
                Ok(a) => a,
                Err(err) => {
                    self.problem(format!("{}: {}", show(&child), why(&err)));
                    continue;
                }
            };
            if attr.kind == FileType::Directory {
                if stack.contains(&attr.ino) {
                    self.problem(format!(
                        "{}: refused: directory cycle (inode {})",
                        show(&child),
                        attr.ino
                    ));
                    continue;
                }
                if stack.len() >= walk::MAX_DEPTH {
                    self.problem(format!(
                        "{}: refused: deeper than {} levels",
                        show(&child),
                        walk::MAX_DEPTH
                    ));
                    continue;
                }
            }
            self.entry(top, fd, &e.name, &attr, &child, rel, stack);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        top: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &[u8],
        attr: &Attr,
        ipath: &[u8],
        rel: &mut Vec<Vec<u8>>,
        stack: &mut Vec<Ino>,
    ) {
        self.progress.file();
        if attr.kind == FileType::Directory {
            return self.directory(top, dir, name, attr, ipath, rel, stack);
        }
        // Any non-directory can have several names (cp -a keeps them all as links).
        let linked = attr.nlink > 1;
        if linked {
            if let Some((orel, oname)) = self.links.get(&attr.ino).cloned() {
                return self.hard_link(top, dir, name, ipath, &orel, &oname);
            }
        }
        let made = match attr.kind {
            FileType::Regular => self.regular(dir, name, attr, ipath),
            FileType::Symlink => self.symlink(dir, name, attr, ipath),
            FileType::CharDevice | FileType::BlockDevice if !self.opts.devices => {
                self.problem(format!(
                    "{}: device node not created (needs root)",
                    show(ipath)
                ));
                false
            }
            _ => self.node(dir, name, attr, ipath),
        };
        if made && linked {
            self.links.insert(attr.ino, (rel.clone(), name.to_vec()));
        }
    }

    /// Runs `create`; when the name exists, replaces a non-directory only with --overwrite.
    fn create<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        ipath: &[u8],
        mut create: impl FnMut() -> nix::Result<T>,
    ) -> Option<T> {
        match create() {
            Ok(t) => return Some(t),
            Err(Errno::EEXIST) => {}
            Err(e) => {
                self.problem(format!("{}: cannot create: {}", show(ipath), e.desc()));
                return None;
            }
        }
        let existing = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        match existing {
            Ok(true) => {
                self.problem(format!(
                    "{}: a directory of that name exists; not replaced",
                    show(ipath)
                ));
                return None;
            }
            Ok(false) if !self.opts.overwrite => {
                self.problem(format!(
                    "{}: already exists (use --overwrite to replace it)",
                    show(ipath)
                ));
                return None;
            }
            _ => {}
        }
        if let Err(e) = unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            self.problem(format!("{}: cannot replace: {}", show(ipath), e.desc()));
            return None;
        }
        match create() {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(format!("{}: cannot create: {}", show(ipath), e.desc()));
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn directory(
        &mut self,
        top: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &[u8],
        attr: &Attr,
        ipath: &[u8],
        rel: &mut Vec<Vec<u8>>,
        stack: &mut Vec<Ino>,
    ) {
        // Owner-only until its contents are in; the real mode comes last (it may lack 'w').
        match mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let is_dir = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                    .unwrap_or(false);
                if !is_dir {
                    if !self.opts.overwrite {
                        return self.problem(format!(
                            "{}: exists and is not a directory (use --overwrite to replace it)",
                            show(ipath)
                        ));
                    }
                    let r = unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                        .and_then(|()| mkdirat(dir, name, Mode::from_bits_truncate(0o700)));
                    if let Err(e) = r {
                        return self.problem(format!(
                            "{}: cannot replace: {}",
                            show(ipath),
                            e.desc()
                        ));
                    }
                }
                // An existing directory: merge into it.
            }
            Err(e) => {
                return self.problem(format!("{}: cannot create: {}", show(ipath), e.desc()));
            }
        }
        let fd = match openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => return self.problem(format!("{}: cannot open: {}", show(ipath), e.desc())),
        };
        rel.push(name.to_vec());
        stack.push(attr.ino);
        self.fill_dir(top, fd.as_fd(), attr.ino, ipath, rel, stack);
        stack.pop();
        rel.pop();
        // After the contents, so creating them does not change its times afterwards.
        self.meta_fd(fd.as_fd(), attr, ipath);
    }

    /// Creates and fills one regular file; returns whether it now exists.
    fn regular(&mut self, dir: BorrowedFd<'_>, name: &[u8], attr: &Attr, ipath: &[u8]) -> bool {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let Some(fd) = self.create(dir, name, ipath, || {
            openat(dir, name, flags, Mode::from_bits_truncate(0o600))
        }) else {
            return false;
        };
        let file = File::from(fd);
        self.copy_data(&file, attr, ipath);
        self.meta_fd(file.as_fd(), attr, ipath);
        true
    }

    /// Streams the file's data; the length is set first and all-zero runs are skipped, left
    /// as holes, so sparse files stay sparse.
    fn copy_data(&mut self, file: &File, attr: &Attr, ipath: &[u8]) {
        let size = attr.size;
        // Setting the length first refuses, before any reading, a size the host cannot hold
        // (a corrupt inode claiming exabytes).
        if let Err(e) = file.set_len(size) {
            self.problem(format!(
                "{}: cannot set length {size}: {}",
                show(ipath),
                io_why(e)
            ));
            return;
        }
        let mut off = 0u64;
        while off < size {
            let want = usize::try_from(size - off).unwrap_or(usize::MAX).min(CHUNK);
            let n = match self.fs.read(attr.ino, off, &mut self.buf[..want]) {
                Ok(0) => {
                    self.problem(format!(
                        "{}: file ends at byte {off} of {size} (corrupt image?)",
                        show(ipath)
                    ));
                    break;
                }
                Ok(n) => n.min(want),
                Err(e) => {
                    self.problem(format!("{}: read at byte {off}: {}", show(ipath), why(&e)));
                    break;
                }
            };
            let mut failed = None;
            for (i, chunk) in self.buf[..n].chunks(HOLE).enumerate() {
                if is_zero(chunk) {
                    continue;
                }
                let at = off + (i * HOLE) as u64;
                if let Err(e) = file.write_all_at(chunk, at) {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                self.problem(format!("{}: write: {}", show(ipath), io_why(e)));
                return;
            }
            off += n as u64;
            self.progress.bytes(n as u64);
        }
    }

    fn hard_link(
        &mut self,
        top: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &[u8],
        ipath: &[u8],
        orel: &[Vec<u8>],
        oname: &[u8],
    ) {
        // Reopen the first name's directory component by component from the top fd, never
        // following a symlink, then link without following the old name either.
        let mut held: Option<OwnedFd> = None;
        for c in orel {
            let at = held.as_ref().map_or(top, |f| f.as_fd());
            match openat(
                at,
                c.as_slice(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => held = Some(fd),
                Err(e) => {
                    return self.problem(format!(
                        "{}: cannot reach the first name of this hard link: {}",
                        show(ipath),
                        e.desc()
                    ))
                }
            }
        }
        let odir = held.as_ref().map_or(top, |f| f.as_fd());
        self.create(dir, name, ipath, || {
            linkat(odir, oname, dir, name, AtFlags::empty())
        });
    }

    fn symlink(&mut self, dir: BorrowedFd<'_>, name: &[u8], attr: &Attr, ipath: &[u8]) -> bool {
        let target = match self.fs.readlink(attr.ino) {
            Ok(t) => t,
            Err(e) => {
                self.problem(format!("{}: cannot read link: {}", show(ipath), why(&e)));
                return false;
            }
        };
        if target.is_empty() || target.contains(&0) {
            self.problem(format!(
                "{}: refused: symlink target is empty or contains NUL",
                show(ipath)
            ));
            return false;
        }
        let made = self
            .create(dir, name, ipath, || symlinkat(target.as_slice(), dir, name))
            .is_some();
        if made {
            self.meta_at(dir, name, attr, ipath, true);
        }
        made
    }

    fn node(&mut self, dir: BorrowedFd<'_>, name: &[u8], attr: &Attr, ipath: &[u8]) -> bool {
        let (kind, rdev) = match attr.kind {
            FileType::CharDevice => (SFlag::S_IFCHR, attr.rdev),
            FileType::BlockDevice => (SFlag::S_IFBLK, attr.rdev),
            FileType::Fifo => (SFlag::S_IFIFO, 0),
            _ => (SFlag::S_IFSOCK, 0),
        };
        let made = self.create(dir, name, ipath, || {
            mknodat(
                dir,
                name,
                kind,
                Mode::from_bits_truncate(0o600),
                rdev as libc::dev_t,
            )
        });
        if made.is_some() {
            self.meta_at(dir, name, attr, ipath, false);
        }
        made.is_some()
    }

    /// The mode to give a file: the image's, except that setuid/setgid are dropped when the
    /// file does not end up with the image's owner/group (as `cp -a` does).
    fn final_perm(&self, attr: &Attr, owner_kept: bool) -> Mode {
        let mut p = u32::from(attr.perm) & 0o7777;
        if attr.kind != FileType::Directory && !owner_kept {
            if attr.uid != self.euid {
                p &= !0o4000;
            }
            if attr.gid != self.egid {
                p &= !0o2000;
            }
        }
        Mode::from_bits_truncate(p as libc::mode_t)
    }

    fn xattr_list(&mut self, attr: &Attr, ipath: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        if !self.opts.xattrs {
            return Vec::new();
        }
        let names = match self.fs.listxattr(attr.ino) {
            Ok(n) => n,
            Err(e) => {
                self.problem(format!("{}: cannot list xattrs: {}", show(ipath), why(&e)));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for n in names {
            match self.fs.getxattr(attr.ino, &n) {
                Ok(v) => out.push((n, v)),
                Err(e) => self.problem(format!(
                    "{}: cannot read xattr {}: {}",
                    show(ipath),
                    show(&n),
                    why(&e)
                )),
            }
        }
        out
    }

    /// Owner, xattrs, mode, then times, on a file or directory we hold open. chown comes
    /// before chmod because it clears setuid; xattrs before chmod because a mode without 'w'
    /// would refuse user.* xattrs.
    fn meta_fd(&mut self, fd: BorrowedFd<'_>, attr: &Attr, ipath: &[u8]) {
        let mut owner_kept = false;
        if self.opts.same_owner {
            match fchown(
                fd,
                Some(Uid::from_raw(attr.uid)),
                Some(Gid::from_raw(attr.gid)),
            ) {
                Ok(()) => owner_kept = true,
                Err(e) => self.problem(format!("{}: cannot set owner: {}", show(ipath), e.desc())),
            }
        }
        for (n, v) in self.xattr_list(attr, ipath) {
            if let Err(e) = hostxattr::set_fd(fd, &n, &v) {
                self.problem(format!(
                    "{}: cannot set xattr {}: {}",
                    show(ipath),
                    show(&n),
                    io_why(e)
                ));
            }
        }
        if let Err(e) = fchmod(fd, self.final_perm(attr, owner_kept)) {
            self.problem(format!("{}: cannot set mode: {}", show(ipath), e.desc()));
        }
        if let Err(e) = futimens(fd, &ts(attr.atime), &ts(attr.mtime)) {
            self.problem(format!("{}: cannot set times: {}", show(ipath), e.desc()));
        }
    }

    /// The same for an entry we cannot open (symlink, device node, FIFO, socket), by name in
    /// the directory we hold, never following it.
    fn meta_at(&mut self, dir: BorrowedFd<'_>, name: &[u8], attr: &Attr, ipath: &[u8], link: bool) {
        let mut owner_kept = false;
        if self.opts.same_owner {
            match fchownat(
                dir,
                name,
                Some(Uid::from_raw(attr.uid)),
                Some(Gid::from_raw(attr.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(()) => owner_kept = true,
                Err(e) => self.problem(format!("{}: cannot set owner: {}", show(ipath), e.desc())),
            }
        }
        for (n, v) in self.xattr_list(attr, ipath) {
            if let Err(e) = hostxattr::set_at(dir, name, &n, &v) {
                self.problem(format!(
                    "{}: cannot set xattr {}: {}",
                    show(ipath),
                    show(&n),
                    io_why(e)
                ));
            }
        }
        if !link {
            let mode = self.final_perm(attr, owner_kept);
            // We just made this node ourselves, so it is not a symlink; older kernels refuse
            // AT_SYMLINK_NOFOLLOW for chmod, hence the fallback.
            let r = match fchmodat(dir, name, mode, FchmodatFlags::NoFollowSymlink) {
                Err(Errno::EOPNOTSUPP) => fchmodat(dir, name, mode, FchmodatFlags::FollowSymlink),
                r => r,
            };
            if let Err(e) = r {
                self.problem(format!("{}: cannot set mode: {}", show(ipath), e.desc()));
            }
        }
        if let Err(e) = utimensat(
            dir,
            name,
            &ts(attr.atime),
            &ts(attr.mtime),
            UtimensatFlags::NoFollowSymlink,
        ) {
            self.problem(format!("{}: cannot set times: {}", show(ipath), e.desc()));
        }
    }
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
