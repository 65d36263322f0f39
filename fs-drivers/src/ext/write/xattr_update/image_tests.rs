//! `set`/`remove` on images mkfs made, judged by e2fsck, by the reader, and (as root) by the
//! kernel's loop mount. The inode bytes are read from and written back to the image file
//! with their checksum redone here; blocks are allocated and freed through debugfs, which
//! keeps the bitmaps, counters and their checksums right.

use crate::ext::write::test_tools as tools;

use super::*;
use crate::block::FileDevice;
use crate::ext::checksum::crc32c_raw;
use crate::ext::superblock::Superblock;
use crate::ext::{ExtFs, ExtOptions};
use crate::vfs::FileSystem;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

type Attrs = BTreeMap<Vec<u8>, Vec<u8>>;

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .env("PATH", tools::sbin_path())
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"))
}

struct Img {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sb: Superblock,
}

impl Img {
    fn new(mkfs: &str, opts: &[&str], files: &[&str]) -> Img {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        let p = path.to_str().unwrap();
        let mut args = vec!["-q", "-F"];
        args.extend(opts);
        args.extend([p, "8M"]);
        let out = run(mkfs, &args);
        assert!(out.status.success(), "{mkfs}: {:?}", out);
        let content = dir.path().join("content");
        std::fs::write(&content, b"some file content\n").unwrap();
        let mut cmds = String::new();
        for f in files {
            match f.strip_suffix('/') {
                Some(d) => cmds += &format!("mkdir {d}\n"),
                None => cmds += &format!("write {} {f}\n", content.display()),
            }
        }
        let cmdfile = dir.path().join("cmds");
        std::fs::write(&cmdfile, cmds).unwrap();
        let out = run("debugfs", &["-w", "-f", cmdfile.to_str().unwrap(), p]);
        assert!(out.status.success());
        let mut sbbuf = vec![0u8; 1024];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut sbbuf, 1024)
            .unwrap();
        let sb = Superblock::parse(&sbbuf).unwrap();
        Img {
            _dir: dir,
            path,
            sb,
        }
    }

    fn p(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn debugfs(&self, req: &str, write: bool) -> String {
        let mut args = vec![];
        if write {
            args.push("-w");
        }
        args.extend(["-R", req, self.p()]);
        let out = run("debugfs", &args);
        assert!(out.status.success(), "debugfs {req}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn bs(&self) -> usize {
        self.sb.block_size as usize
    }

    /// The inode number and byte offset in the image of `path`'s inode.
    fn locate(&self, path: &str) -> (u32, u64) {
        let out = self.debugfs(&format!("imap {path}"), false);
        let num = |after: &str, radix: u32| -> u64 {
            let s = out.split(after).nth(1).expect(after).trim_start();
            let s = s.trim_start_matches("0x");
            let end = s.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(s.len());
            u64::from_str_radix(&s[..end], radix).unwrap()
        };
        let ino = num("Inode ", 10) as u32;
        let pos = num("located at block ", 10) * self.bs() as u64 + num("offset ", 16);
        (ino, pos)
    }

    fn ctx(&self, ino: u32) -> XattrCtx {
        XattrCtx {
            ino,
            csum_seed: self.sb.metadata_csum().then(|| self.sb.csum_seed()),
            goal: u64::from(self.sb.first_data_block),
        }
    }

    /// Runs `f` on `path`'s raw inode with a store over the image, then writes the inode
    /// back with i_blocks moved by the returned block delta and its checksum redone.
    fn edit(&self, path: &str, f: impl FnOnce(&mut dyn Store, &XattrCtx, &mut [u8]) -> i64) {
        let (ino, pos) = self.locate(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap();
        let mut raw = vec![0u8; usize::from(self.sb.inode_size)];
        file.read_exact_at(&mut raw, pos).unwrap();
        let mut store = ImgStore { img: self };
        let delta = f(&mut store, &self.ctx(ino), &mut raw);
        let sectors = delta * (self.bs() / 512) as i64;
        let blocks = i64::from(u32_at(&raw, 0x1C)) + sectors;
        raw[0x1C..0x20].copy_from_slice(&(blocks as u32).to_le_bytes());
        if self.sb.metadata_csum() {
            set_inode_csum(&mut raw, ino, self.sb.csum_seed());
        }
        file.write_all_at(&raw, pos).unwrap();
    }

    fn fsck_clean(&self) {
        let out = run("e2fsck", &["-fn", self.p()]);
        assert!(
            out.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The attributes of each path as the reader lists them.
    fn reader_view(&self, paths: &[&str]) -> BTreeMap<String, Attrs> {
        let dev = Arc::new(FileDevice::open(&self.path, false).unwrap());
        let fs = ExtFs::open(dev, ExtOptions::default()).unwrap();
        let mut all = BTreeMap::new();
        for p in paths {
            let ino = walk(&fs, p).ino;
            let mut attrs = Attrs::new();
            for n in fs.listxattr(ino).unwrap() {
                let v = fs.getxattr(ino, &n).unwrap();
                attrs.insert(n, v);
            }
            all.insert(p.to_string(), attrs);
        }
        all
    }

    fn perm(&self, path: &str) -> u16 {
        let dev = Arc::new(FileDevice::open(&self.path, false).unwrap());
        let fs = ExtFs::open(dev, ExtOptions::default()).unwrap();
        walk(&fs, path).perm
    }

    /// The attributes of each path as the kernel shows them, and getfacl's text for the
    /// first one; None when not root.
    fn kernel_view(&self, paths: &[&str]) -> Option<(BTreeMap<String, Attrs>, String)> {
        if unsafe_free_is_root() {
            let mnt = self._dir.path().join("mnt");
            std::fs::create_dir_all(&mnt).unwrap();
            let m = mnt.to_str().unwrap();
            let out = run("mount", &["-o", "loop,ro", self.p(), m]);
            assert!(out.status.success(), "mount: {out:?}");
            let mut all = BTreeMap::new();
            for p in paths {
                all.insert(p.to_string(), getfattr(&mnt.join(p)));
            }
            let acl = if tools::have_tool("getfacl") {
                let out = run(
                    "getfacl",
                    &["-n", "--omit-header", mnt.join(paths[0]).to_str().unwrap()],
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                String::new()
            };
            let out = run("umount", &[m]);
            assert!(out.status.success(), "umount: {out:?}");
            return Some((all, acl));
        }
        eprintln!("SKIP kernel view: not root");
        None
    }
}

fn walk(fs: &ExtFs, path: &str) -> crate::vfs::Attr {
    let mut attr = fs.getattr(fs.root()).unwrap();
    for c in path.split('/') {
        attr = fs.lookup(attr.ino, c.as_bytes()).unwrap();
    }
    attr
}

/// Whether we run as root, from /proc (the crate forbids unsafe, so no geteuid).
fn unsafe_free_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn getfattr(path: &Path) -> Attrs {
    let p = path.to_str().unwrap();
    let out = run(
        "getfattr",
        &["-d", "-m", "-", "-e", "hex", "--absolute-names", p],
    );
    let mut attrs = Attrs::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.strip_prefix("0x").unwrap_or("");
            let bytes = (0..v.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&v[i..i + 2], 16).unwrap())
                .collect();
            attrs.insert(k.as_bytes().to_vec(), bytes);
        }
    }
    attrs
}

/// ext4_inode_csum_set: crc32c(seed(ino, generation), inode with its checksum fields zero);
/// the high half only when the extra area reaches it.
fn set_inode_csum(raw: &mut [u8], ino: u32, fs_seed: u32) {
    let gen = u32_at(raw, 0x64);
    let seed = crc32c_raw(crc32c_raw(fs_seed, &ino.to_le_bytes()), &gen.to_le_bytes());
    let has_hi = raw.len() > 128 && u16_at(raw, 0x80) >= 4;
    raw[0x7C..0x7E].fill(0);
    if has_hi {
        raw[0x82..0x84].fill(0);
    }
    let c = crc32c_raw(seed, raw);
    raw[0x7C..0x7E].copy_from_slice(&(c as u16).to_le_bytes());
    if has_hi {
        raw[0x82..0x84].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    }
}

struct ImgStore<'a> {
    img: &'a Img,
}

impl Store for ImgStore<'_> {
    fn block_size(&self) -> usize {
        self.img.bs()
    }
    fn metadata_csum(&self) -> bool {
        self.img.sb.metadata_csum()
    }
    fn read_meta(&mut self, blk: u64) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.block_size()];
        std::fs::File::open(&self.img.path)?.read_exact_at(&mut b, blk * self.img.bs() as u64)?;
        Ok(b)
    }
    fn write_meta(&mut self, blk: u64, data: Vec<u8>) -> Result<()> {
        let f = OpenOptions::new().write(true).open(&self.img.path)?;
        f.write_all_at(&data, blk * data.len() as u64)?;
        Ok(())
    }
    fn alloc_blocks(&mut self, goal: u64, _want: u64) -> Result<(u64, u64)> {
        let out = self.img.debugfs(&format!("ffb 1 {goal}"), false);
        let blk: u64 = out
            .split("Free blocks found:")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .ok_or(Error::NoSpace)?;
        self.img.debugfs(&format!("setb {blk}"), true);
        self.count_free(blk, -1);
        Ok((blk, 1))
    }
    fn free_blocks(&mut self, first: u64, count: u64) -> Result<()> {
        assert_eq!(count, 1);
        self.img.debugfs(&format!("freeb {first}"), true);
        self.count_free(first, 1);
        Ok(())
    }
}

