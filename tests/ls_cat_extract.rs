//! `imgmount ls`, `cat` and `extract` on real images, checked against independent tools: the
//! kernel's own ext4 (`mount -o loop,ro`, as root) field by field, GNU `ls -l`, mtools'
//! listing and the trees the fixture images were made from. Also: the three commands run as
//! a user that cannot open /dev/fuse.

mod common;
mod schema;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs imgmount with TZ=UTC (FAT stores local times).
fn im<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_timeout(
        Command::new(imgmount_bin()).env("TZ", "UTC").args(args),
        Duration::from_secs(120),
    )
}

/// True (after printing why) when the binary cannot read this filesystem yet in this build.
fn no_driver(r: &Run) -> bool {
    let missing = r.stderr.contains("cannot read") && r.stderr.contains(" yet");
    if missing {
        eprintln!(
            "SKIP: driver not wired into this build yet: {}",
            r.stderr.trim()
        );
    }
    missing
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 {c}"),
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | u32::from(val(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// One file's metadata as stat(2) gives it on the host.
#[derive(Debug, Clone, PartialEq)]
struct Rec {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    ino: u64,
    blocks: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
    ctime: (i64, i64),
    rdev: u64,
    target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn kind_of(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "char",
        libc::S_IFBLK => "block",
        libc::S_IFIFO => "fifo",
        _ => "socket",
    }
}

fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn host_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cpath(p);
    let mut names = vec![0u8; 65536];
    // SAFETY: valid path string and buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if m >= 0 {
            v.truncate(m as usize);
            out.insert(name.to_vec(), v);
        }
    }
    out
}

fn host_rec(p: &Path) -> Rec {
    let m = std::fs::symlink_metadata(p).unwrap();
    let kind = kind_of(m.mode());
    Rec {
        kind,
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        nlink: m.nlink(),
        ino: m.ino(),
        blocks: m.blocks(),
        atime: (m.atime(), m.atime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        rdev: m.rdev(),
        target: (kind == "symlink")
            .then(|| std::fs::read_link(p).unwrap().into_os_string().into_vec()),
        xattrs: host_xattrs(p),
    }
}

/// Every entry under `root` (not following symlinks), keyed "/rel/path"; "/" is the root.
fn host_tree(root: &Path) -> BTreeMap<Vec<u8>, Rec> {
    let mut out = BTreeMap::new();
    out.insert(b"/".to_vec(), host_rec(root));
    let mut todo = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let mut key = rel.clone();
            key.push(b'/');
            key.extend_from_slice(e.file_name().as_bytes());
            let r = host_rec(&e.path());
            if r.kind == "dir" {
                todo.push((e.path(), key.clone()));
            }
            out.insert(key, r);
        }
    }
    out
}

/// `ls --json` output as path bytes -> object; every line checked against the schema.
fn json_tree(stdout: &str) -> BTreeMap<Vec<u8>, Value> {
    let schema = schema::ls_schema();
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let errs = schema::validate(&schema, &v);
        assert!(errs.is_empty(), "{line}: {errs:?}");
        let path = match v.get("path_b64") {
            Some(b) => b64decode(b.as_str().unwrap()),
            None => v["path"].as_str().unwrap().as_bytes().to_vec(),
        };
        assert!(out.insert(path, v).is_none(), "path listed twice: {line}");
    }
    out
}

fn time_of(v: &Value) -> (i64, i64) {
    (v["sec"].as_i64().unwrap(), v["nsec"].as_i64().unwrap())
}

fn host_path(root: &Path, key: &[u8]) -> PathBuf {
    if key == b"/" {
        return root.to_path_buf();
    }
    root.join(OsStr::from_bytes(&key[1..]))
}

// ---------------------------------------------------------------- FAT (mtools, fixture trees)

