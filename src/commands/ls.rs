//! `imgmount ls`: list files in an image without mounting it. Formats are described in
//! docs/commands.md; the JSON schema is docs/ls.schema.json.

use super::walk::{self, bad_name, child_path, show, why};
use super::{json, source};
use crate::cli::LsArgs;
use fs_drivers::vfs::{major, minor, Attr, FileSystem, FileType, Ino};
use std::io::{self, IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;

pub struct LsOpts {
    pub long: bool,
    pub recursive: bool,
    pub all: bool,
    pub json: bool,
    pub xattrs: bool,
    /// Replace control characters and invalid UTF-8 in names (output is a terminal).
    pub escape: bool,
}

pub fn run(args: &LsArgs) -> i32 {
    let fs = match source::open(
        "ls",
        &args.image,
        args.partition,
        args.open.offset,
        args.cow.as_deref(),
    ) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("imgmount: ls: {e}");
            return 1;
        }
    };
    let opts = LsOpts {
        long: args.long,
        recursive: args.recursive,
        all: args.all,
        json: args.json,
        xattrs: args.xattrs,
        escape: io::stdout().is_terminal(),
    };
    let path = args.path.as_deref().map_or(&b"/"[..], OsStrExt::as_bytes);
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let mut warn = |msg: String| eprintln!("imgmount: ls: {msg}");
    let res = list(&*fs, path, &opts, &mut out, &mut warn).and_then(|ok| {
        out.flush()?;
        Ok(ok)
    });
    match res {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => super::die_of_sigpipe(),
        Err(e) => {
            eprintln!("imgmount: ls: standard output: {e}");
            1
        }
    }
}

/// Lists `path`. Problems with the image go to `warn` (one line each, without the
/// "imgmount: ls: " prefix) and make the result `Ok(false)`; `Err` is a failed write to `out`.
pub fn list(
    fs: &dyn FileSystem,
    path: &[u8],
    opts: &LsOpts,
    out: &mut dyn Write,
    warn: &mut dyn FnMut(String),
) -> io::Result<bool> {
    let mut l = Lister {
        fs,
        opts,
        out,
        warn,
        ok: true,
    };
    let mut start = match walk::resolve(fs, path, false) {
        Ok(r) => r,
        Err(e) => {
            (l.warn)(format!("{}: {}", show(path), why(&e)));
            return Ok(false);
        }
    };
    // As GNU ls: a symlink to a directory named on the command line is listed as that
    // directory, except in the long (and JSON) formats, which describe the link itself.
    if start.attr.kind == FileType::Symlink && !opts.long && !opts.json {
        if let Ok(target) = walk::resolve(fs, path, true) {
            if target.attr.kind == FileType::Directory {
                start = walk::Resolved {
                    path: start.path,
                    name: start.name,
                    ..target
                };
            }
        }
    }
    if start.attr.kind == FileType::Directory {
        let mut stack = vec![start.ino];
        l.dir(start.ino, &start.path, &mut stack)?;
    } else {
        l.print(&[(start.path.clone(), start.attr)])?;
    }
    Ok(l.ok)
}

struct Lister<'a> {
    fs: &'a dyn FileSystem,
    opts: &'a LsOpts,
    out: &'a mut dyn Write,
    warn: &'a mut dyn FnMut(String),
    ok: bool,
}