impl ImgStore<'_> {
    /// setb/freeb leave the free-block counters alone: move the group's and the
    /// superblock's by `delta` (the group checksum redone).
    fn count_free(&self, blk: u64, delta: i64) {
        let sb = &self.img.sb;
        let g = (blk - u64::from(sb.first_data_block)) / u64::from(sb.blocks_per_group);
        let stats = self.img.debugfs("stats", false);
        let num_before = |text: &str, label: &str| -> i64 {
            let head = text.split(label).next().unwrap();
            head.split_whitespace().last().unwrap().parse().unwrap()
        };
        let group = stats
            .split(&format!("Group {g:>2}:"))
            .nth(1)
            .expect("group in stats");
        let group_free = num_before(group, " free blocks,") + delta;
        let total = stats.split("Free blocks:").nth(1).unwrap();
        let total: i64 = total.split_whitespace().next().unwrap().parse().unwrap();
        let cmds = format!(
            "set_bg {g} free_blocks_count {group_free}\nset_bg {g} checksum calc\n\
             ssv free_blocks_count {}\n",
            total + delta
        );
        let file = self.img._dir.path().join("count.cmds");
        std::fs::write(&file, cmds).unwrap();
        let out = run(
            "debugfs",
            &["-w", "-f", file.to_str().unwrap(), self.img.p()],
        );
        assert!(out.status.success());
    }
}