/// Returns false (after printing why) when this build cannot read FAT yet.
fn fat_case(img: &Path, tree: &Path, part: Option<&str>) -> bool {
    let sel: Vec<&str> = part.map(|p| vec!["-p", p]).unwrap_or_default();
    let mut args: Vec<OsString> = vec!["ls".into()];
    args.extend(sel.iter().map(OsString::from));
    args.extend(["-R".into(), "-a".into(), img.into()]);
    let r = im(&args);
    if no_driver(&r) {
        return false;
    }
    let r = r.expect_ok();
    let want = host_tree(tree);
    let got: BTreeSet<Vec<u8>> = r.stdout.lines().map(|l| l.as_bytes().to_vec()).collect();
    let want_paths: BTreeSet<Vec<u8>> = want.keys().filter(|k| *k != b"/").cloned().collect();
    assert_eq!(
        got.iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>(),
        want_paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
    );

    // --json: schema, types, sizes and times agree with the tree the image was made from.
    let mut args: Vec<OsString> = vec!["ls".into(), "--json".into(), "-R".into(), "-a".into()];
    args.extend(sel.iter().map(OsString::from));
    args.push(img.into());
    let js = json_tree(&im(&args).expect_ok().stdout);
    assert_eq!(js.keys().cloned().collect::<BTreeSet<_>>(), want_paths);
    for (k, v) in &js {
        let w = &want[k];
        assert_eq!(v["type"], w.kind, "{k:?}");
        if w.kind == "file" {
            assert_eq!(v["size"].as_u64(), Some(w.size), "{k:?}");
        }
        assert_eq!(time_of(&v["mtime"]), w.mtime, "{k:?}");
    }

    // cat: every file's bytes hash the same as the source file's.
    let files: Vec<&Vec<u8>> = want
        .iter()
        .filter(|(_, r)| r.kind == "file")
        .map(|(k, _)| k)
        .collect();
    assert!(files.len() >= 4);
    for k in &files {
        let mut args: Vec<OsString> = vec!["cat".into()];
        args.extend(sel.iter().map(OsString::from));
        args.push(img.into());
        args.push(OsStr::from_bytes(k).into());
        let out = run_with_timeout(
            Command::new(imgmount_bin()).args(&args),
            Duration::from_secs(60),
        );
        assert!(out.ok(), "{out:?}");
        let src = std::fs::read(host_path(tree, k)).unwrap();
        // Run's stdout is lossy text: compare hashes of the exact bytes via a second read.
        let bytes = Command::new(imgmount_bin())
            .args(&args)
            .output()
            .unwrap()
            .stdout;
        assert_eq!(sha(&bytes), sha(&src), "{k:?}");
    }

    // extract /: the same tree (types, contents, mtimes).
    let t = TempDir::new("fat-extract");
    let dest = t.join("out");
    let mut args: Vec<OsString> = vec!["extract".into()];
    args.extend(sel.iter().map(OsString::from));
    args.extend([img.into(), dest.clone().into()]);
    let r = im(&args).expect_ok();
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let got = host_tree(&dest);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        let g = &got[k];
        assert_eq!(g.kind, w.kind, "{k:?}");
        if w.kind == "file" {
            assert_eq!(
                std::fs::read(host_path(&dest, k)).unwrap(),
                std::fs::read(host_path(tree, k)).unwrap(),
                "{k:?}"
            );
        }
        if k != b"/" {
            assert_eq!(g.mtime, w.mtime, "{k:?}");
        }
    }
    true
}

#[test]
fn fat_bare_agrees_with_tree_and_mtools() {
    let Some(img) = disk("bare-fat32.img") else {
        return;
    };
    let tree = fixture_dir().join("trees").join("bare-fat32");
    if !fat_case(&img, &tree, None) || !require_tool("mdir") {
        return;
    }
    let r = im([
        OsStr::new("ls"),
        "-R".as_ref(),
        "-a".as_ref(),
        img.as_os_str(),
    ]);
    // mtools' recursive bare listing: "::/dir/" for directories, "::/file" for files.
    let m = tool_stdout(
        "mdir",
        [
            OsStr::new("-i"),
            img.as_os_str(),
            "-/".as_ref(),
            "-b".as_ref(),
            "::/".as_ref(),
        ],
    );
    let mut theirs: Vec<String> = m
        .lines()
        .map(|l| l.trim_start_matches("::").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    theirs.sort();
    let mut ours: Vec<String> = r.expect_ok().stdout.lines().map(str::to_string).collect();
    ours.sort();
    assert_eq!(ours, theirs);
}

#[test]
fn fat_partition_selection() {
    let Some(img) = disk("gpt.img") else { return };
    let tree = fixture_dir().join("trees").join("gpt-p1");
    if !fat_case(&img, &tree, Some("1")) {
        return;
    }
    // Without -p: the union root, paths start with /p1 (other partitions may be reported
    // empty on stderr).
    let r = im([OsStr::new("cat"), img.as_os_str(), "p1/hello.txt".as_ref()]);
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        r.stdout.as_bytes(),
        std::fs::read(tree.join("hello.txt")).unwrap()
    );
    let r = im([OsStr::new("ls"), img.as_os_str()]);
    assert!(r.stdout.lines().take(1).eq(["p1"]), "{}", r.stdout);
    let t = TempDir::new("fat-sub");
    let r = im([
        OsStr::new("extract"),
        img.as_os_str(),
        "/p1/dir".as_ref(),
        t.join("d").as_os_str(),
    ]);
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        std::fs::read(t.join("d/sub/deep.txt")).unwrap(),
        std::fs::read(tree.join("dir/sub/deep.txt")).unwrap()
    );
}