impl Lister<'_> {
    fn problem(&mut self, msg: String) {
        (self.warn)(msg);
        self.ok = false;
    }

    /// Lists one directory's entries, then (with -R) each subdirectory the same way.
    /// `stack` holds the inodes of the directories being listed, to refuse cycles.
    fn dir(&mut self, ino: Ino, path: &[u8], stack: &mut Vec<Ino>) -> io::Result<()> {
        let entries = match walk::list_dir(self.fs, ino) {
            Ok(e) => e,
            Err(e) => {
                self.problem(format!("{}: {}", show(path), why(&e)));
                return Ok(());
            }
        };
        let mut rows: Vec<(Vec<u8>, Attr)> = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(reason) = bad_name(&e.name) {
                self.problem(format!(
                    "{}: entry \"{}\" skipped: {reason}",
                    show(path),
                    show(&e.name)
                ));
                continue;
            }
            if !self.opts.all && e.name.starts_with(b".") {
                continue;
            }
            let child = child_path(path, &e.name);
            match self.fs.getattr(e.ino) {
                Ok(a) => rows.push((e.name, a)),
                Err(err) => self.problem(format!("{}: {}", show(&child), why(&err))),
            }
        }
        let shown: Vec<(Vec<u8>, Attr)> = rows
            .iter()
            .map(|(name, a)| {
                let p = if self.opts.recursive || self.opts.json {
                    child_path(path, name)
                } else {
                    name.clone()
                };
                (p, a.clone())
            })
            .collect();
        self.print(&shown)?;
        if !self.opts.recursive {
            return Ok(());
        }
        for (name, a) in rows {
            if a.kind != FileType::Directory {
                continue;
            }
            let child = child_path(path, &name);
            if stack.contains(&a.ino) {
                self.problem(format!(
                    "{}: not descending: directory cycle (inode {})",
                    show(&child),
                    a.ino
                ));
            } else if stack.len() >= walk::MAX_DEPTH {
                self.problem(format!(
                    "{}: not descending: deeper than {} levels",
                    show(&child),
                    walk::MAX_DEPTH
                ));
            } else {
                stack.push(a.ino);
                self.dir(a.ino, &child, stack)?;
                stack.pop();
            }
        }
        Ok(())
    }

    fn target(&mut self, path: &[u8], a: &Attr) -> Option<Vec<u8>> {
        if a.kind != FileType::Symlink {
            return None;
        }
        match self.fs.readlink(a.ino) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(format!("{}: cannot read link: {}", show(path), why(&e)));
                Some(b"?".to_vec())
            }
        }
    }

    fn xattrs(&mut self, path: &[u8], ino: Ino) -> Vec<(Vec<u8>, Vec<u8>)> {
        let names = match self.fs.listxattr(ino) {
            Ok(n) => n,
            Err(e) => {
                self.problem(format!("{}: cannot list xattrs: {}", show(path), why(&e)));
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match self.fs.getxattr(ino, &n) {
                Ok(v) => out.push((n, v)),
                Err(e) => self.problem(format!(
                    "{}: cannot read xattr {}: {}",
                    show(path),
                    show(&n),
                    why(&e)
                )),
            }
        }
        out
    }

    fn name<'b>(&self, p: &'b [u8]) -> std::borrow::Cow<'b, [u8]> {
        if self.opts.escape {
            std::borrow::Cow::Owned(show(p).into_bytes())
        } else {
            std::borrow::Cow::Borrowed(p)
        }
    }

    /// Prints one batch (a directory's entries, or the single file asked for), columns aligned
    /// within the batch for -l.
    fn print(&mut self, rows: &[(Vec<u8>, Attr)]) -> io::Result<()> {
        if self.opts.json {
            for (p, a) in rows {
                let target = self.target(p, a);
                let xs = self.opts.xattrs.then(|| self.xattrs(p, a.ino));
                let v = json::entry(p, a, target.as_deref(), xs.as_deref());
                serde_json::to_writer(&mut *self.out, &v)?;
                self.out.write_all(b"\n")?;
            }
            return Ok(());
        }
        if !self.opts.long {
            for (p, _) in rows {
                let n = self.name(p).into_owned();
                self.out.write_all(&n)?;
                self.out.write_all(b"\n")?;
            }
            return Ok(());
        }
        let cols: Vec<[String; 4]> = rows
            .iter()
            .map(|(_, a)| {
                let size = match a.kind {
                    FileType::CharDevice | FileType::BlockDevice => {
                        format!("{}, {}", major(a.rdev), minor(a.rdev))
                    }
                    _ => a.size.to_string(),
                };
                [
                    a.nlink.to_string(),
                    a.uid.to_string(),
                    a.gid.to_string(),
                    size,
                ]
            })
            .collect();
        let mut w = [0usize; 4];
        for c in &cols {
            for i in 0..4 {
                w[i] = w[i].max(c[i].len());
            }
        }
        for ((p, a), c) in rows.iter().zip(&cols) {
            let line = format!(
                "{} {:>w0$} {:<w1$} {:<w2$} {:>w3$} {} ",
                mode_string(a),
                c[0],
                c[1],
                c[2],
                c[3],
                long_time(a.mtime),
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3],
            );
            self.out.write_all(line.as_bytes())?;
            let n = self.name(p).into_owned();
            self.out.write_all(&n)?;
            if let Some(t) = self.target(p, a) {
                self.out.write_all(b" -> ")?;
                let t = self.name(&t).into_owned();
                self.out.write_all(&t)?;
            }
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// The ten-character mode column of `ls -l` (type, then rwx with s/S/t/T).
pub fn mode_string(a: &Attr) -> String {
    let t = match a.kind {
        FileType::Regular => '-',
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
    };
    let p = u32::from(a.perm);
    let mut s = String::with_capacity(10);
    s.push(t);
    for (shift, special, set_exec, set_noexec) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (p >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (p & special != 0, x) {
            (true, true) => set_exec,
            (true, false) => set_noexec,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `ls -l --time-style=full-iso` in UTC: "2024-01-31 13:05:09.123456789 +0000".
pub fn long_time(t: fs_drivers::vfs::Timespec) -> String {
    let days = t.sec.div_euclid(86_400);
    let secs = t.sec.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:09} +0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        t.nsec.min(999_999_999)
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) — H. Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The checker the integration tests validate `--json` output with (tests/schema/mod.rs).
#[cfg(test)]
#[path = "../../tests/schema/mod.rs"]
mod schema;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::testfs::MemFs;
    use fs_drivers::vfs::{makedev, Timespec};

    fn opts() -> LsOpts {
        LsOpts {
            long: false,
            recursive: false,
            all: false,
            json: false,
            xattrs: false,
            escape: false,
        }
    }

    fn run_ls(fs: &dyn FileSystem, path: &str, o: &LsOpts) -> (String, Vec<String>, bool) {
        let mut out = Vec::new();
        let mut warns = Vec::new();
        let ok = list(fs, path.as_bytes(), o, &mut out, &mut |w| warns.push(w)).unwrap();
        (String::from_utf8(out).unwrap(), warns, ok)
    }

    fn tree() -> crate::commands::testfs::Mem {
        let mut m = MemFs::new();
        let r = m.root_ino();
        let etc = m.dir(r, b"etc", 0o755);
        let pw = m.file(etc, b"passwd", b"root\n", 0o644);
        m.attr_mut(pw).mtime = Timespec::new(1_700_000_000, 5);
        m.dir(etc, b".git", 0o700);
        m.file(r, b"b", b"", 0o4755);
        m.file(r, b".hidden", b"x", 0o600);
        m.symlink(r, b"link", b"etc/passwd");
        let dev = m.special(r, b"null", FileType::CharDevice, 0o666, makedev(1, 3));
        m.attr_mut(dev).uid = 1000;
        m.set_xattr(pw, b"user.note", b"hi\0");
        m.build()
    }

    #[test]
    fn plain_sorted_and_hidden() {
        let fs = tree();
        let (out, w, ok) = run_ls(&fs, "/", &opts());
        assert!(ok && w.is_empty());
        assert_eq!(out, "b\netc\nlink\nnull\n");
        let (out, _, _) = run_ls(
            &fs,
            "/",
            &LsOpts {
                all: true,
                ..opts()
            },
        );
        assert_eq!(out, ".hidden\nb\netc\nlink\nnull\n");
        let (out, _, _) = run_ls(&fs, "etc/passwd", &opts());
        assert_eq!(out, "/etc/passwd\n");
    }

    #[test]
    fn symlink_to_dir_argument() {
        let mut m = MemFs::new();
        let r = m.root_ino();
        let d = m.dir(r, b"real", 0o755);
        m.file(d, b"inside", b"", 0o644);
        m.symlink(r, b"alias", b"real");
        let fs = m.build();
        let (out, _, _) = run_ls(&fs, "/alias", &opts());
        assert_eq!(out, "inside\n");
        let (out, _, _) = run_ls(
            &fs,
            "/alias",
            &LsOpts {
                recursive: true,
                ..opts()
            },
        );
        assert_eq!(out, "/alias/inside\n");
        let (out, _, _) = run_ls(
            &fs,
            "/alias",
            &LsOpts {
                long: true,
                ..opts()
            },
        );
        assert!(out.ends_with(" /alias -> real\n"), "{out}");
    }

    #[test]
    fn recursive_full_paths() {
        let fs = tree();
        let o = LsOpts {
            recursive: true,
            ..opts()
        };
        let (out, _, ok) = run_ls(&fs, "/", &o);
        assert!(ok);
        assert_eq!(out, "/b\n/etc\n/link\n/null\n/etc/passwd\n");
        let (out, _, _) = run_ls(&fs, "/", &LsOpts { all: true, ..o });
        assert_eq!(
            out,
            "/.hidden\n/b\n/etc\n/link\n/null\n/etc/.git\n/etc/passwd\n"
        );
    }

    #[test]
    fn long_format() {
        let fs = tree();
        let (out, _, _) = run_ls(
            &fs,
            "/",
            &LsOpts {
                long: true,
                ..opts()
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "-rwsr-xr-x 1 0    0    0 2020-09-13 12:26:41.222222222 +0000 b"
        );
        assert!(
            lines[1].starts_with("drwxr-xr-x 3 0    0    0 "),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("lrwxrwxrwx 1 0"), "{}", lines[2]);
        assert!(lines[2].ends_with(" link -> etc/passwd"), "{}", lines[2]);
        assert!(
            lines[3].starts_with("crw-rw-rw- 1 1000 0 1, 3 "),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn mode_strings() {
        let mut a = tree().getattr(2).unwrap();
        for (kind, perm, s) in [
            (FileType::Regular, 0o4644, "-rwSr--r--"),
            (FileType::Regular, 0o2755, "-rwxr-sr-x"),
            (FileType::Directory, 0o1777, "drwxrwxrwt"),
            (FileType::Directory, 0o1776, "drwxrwxrwT"),
            (FileType::Fifo, 0o2640, "prw-r-S---"),
            (FileType::Socket, 0o755, "srwxr-xr-x"),
            (FileType::BlockDevice, 0o660, "brw-rw----"),
        ] {
            a.kind = kind;
            a.perm = perm;
            assert_eq!(mode_string(&a), s);
        }
    }

    #[test]
    fn times() {
        assert_eq!(
            long_time(Timespec::new(0, 0)),
            "1970-01-01 00:00:00.000000000 +0000"
        );
        assert_eq!(
            long_time(Timespec::new(951_782_400, 7)),
            "2000-02-29 00:00:00.000000007 +0000"
        );
        assert_eq!(
            long_time(Timespec::new(-1, 0)),
            "1969-12-31 23:59:59.000000000 +0000"
        );
        assert_eq!(
            long_time(Timespec::new(4_102_444_799, 0)),
            "2099-12-31 23:59:59.000000000 +0000"
        );
    }

    #[test]
    fn json_fields() {
        let fs = tree();
        let (out, _, ok) = run_ls(
            &fs,
            "/",
            &LsOpts {
                json: true,
                recursive: true,
                xattrs: true,
                ..opts()
            },
        );
        assert!(ok);
        let v: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 5);
        let pw = v.iter().find(|e| e["path"] == "/etc/passwd").unwrap();
        assert_eq!(pw["type"], "file");
        assert_eq!(pw["mode"], 0o100644);
        assert_eq!(pw["size"], 5);
        assert_eq!(pw["mtime"]["sec"], 1_700_000_000);
        assert_eq!(pw["mtime"]["nsec"], 5);
        assert_eq!(pw["xattrs"]["user.note"], "aGkA");
        let l = v.iter().find(|e| e["path"] == "/link").unwrap();
        assert_eq!(l["target"], "etc/passwd");
        let n = v.iter().find(|e| e["path"] == "/null").unwrap();
        assert_eq!(
            (n["major"].as_u64(), n["minor"].as_u64()),
            (Some(1), Some(3))
        );
        assert_eq!(n["uid"], 1000);
        assert!(pw.get("major").is_none() && pw.get("target").is_none());
    }

    use super::schema;

    #[test]
    fn json_matches_schema_file() {
        let mut m = MemFs::new();
        let r = m.root_ino();
        let f = m.file(r, b"caf\xe9", b"x", 0o644);
        m.set_xattr(f, b"user.k", b"\xff");
        m.symlink(r, b"bad-target", b"\xfe");
        m.special(r, b"fifo", FileType::Fifo, 0o600, 0);
        m.special(r, b"sock", FileType::Socket, 0o600, 0);
        m.special(r, b"blk", FileType::BlockDevice, 0o600, makedev(8, 1));
        let d = m.dir(r, b"d", 0o1777);
        m.attr_mut(d).crtime = Some(Timespec::new(-5, 999_999_999));
        let fs = m.build();
        let o = LsOpts {
            json: true,
            recursive: true,
            all: true,
            xattrs: true,
            ..opts()
        };
        let (out, _, ok) = run_ls(&fs, "/", &o);
        assert!(ok);
        let schema = schema::ls_schema();
        let mut types = std::collections::BTreeSet::new();
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                schema::validate(&schema, &v),
                Vec::<String>::new(),
                "{line}"
            );
            types.insert(v["type"].as_str().unwrap().to_string());
        }
        assert_eq!(types.len(), 6, "{types:?}");
        // The checker does reject what the schema forbids.
        for bad in [
            r#"{"path":"/x","type":"symlink","mode":1,"ino":1,"nlink":1,"uid":0,"gid":0,"size":0,"blocks":0,"atime":{"sec":0,"nsec":0},"mtime":{"sec":0,"nsec":0},"ctime":{"sec":0,"nsec":0}}"#,
            r#"{"path":"/x","type":"file","mode":1,"ino":1,"nlink":1,"uid":0,"gid":0,"size":0,"blocks":0,"atime":{"sec":0,"nsec":1000000000},"mtime":{"sec":0,"nsec":0},"ctime":{"sec":0,"nsec":0}}"#,
            r#"{"path":"/x","type":"file","mode":1,"ino":1,"nlink":1,"uid":0,"gid":0,"size":0,"blocks":0,"atime":{"sec":0,"nsec":0},"mtime":{"sec":0,"nsec":0},"ctime":{"sec":0,"nsec":0},"extra":1}"#,
            r#"{"path":"/x","type":"file","mode":"1","ino":1,"nlink":1,"uid":0,"gid":0,"size":0,"blocks":0,"atime":{"sec":0,"nsec":0},"mtime":{"sec":0,"nsec":0},"ctime":{"sec":0,"nsec":0}}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(bad).unwrap();
            assert!(!schema::validate(&schema, &v).is_empty(), "{bad}");
        }
    }

    #[test]
    fn json_non_utf8_name() {
        let mut m = MemFs::new();
        let r = m.root_ino();
        m.file(r, b"caf\xe9", b"", 0o644);
        let fs = m.build();
        let (out, _, _) = run_ls(
            &fs,
            "/",
            &LsOpts {
                json: true,
                ..opts()
            },
        );
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["path"], "/caf\u{fffd}");
        assert_eq!(v["path_b64"], json::base64(b"/caf\xe9"));
    }

    #[test]
    fn hostile_names_and_cycles() {
        let mut m = MemFs::new();
        let r = m.root_ino();
        let d = m.dir(r, b"d", 0o755);
        m.file(d, b"../escape", b"x", 0o644);
        m.file(d, b"a/b", b"x", 0o644);
        m.file(d, b".", b"x", 0o644);
        m.file(d, b"n\0ul", b"x", 0o644);
        m.file(d, b"ok", b"x", 0o644);
        m.link(d, b"up", r);
        let fs = m.build();
        let (out, w, ok) = run_ls(
            &fs,
            "/",
            &LsOpts {
                recursive: true,
                all: true,
                ..opts()
            },
        );
        assert!(!ok);
        assert_eq!(out, "/d\n/d/ok\n/d/up\n");
        assert_eq!(w.len(), 5, "{w:?}");
        assert!(w.iter().any(|l| l.contains("\"../escape\" skipped")));
        assert!(w.iter().any(|l| l.contains("\"n\\x00ul\" skipped")));
        assert!(w
            .iter()
            .any(|l| l.contains("/d/up: not descending: directory cycle")));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut m = MemFs::new();
        let mut d = m.root_ino();
        for _ in 0..walk::MAX_DEPTH + 5 {
            d = m.dir(d, b"d", 0o755);
        }
        let fs = m.build();
        let o = LsOpts {
            recursive: true,
            long: true,
            ..opts()
        };
        let (out, w, ok) = run_ls(&fs, "/", &o);
        assert!(!ok);
        assert_eq!(out.lines().count(), walk::MAX_DEPTH);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].ends_with(&format!("deeper than {} levels", walk::MAX_DEPTH)));
    }

    #[test]
    fn missing_path_is_one_line() {
        let fs = tree();
        let (out, w, ok) = run_ls(&fs, "/nope/x", &opts());
        assert!(!ok && out.is_empty());
        assert_eq!(w, vec!["/nope/x: no such file or directory".to_string()]);
    }
}