/// The kernel's xattr form of an ACL.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut x = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        x.extend(tag.to_le_bytes());
        x.extend(perm.to_le_bytes());
        x.extend(id.to_le_bytes());
    }
    x
}

const U: u32 = u32::MAX;

/// A scripted mix on three inodes: small values (in-inode when there is room), values that
/// only fit the block, ACLs in both namespaces, replacement that moves a value between the
/// areas, and removals down to nothing on one inode (its block freed). Every image must end
/// e2fsck-clean with the reader and the kernel showing exactly the model.
fn scenario(mkfs: &str, opts: &[&str]) {
    if !tools::require_tools(&[mkfs, "debugfs", "e2fsck", "getfattr"]) {
        return;
    }
    let paths = ["f1", "f2", "d"];
    let img = Img::new(mkfs, opts, &["f1", "f2", "d/"]);
    let mut model: BTreeMap<String, Attrs> = paths
        .iter()
        .map(|p| (p.to_string(), Attrs::new()))
        .collect();
    let access = acl(&[
        (1, 6, U),
        (2, 6, 1000),
        (4, 4, U),
        (8, 5, 50),
        (0x10, 6, U),
        (0x20, 4, U),
    ]);
    let default = acl(&[(1, 7, U), (4, 5, U), (0x20, 0, U)]);
    let big = (0..500u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    type Step<'a> = (&'a str, &'a [u8], Option<Vec<u8>>);
    let steps: Vec<Step> = vec![
        ("f1", b"user.small", Some(b"hi".to_vec())),
        ("f1", b"user.big", Some(big.clone())),
        ("f1", b"trusted.t", Some(b"trusted value".to_vec())),
        ("f1", b"security.s", Some(vec![0; 40])),
        ("f1", b"system.posix_acl_access", Some(access.clone())),
        ("d", b"system.posix_acl_default", Some(default.clone())),
        ("d", b"system.posix_acl_access", Some(access.clone())),
        ("f1", b"user.small", Some(vec![9; 120])),
        ("f1", b"user.big", Some(b"now small".to_vec())),
        ("f1", b"trusted.t", None),
        ("f2", b"user.a", Some(vec![1; 300])),
        ("f2", b"user.b", Some(b"b".to_vec())),
        ("f2", b"user.a", None),
        ("f2", b"user.b", None),
        ("f2", b"user.c", Some(vec![3; 10])),
    ];
    for (path, name, value) in steps {
        img.edit(path, |store, ctx, raw| match &value {
            Some(v) => set(store, ctx, raw, name, v, XattrSet::Either).unwrap(),
            None => remove(store, ctx, raw, name).unwrap(),
        });
        let attrs = model.get_mut(path).unwrap();
        match value {
            Some(v) => attrs.insert(name.to_vec(), v),
            None => attrs.remove(name),
        };
    }
    // An ACL the mode says all of only sets the mode.
    img.edit("f2", |store, ctx, raw| {
        set(
            store,
            ctx,
            raw,
            b"system.posix_acl_access",
            &default,
            XattrSet::Create,
        )
        .unwrap()
    });
    img.fsck_clean();
    assert_eq!(img.perm("f2") & 0o777, 0o750);
    assert_eq!(img.perm("f1") & 0o777, 0o664, "the mask is the group bits");
    assert_eq!(img.reader_view(&paths), model, "reader");
    if let Some((kernel, acl_text)) = img.kernel_view(&paths) {
        assert_eq!(kernel, model, "kernel");
        if tools::have_tool("getfacl") {
            for line in ["user:1000:rw-", "group:50:r-x", "mask::rw-", "other::r--"] {
                assert!(acl_text.contains(line), "getfacl: {acl_text}");
            }
        }
    }
    // Dropping the blocks (as for deleted inodes) frees them: e2fsck then counts the free
    // blocks back, and a block still referenced would be a "multiply-claimed" error.
    let free_before = free_blocks(&img);
    let mut dropped = 0;
    for p in paths {
        img.edit(p, |store, ctx, raw| {
            let d = drop_block(store, ctx, raw).unwrap();
            dropped -= d;
            d
        });
    }
    assert!(dropped >= 1);
    assert_eq!(free_blocks(&img), free_before + dropped as u64);
    img.fsck_clean();
}

fn free_blocks(img: &Img) -> u64 {
    let out = img.debugfs("stats", false);
    let s = out.split("Free blocks:").nth(1).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn ext4_256_byte_inodes() {
    scenario("mkfs.ext4", &["-I", "256", "-b", "4096"]);
}

#[test]
fn ext4_128_byte_inodes_all_in_blocks() {
    scenario("mkfs.ext4", &["-I", "128", "-b", "1024"]);
}

#[test]
fn ext4_without_metadata_csum() {
    scenario(
        "mkfs.ext4",
        &["-I", "256", "-b", "1024", "-O", "^metadata_csum"],
    );
}

#[test]
fn ext2_with_ext_attr() {
    scenario("mkfs.ext2", &["-O", "ext_attr", "-I", "128", "-b", "1024"]);
}

impl Img {
    /// Runs `script` (sh) with $M the image's read-write loop mount; false when not root.
    fn with_kernel_rw(&self, script: &str) -> bool {
        if !unsafe_free_is_root() {
            eprintln!("SKIP kernel-written xattrs: not root");
            return false;
        }
        let mnt = self._dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let m = mnt.to_str().unwrap();
        let out = run("mount", &["-o", "loop", self.p(), m]);
        assert!(out.status.success(), "mount: {out:?}");
        let out = Command::new("sh")
            .args(["-ec", script])
            .env("M", m)
            .output()
            .unwrap();
        let un = run("umount", &[m]);
        assert!(out.status.success(), "script: {out:?}");
        assert!(un.status.success(), "umount: {un:?}");
        true
    }

    fn file_acl(&self, path: &str) -> u64 {
        let out = self.debugfs(&format!("stat {path}"), false);
        let s = out.split("File ACL: ").nth(1).expect("File ACL");
        s.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn refcount(&self, blk: u64) -> u32 {
        let mut b = vec![0u8; self.bs()];
        std::fs::File::open(&self.path)
            .unwrap()
            .read_exact_at(&mut b, blk * self.bs() as u64)
            .unwrap();
        u32_at(&b, H_REFCOUNT)
    }
}

/// A block the kernel shares among three inodes (identical attributes, found in its
/// mbcache): changing one inode copies it, removing another's last attribute only drops
/// its reference, and dropping the last reference frees it.
#[test]
fn kernel_shared_block_copy_on_write() {
    if !tools::require_tools(&["mkfs.ext4", "debugfs", "e2fsck", "getfattr", "setfattr"]) {
        return;
    }
    let img = Img::new("mkfs.ext4", &["-I", "128", "-b", "1024"], &["a", "b", "c"]);
    if !img.with_kernel_rw("for f in a b c; do setfattr -n user.same -v shared $M/$f; done") {
        return;
    }
    let shared = img.file_acl("a");
    assert!(shared != 0 && img.file_acl("b") == shared && img.file_acl("c") == shared);
    assert_eq!(
        img.refcount(shared),
        3,
        "the kernel did not share the block"
    );

    img.edit("a", |store, ctx, raw| {
        set(store, ctx, raw, b"user.mine", b"1", XattrSet::Create).unwrap()
    });
    assert_ne!(img.file_acl("a"), shared);
    assert_eq!(img.refcount(shared), 2);
    img.edit("b", |store, ctx, raw| {
        remove(store, ctx, raw, b"user.same").unwrap()
    });
    assert_eq!(img.file_acl("b"), 0);
    assert_eq!(img.refcount(shared), 1);
    img.fsck_clean();

    let same = (b"user.same".to_vec(), b"shared".to_vec());
    let expect: BTreeMap<String, Attrs> = [
        (
            "a",
            Attrs::from([same.clone(), (b"user.mine".to_vec(), b"1".to_vec())]),
        ),
        ("b", Attrs::new()),
        ("c", Attrs::from([same])),
    ]
    .into_iter()
    .map(|(p, a)| (p.to_string(), a))
    .collect();
    assert_eq!(img.reader_view(&["a", "b", "c"]), expect);
    let (kernel, _) = img.kernel_view(&["a", "b", "c"]).unwrap();
    assert_eq!(kernel, expect);

    let free = free_blocks(&img);
    img.edit("c", |store, ctx, raw| drop_block(store, ctx, raw).unwrap());
    assert_eq!(free_blocks(&img), free + 1);
    // The last reference gone, the block is free again for e2fsck's bitmap check.
    assert_eq!(img.file_acl("c"), 0);
    img.fsck_clean();
}

/// Attributes the kernel laid out (in-inode and block, an ACL from setfacl) are kept intact
/// when other ones change around them.
#[test]
fn kernel_written_attributes_survive_updates() {
    let tools_needed = [
        "mkfs.ext4",
        "debugfs",
        "e2fsck",
        "getfattr",
        "setfattr",
        "setfacl",
    ];
    if !tools::require_tools(&tools_needed) {
        return;
    }
    let img = Img::new("mkfs.ext4", &["-I", "256", "-b", "1024"], &["f"]);
    let script = "setfattr -n user.k1 -v one $M/f; \
                  setfattr -n user.k2 -v 0x$(printf '%0600d' 7) $M/f; \
                  setfattr -n trusted.k3 -v three $M/f; \
                  setfacl -m u:1234:rwx $M/f";
    if !img.with_kernel_rw(script) {
        return;
    }
    let (before, _) = img.kernel_view(&["f"]).unwrap();
    let before = before["f"].clone();
    assert_eq!(before.len(), 4, "{before:?}");
    assert_ne!(
        img.file_acl("f"),
        0,
        "the kernel put the long value in a block"
    );
    let mut model = before.clone();
    img.edit("f", |store, ctx, raw| {
        let mut d = remove(store, ctx, raw, b"user.k1").unwrap();
        d += set(store, ctx, raw, b"user.new", &[5; 50], XattrSet::Create).unwrap();
        d += set(store, ctx, raw, b"trusted.k3", b"3", XattrSet::Replace).unwrap();
        d
    });
    model.remove(b"user.k1".as_slice());
    model.insert(b"user.new".to_vec(), vec![5; 50]);
    model.insert(b"trusted.k3".to_vec(), b"3".to_vec());
    img.fsck_clean();
    assert_eq!(img.reader_view(&["f"])["f"], model);
    let (kernel, acl_text) = img.kernel_view(&["f"]).unwrap();
    assert_eq!(kernel["f"], model);
    assert!(acl_text.contains("user:1234:rwx"), "{acl_text}");
}

impl Img {
    fn raw_inode(&self, path: &str) -> Vec<u8> {
        let (_, pos) = self.locate(path);
        let mut raw = vec![0u8; usize::from(self.sb.inode_size)];
        std::fs::File::open(&self.path)
            .unwrap()
            .read_exact_at(&mut raw, pos)
            .unwrap();
        raw
    }
}

/// New inodes under a directory with a default ACL get what the kernel gives its own new
/// inodes there: the same ACLs and the same mode, for a file (asked mode 0666) and a
/// directory (0777), umask ignored; and the umask alone where there is no default ACL.
#[test]
fn inherited_acls_match_the_kernel() {
    let needed = ["mkfs.ext4", "debugfs", "e2fsck", "getfattr", "setfacl"];
    if !tools::require_tools(&needed) {
        return;
    }
    for inode_size in ["256", "128"] {
        let files = ["p/", "p/of", "p/od/", "q/", "q/of"];
        let img = Img::new("mkfs.ext4", &["-I", inode_size, "-b", "1024"], &files);
        let script = "umask 022; setfacl -d -m u:1234:rwx,g::r-x,m::rwx,o::r-- $M/p; \
                      touch $M/p/kf; mkdir $M/p/kd; touch $M/q/kf";
        if !img.with_kernel_rw(script) {
            return;
        }
        let children = [
            ("p/of", 0o100_666u16, "p"),
            ("p/od", 0o040_777, "p"),
            ("q/of", 0o100_666, "q"),
        ];
        for (child, asked, parent) in children {
            let parent_raw = img.raw_inode(parent);
            img.edit(child, |store, ctx, raw| {
                raw[0..2].copy_from_slice(&asked.to_le_bytes());
                inherit_acls(store, ctx, &parent_raw, raw, 0o022).unwrap()
            });
        }
        img.fsck_clean();
        let paths = ["p/of", "p/kf", "p/od", "p/kd", "q/of", "q/kf"];
        let (kernel, _) = img.kernel_view(&paths).unwrap();
        assert_eq!(kernel["p/of"], kernel["p/kf"]);
        assert_eq!(kernel["p/od"], kernel["p/kd"]);
        assert_eq!(kernel["p/od"].len(), 2, "{:?}", kernel["p/od"]);
        assert_eq!(kernel["q/of"], kernel["q/kf"]);
        for (ours, theirs) in [("p/of", "p/kf"), ("p/od", "p/kd"), ("q/of", "q/kf")] {
            assert_eq!(img.perm(ours), img.perm(theirs), "{ours}");
        }
        assert_eq!(img.reader_view(&paths)["p/of"], kernel["p/kf"]);
    }
}