#[test]
fn errors_are_one_line() {
    let Some(img) = disk("bare-fat32.img") else {
        return;
    };
    let r = im([OsStr::new("ls"), img.as_os_str(), "/nope".as_ref()]);
    if no_driver(&r) {
        return;
    }
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(r.stderr, "imgmount: ls: /nope: no such file or directory\n");
    let r = im([
        OsStr::new("cat"),
        img.as_os_str(),
        "/dir".as_ref(),
        "/hello.txt".as_ref(),
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(r.stderr, "imgmount: cat: /dir: is a directory\n");
    assert!(r.stdout.starts_with("hello from"), "{}", r.stdout);
    let r = im([OsStr::new("cat"), img.as_os_str(), "/hello.txt/x".as_ref()]);
    assert_eq!(r.stderr, "imgmount: cat: /hello.txt/x: not a directory\n");
    let r = im([OsStr::new("ls"), "/nonexistent.img".as_ref()]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("imgmount: ls: /nonexistent.img: "),
        "{}",
        r.stderr
    );
    let r = im([
        OsStr::new("ls"),
        "-p".as_ref(),
        "3".as_ref(),
        img.as_os_str(),
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    // A pipe closed early ends cat like cat: by SIGPIPE, quietly.
    let out = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" cat \"$1\" /numbers.txt | head -c 10 >/dev/null")
        .arg(imgmount_bin())
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------- ext4 (kernel mount, GNU ls)

/// A tree with every kind of entry mke2fs -d can copy.
fn rich_tree(root: &Path) {
    let w = |p: &str, d: &[u8]| std::fs::write(root.join(p), d).unwrap();
    let sh = |cmd: &str| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(root)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    };
    for d in ["dir/sub", "sticky", "many", "sgid"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    w("dir/file.txt", b"hello\n");
    w(".hidden", b"secret\n");
    w("empty", b"");
    // Deterministic 3 MiB + 5 bytes of noise (several 1 MiB reads, last one short).
    let mut x = 0x1234_5678_9abc_def0u64;
    let big: Vec<u8> = (0..(3 << 20) + 5)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    w("big.bin", &big);
    let f = std::fs::File::create(root.join("sparse")).unwrap();
    f.set_len(40 << 20).unwrap();
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"middle", 20 << 20).unwrap();
    f.write_all_at(b"end", (40 << 20) - 3).unwrap();
    drop(f);
    for i in 0..150 {
        w(&format!("many/file-{i:03}"), format!("{i}\n").as_bytes());
    }
    w("héllo wörld.txt", b"utf8\n");
    std::fs::write(root.join(OsStr::from_bytes(b"caf\xe9")), b"latin1\n").unwrap();
    std::os::unix::fs::symlink("dir/file.txt", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), root.join("long-link")).unwrap();
    std::fs::hard_link(root.join("dir/file.txt"), root.join("hard")).unwrap();
    std::fs::hard_link(root.join("dir/file.txt"), root.join("dir/sub/hard2")).unwrap();
    w("suid", b"#!/bin/sh\n");
    sh("mkfifo fifo && chmod 4755 suid && chmod 1777 sticky && chmod 2750 sgid && chmod 0 empty");
    sh("setfattr -n user.test -v hello dir/file.txt && setfattr -n user.bin -v 0x00ff10 dir");
    sh("touch -d @1600000000.123456789 dir/file.txt && touch -h -d @1500000000.5 rel-link");
    sh("touch -a -d @1400000000.987654321 big.bin");
    if is_root() {
        sh("mknod null c 1 3 && mknod sda b 8 0 && mknod big c 300 70000");
        sh("chown 1234:5678 suid && chown -h 42:43 rel-link && chown 7:8 sgid");
        sh("setfattr -n trusted.t -v v big.bin");
    }
    sh("touch -d @1650000000.25 dir/sub dir");
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn kernel_mount(img: &Path, at: &Path) -> Option<Mount> {
    if !is_root() {
        eprintln!("SKIP (kernel comparison): not root");
        return None;
    }
    std::fs::create_dir_all(at).unwrap();
    let st = tool("mount")
        .args(["-o", "loop,ro"])
        .arg(img)
        .arg(at)
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("SKIP (kernel comparison): mount -o loop,ro failed here");
        return None;
    }
    Some(Mount(at.to_path_buf()))
}

/// The rich tree (in `t`/src) and an ext4 image made from it with mke2fs -d, or None (after
/// printing why) when the tools are missing.
fn rich_image(t: &TempDir) -> Option<(PathBuf, PathBuf)> {
    if !require_tool("mkfs.ext4") || !require_tool("setfattr") {
        return None;
    }
    let src = t.join("src");
    std::fs::create_dir_all(&src).unwrap();
    rich_tree(&src);
    let img = t.join("rich.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    tool_stdout(
        "mkfs.ext4",
        [
            OsStr::new("-q"),
            "-F".as_ref(),
            "-I".as_ref(),
            "256".as_ref(),
            "-E".as_ref(),
            "root_owner=0:0".as_ref(),
            "-d".as_ref(),
            src.as_os_str(),
            img.as_os_str(),
        ],
    );
    // mke2fs -d keeps whole seconds only; give two inodes nanoseconds the way the kernel
    // stores them (the *_extra fields hold nsec << 2).
    for (path, field, nsec) in [
        ("/dir/file.txt", "mtime_extra", 123_456_789u64),
        ("/dir/file.txt", "atime_extra", 7),
        ("/rel-link", "mtime_extra", 500_000_000),
        ("/dir", "mtime_extra", 999_999_999),
    ] {
        tool_stdout(
            "debugfs",
            [
                OsStr::new("-w"),
                "-R".as_ref(),
                format!("sif {path} {field} {}", nsec << 2).as_ref(),
                img.as_os_str(),
            ],
        );
    }
    Some((src, img))
}

#[test]
fn ext4_agrees_with_kernel_mount() {
    let t = TempDir::new("ext-rich");
    let Some((src, img)) = rich_image(&t) else {
        return;
    };
    let r = im([
        OsStr::new("ls"),
        "--json".as_ref(),
        "-R".as_ref(),
        "-a".as_ref(),
        "--xattrs".as_ref(),
        img.as_os_str(),
    ]);
    if no_driver(&r) {
        return;
    }
    let js = json_tree(&r.expect_ok().stdout);
    assert!(js.contains_key(&b"/caf\xe9"[..]), "non-UTF-8 name lost");

    // Independent of root: contents and symlink targets equal the source tree's.
    let srct = host_tree(&src);
    for (k, s) in &srct {
        if k == b"/" {
            continue;
        }
        let v = js
            .get(k)
            .unwrap_or_else(|| panic!("{} missing", String::from_utf8_lossy(k)));
        assert_eq!(v["type"], s.kind, "{k:?}");
        assert_eq!(v["mode"].as_u64(), Some(u64::from(s.mode)), "{k:?}");
        if s.kind == "file" {
            assert_eq!(v["size"].as_u64(), Some(s.size), "{k:?}");
        }
        if let Some(tg) = &s.target {
            assert_eq!(v["target"].as_str().unwrap().as_bytes(), &tg[..], "{k:?}");
        }
    }

    let Some(mnt) = kernel_mount(&img, &t.join("mnt")) else {
        // Still check cat and extract against the source tree.
        check_cat(&img, &src, &srct);
        return;
    };
    let kt = host_tree(&mnt.0);
    assert_eq!(
        js.keys().collect::<BTreeSet<_>>(),
        kt.keys().filter(|k| *k != b"/").collect::<BTreeSet<_>>()
    );
    for (k, v) in &js {
        let w = &kt[k];
        let ctx = String::from_utf8_lossy(k);
        assert_eq!(v["type"], w.kind, "{ctx}");
        assert_eq!(v["mode"].as_u64(), Some(u64::from(w.mode)), "{ctx}");
        assert_eq!(v["uid"].as_u64(), Some(u64::from(w.uid)), "{ctx}");
        assert_eq!(v["gid"].as_u64(), Some(u64::from(w.gid)), "{ctx}");
        assert_eq!(v["size"].as_u64(), Some(w.size), "{ctx}");
        assert_eq!(v["nlink"].as_u64(), Some(w.nlink), "{ctx}");
        assert_eq!(v["ino"].as_u64(), Some(w.ino), "{ctx}");
        assert_eq!(v["blocks"].as_u64(), Some(w.blocks), "{ctx}");
        assert_eq!(time_of(&v["atime"]), w.atime, "{ctx}");
        assert_eq!(time_of(&v["mtime"]), w.mtime, "{ctx}");
        assert_eq!(time_of(&v["ctime"]), w.ctime, "{ctx}");
        if w.kind == "char" || w.kind == "block" {
            assert_eq!(v["rdev"].as_u64(), Some(w.rdev), "{ctx}");
            assert_eq!(
                v["major"].as_u64(),
                Some(u64::from(libc::major(w.rdev))),
                "{ctx}"
            );
            assert_eq!(
                v["minor"].as_u64(),
                Some(u64::from(libc::minor(w.rdev))),
                "{ctx}"
            );
        }
        if let Some(tg) = &w.target {
            assert_eq!(v["target"].as_str().unwrap().as_bytes(), &tg[..], "{ctx}");
        }
        let xs: BTreeMap<Vec<u8>, Vec<u8>> = v["xattrs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(n, val)| (n.as_bytes().to_vec(), b64decode(val.as_str().unwrap())))
            .collect();
        assert_eq!(xs, w.xattrs, "{ctx}");
    }

    // ls -l agrees with GNU ls -ln --time-style=full-iso on the kernel mount, line by line
    // (compared as bytes: one name is not UTF-8).
    let out = Command::new(imgmount_bin())
        .args(["ls", "-l", "-R", "-a"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let norm = |s: &[u8]| -> Vec<Vec<u8>> {
        s.split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let prefix = mnt.0.as_os_str().as_bytes();
    let mut lines = 0;
    for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let at = line
            .windows(7)
            .position(|w| w == b" +0000 ")
            .expect("time column");
        let rest = &line[at + 7..];
        let path = match rest.windows(4).position(|w| w == b" -> ") {
            Some(i) => &rest[..i],
            None => rest,
        };
        let mut full = prefix.to_vec();
        full.extend_from_slice(path);
        let gnu = tool("ls")
            .env("TZ", "UTC")
            .args(["-lnd", "--time-style=full-iso"])
            .arg(OsStr::from_bytes(&full))
            .output()
            .unwrap();
        assert!(
            gnu.status.success(),
            "{}",
            String::from_utf8_lossy(&gnu.stderr)
        );
        let mut g = norm(&gnu.stdout);
        for w in g.iter_mut() {
            if w.starts_with(prefix) {
                w.drain(..prefix.len());
            }
        }
        assert_eq!(norm(line), g, "{}", String::from_utf8_lossy(line));
        lines += 1;
    }
    assert_eq!(lines, js.len());

    check_cat(&img, &mnt.0, &kt);

    // extract --xattrs /: the kernel's tree, field by field (owners and devices as root).
    let dest = t.join("out");
    let r = im([
        OsStr::new("extract"),
        "--xattrs".as_ref(),
        img.as_os_str(),
        dest.as_os_str(),
    ]);
    assert!(r.ok() && r.stderr.is_empty(), "{r:?}");
    let et = host_tree(&dest);
    assert_eq!(et.keys().collect::<Vec<_>>(), kt.keys().collect::<Vec<_>>());
    let mut groups: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (k, w) in &kt {
        let g = &et[k];
        let ctx = String::from_utf8_lossy(k);
        assert_eq!(g.kind, w.kind, "{ctx}");
        assert_eq!(g.mode, w.mode, "{ctx}");
        assert_eq!((g.uid, g.gid), (w.uid, w.gid), "{ctx}");
        if w.kind != "dir" {
            assert_eq!(g.size, w.size, "{ctx}");
        }
        assert_eq!(g.mtime, w.mtime, "{ctx}");
        assert_eq!(g.atime, w.atime, "{ctx}");
        assert_eq!(g.target, w.target, "{ctx}");
        assert_eq!(g.xattrs, w.xattrs, "{ctx}");
        if w.kind == "char" || w.kind == "block" {
            assert_eq!(g.rdev, w.rdev, "{ctx}");
        }
        if w.kind == "file" {
            assert_eq!(
                sha(&std::fs::read(host_path(&dest, k)).unwrap()),
                sha(&std::fs::read(host_path(&mnt.0, k)).unwrap()),
                "{ctx}"
            );
            assert_eq!(g.nlink, w.nlink, "{ctx}");
            groups.entry(w.ino).or_default().insert(g.ino);
        }
    }
    // Hard links: one inode in the image is one inode in DEST.
    assert!(groups.values().all(|s| s.len() == 1), "{groups:?}");
    let sparse = &et[&b"/sparse"[..]];
    assert!(
        sparse.blocks * 512 < 1 << 20,
        "sparse file not sparse: {} blocks",
        sparse.blocks
    );
}

fn check_cat(img: &Path, root: &Path, tree: &BTreeMap<Vec<u8>, Rec>) {
    // All of many/ in one call: the output is the files one after another.
    let many: Vec<&Vec<u8>> = tree.keys().filter(|k| k.starts_with(b"/many/")).collect();
    let out = Command::new(imgmount_bin())
        .arg("cat")
        .arg(img)
        .args(many.iter().map(|k| OsStr::from_bytes(k)))
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut want = Vec::new();
    for k in &many {
        want.extend(std::fs::read(host_path(root, k)).unwrap());
    }
    assert!(many.len() >= 100 && out.stdout == want);
    let mut n = 0;
    for (k, r) in tree {
        if k.starts_with(b"/many/") {
            continue;
        }
        // The CLI takes PATH as UTF-8 (src/cli.rs), so a non-UTF-8 name cannot be named.
        if r.kind != "file" || r.mode & 0o444 == 0 && !is_root() || std::str::from_utf8(k).is_err()
        {
            continue;
        }
        let out = Command::new(imgmount_bin())
            .arg("cat")
            .arg(img)
            .arg(OsStr::from_bytes(k))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            sha(&out.stdout),
            sha(&std::fs::read(host_path(root, k)).unwrap()),
            "{}",
            String::from_utf8_lossy(k)
        );
        n += 1;
    }
    assert!(n >= 8, "{n}");
}

#[test]
fn ext4_extract_as_non_root() {
    if !is_root() || !require_tool("runuser") {
        eprintln!("SKIP: needs root (to make device nodes and become another user)");
        return;
    }
    let t = TempDir::new("ext-nonroot");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some((_, img)) = rich_image(&t) else {
        return;
    };
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = t.join("imgmount");
    std::fs::copy(imgmount_bin(), &bin).unwrap();
    let out = t.join("out");
    std::fs::create_dir(&out).unwrap();
    nix_chown(&out, 65534);
    let x = out.join("x");
    let r = run_with_timeout(
        Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&bin)
            .arg("extract")
            .arg(&img)
            .arg(&x),
        Duration::from_secs(120),
    );
    if no_driver(&r) {
        return;
    }
    // Device nodes need root: each is refused on one line, the rest is extracted.
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let mut lines: Vec<&str> = r.stderr.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "imgmount: extract: /big: device node not created (needs root)",
            "imgmount: extract: /null: device node not created (needs root)",
            "imgmount: extract: /sda: device node not created (needs root)",
        ]
    );
    let md = |p: &str| std::fs::symlink_metadata(x.join(p)).unwrap();
    // Owned by nobody, so the setuid bit of a file owned by 1234 in the image is dropped.
    assert_eq!(md("suid").permissions().mode() & 0o7777, 0o755);
    assert_eq!(md("suid").uid(), 65534);
    assert_eq!(md("sticky").permissions().mode() & 0o7777, 0o1777);
    assert_eq!(md("empty").permissions().mode() & 0o7777, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &md("fifo").file_type()
    ));
    let f = md("dir/file.txt");
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!(f.ino(), md("hard").ino());
    assert_eq!(f.ino(), md("dir/sub/hard2").ino());
    assert_eq!(std::fs::read(x.join("dir/sub/hard2")).unwrap(), b"hello\n");
    assert_eq!(
        std::fs::read_link(x.join("long-link")).unwrap(),
        Path::new(&"x".repeat(200))
    );
}

// ------------------------------------------------------------------ no FUSE, not root

#[test]
fn commands_work_for_a_user_without_fuse() {
    if !is_root() || !require_tool("runuser") {
        eprintln!("SKIP: needs root (to become another user)");
        return;
    }
    let Some(fat) = disk("gpt.img") else { return };
    let t = TempDir::new("nofuse");
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = t.join("disk.img");
    std::fs::copy(&fat, &img).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = t.join("imgmount");
    std::fs::copy(imgmount_bin(), &bin).unwrap();
    let out = t.join("out");
    std::fs::create_dir(&out).unwrap();
    nix_chown(&out, 65534);

    // Run as nobody, and where /dev/fuse is not openable by nobody (hidden behind a
    // mode-000 file in a private mount namespace when the system's is world-writable).
    let blocker = t.join("no-fuse");
    std::fs::write(&blocker, b"").unwrap();
    std::fs::set_permissions(&blocker, std::fs::Permissions::from_mode(0o000)).unwrap();
    let script = r#"
        if [ -e /dev/fuse ]; then mount --bind "$BLOCK" /dev/fuse 2>/dev/null || true; fi
        exec runuser -u nobody -- sh -c '
            if (exec 3<>/dev/fuse) 2>/dev/null; then echo "FUSE-OPENABLE"; fi
            "$0" ls -R "$1" >"$2/ls.txt" || exit 11
            "$0" cat "$1" p1/hello.txt >"$2/cat.txt" || exit 12
            "$0" extract -p 1 "$1" / "$2/tree" || exit 13
        ' "$BIN" "$IMG" "$OUT"
    "#;
    let r = run_with_timeout(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .env("BLOCK", &blocker)
            .env("BIN", &bin)
            .env("IMG", &img)
            .env("OUT", &out),
        Duration::from_secs(120),
    );
    if r.stderr.contains("cannot read FAT yet") {
        eprintln!("SKIP: FAT driver not wired in yet");
        return;
    }
    assert!(r.ok(), "{r:?}");
    assert!(
        !r.stdout.contains("FUSE-OPENABLE"),
        "nobody could open /dev/fuse: {r:?}"
    );
    let tree = fixture_dir().join("trees").join("gpt-p1");
    assert!(std::fs::read_to_string(out.join("ls.txt"))
        .unwrap()
        .contains("/p1/dir/sub/deep.txt"));
    assert_eq!(
        std::fs::read(out.join("cat.txt")).unwrap(),
        std::fs::read(tree.join("hello.txt")).unwrap()
    );
    let m = std::fs::metadata(out.join("tree/numbers.txt")).unwrap();
    assert_eq!(m.uid(), 65534);
    assert_eq!(
        std::fs::read(out.join("tree/numbers.txt")).unwrap(),
        std::fs::read(tree.join("numbers.txt")).unwrap()
    );
}

fn nix_chown(p: &Path, uid: u32) {
    let c = cpath(p);
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::chown(c.as_ptr(), uid, uid) };
    assert_eq!(r, 0, "chown {}", p.display());
}

#[test]
fn extract_shows_progress_only_on_a_terminal() {
    if !require_tool("script") {
        return;
    }
    let Some(img) = disk("bare-fat32.img") else {
        return;
    };
    let t = TempDir::new("progress");
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let cmd = format!(
        "{} extract {} {}",
        quote(&imgmount_bin()),
        quote(&img),
        quote(&t.join("tty"))
    );
    // script(1) gives the command a terminal; what it printed comes back on script's stdout.
    let r = run_with_timeout(
        tool("script").args(["-qec", &cmd, "/dev/null"]),
        Duration::from_secs(60),
    );
    if no_driver(&Run {
        stderr: r.stdout.clone(),
        ..r
    }) {
        return;
    }
    let r = run_with_timeout(
        tool("script").args(["-qec", &cmd.replace("/tty'", "/tty2'"), "/dev/null"]),
        Duration::from_secs(60),
    );
    assert!(r.ok(), "{r:?}");
    let last = r
        .stdout
        .rsplit('\r')
        .find(|s| !s.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.contains("extract: 7 entries, ") && last.contains(" KiB,") && last.contains("B/s"),
        "{:?}",
        r.stdout
    );
    // Not a terminal: nothing at all on stderr.
    let r = im([
        OsStr::new("extract"),
        img.as_os_str(),
        t.join("pipe").as_os_str(),
    ]);
    assert!(r.ok() && r.stderr.is_empty(), "{r:?}");
}
