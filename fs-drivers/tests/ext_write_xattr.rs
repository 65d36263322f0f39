//! setxattr/removexattr through an rw `ExtFs` on images this machine's mke2fs made: seeded
//! random sets and removes (every namespace, values for the inode area and for the block,
//! ACLs) on files, a directory and symlinks, checked against a model while mounted, then
//! after a clean close by `e2fsck -fn`, by our reader reopened, and (as root) by the kernel's
//! read-only loop mount.

mod support;

use fs_drivers::ext::{ExtFs, ExtOptions};
use fs_drivers::vfs::{FileSystem, FileType, NewNode, XattrSet};
use fs_drivers::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::ext_rw::{self, is_root};
use support::kernel_view::xattrs_tree;
use support::require_tools;

type Attrs = BTreeMap<Vec<u8>, Vec<u8>>;

fn mkfs(name: &str, fs_type: &str, args: &[&str]) -> PathBuf {
    ext_rw::mkfs_image("ext_write_xattr", name, fs_type, args, 16)
}

fn open(img: &Path, rw: bool) -> ExtFs {
    let dev = ext_rw::cached_device(img, rw);
    if rw {
        ExtFs::open_rw(dev, ExtOptions::default()).unwrap()
    } else {
        ExtFs::open(dev, ExtOptions::default()).unwrap()
    }
}

fn xattrs(fs: &ExtFs, ino: u64) -> Attrs {
    fs.listxattr(ino)
        .unwrap()
        .into_iter()
        .map(|n| {
            let v = fs.getxattr(ino, &n).unwrap();
            (n, v)
        })
        .collect()
}

fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut x = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        x.extend(tag.to_le_bytes());
        x.extend(perm.to_le_bytes());
        x.extend(id.to_le_bytes());
    }
    x
}

fn run_variant(name: &str, fs_type: &str, args: &[&str]) {
    if !require_tools(&[&format!("mkfs.{fs_type}"), "e2fsck", "getfattr"]) {
        return;
    }
    let img = mkfs(name, fs_type, args);
    let fs = open(&img, true);
    let root = fs.root();
    let node = |kind, perm| NewNode {
        kind,
        perm,
        uid: 0,
        gid: 0,
        rdev: 0,
        umask: 0,
    };
    let mut targets = Vec::new();
    for n in ["f1", "f2", "f3"] {
        let a = fs
            .make_node(root, n.as_bytes(), &node(FileType::Regular, 0o644))
            .unwrap();
        fs.write(a.ino, 0, b"data").unwrap();
        targets.push((n.to_string(), a.ino));
    }
    let d = fs
        .make_node(root, b"d", &node(FileType::Directory, 0o755))
        .unwrap();
    targets.push(("d".into(), d.ino));
    let s = fs.symlink(root, b"fast", b"f1", 0, 0).unwrap();
    targets.push(("fast".into(), s.ino));
    let mut model: BTreeMap<String, Attrs> = targets
        .iter()
        .map(|(n, _)| (n.clone(), Attrs::new()))
        .collect();

    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ name.len() as u64;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let bs = fs.statfs().unwrap().block_size as usize;
    for step in 0..600 {
        let (path, ino) = targets[rnd(targets.len() as u64) as usize].clone();
        let ns = ["user.", "trusted.", "security."][rnd(3) as usize];
        let attr = format!("{ns}{}", "k".repeat(1 + rnd(6) as usize)).into_bytes();
        let attrs = model.get_mut(&path).unwrap();
        if path == "fast" && ns == "user." {
            // The kernel's rule: user attributes only on files and directories.
            let r = fs.setxattr(ino, &attr, b"v", XattrSet::Either);
            assert!(matches!(r, Err(Error::NotPermitted(_))), "step {step}");
            continue;
        }
        if rnd(3) == 0 {
            let r = fs.removexattr(ino, &attr);
            match attrs.remove(&attr) {
                Some(_) => r.unwrap(),
                None => assert!(matches!(r, Err(Error::NoData)), "step {step}"),
            }
        } else {
            let len = [0, 3, 30, 90, 300, 900][rnd(6) as usize];
            let value = vec![rnd(256) as u8; len];
            let how = [XattrSet::Either, XattrSet::Create, XattrSet::Replace][rnd(3) as usize];
            let r = fs.setxattr(ino, &attr, &value, how);
            let exists = attrs.contains_key(&attr);
            match (how, exists, r) {
                (XattrSet::Create, true, r) => assert!(matches!(r, Err(Error::Exists))),
                (XattrSet::Replace, false, r) => assert!(matches!(r, Err(Error::NoData))),
                (_, _, Ok(())) => {
                    attrs.insert(attr, value);
                }
                (_, _, Err(Error::NoSpace)) => {
                    let used: usize = attrs
                        .iter()
                        .filter(|(n, _)| **n != attr)
                        .map(|(n, v)| 16 + n.len() + 3 + v.len() + 3)
                        .sum();
                    assert!(
                        used + len + attr.len() + 19 > bs - 36,
                        "step {step}: ENOSPC"
                    );
                }
                (_, _, Err(e)) => panic!("step {step}: {e}"),
            }
        }
        if step % 50 == 0 {
            for (p, i) in &targets {
                assert_eq!(xattrs(&fs, *i), model[p], "step {step}: {p} while mounted");
            }
        }
    }
    // ACLs: a named-user access ACL on a file, a default ACL on the directory.
    let access = acl(&[
        (1, 6, !0),
        (2, 6, 1000),
        (4, 4, !0),
        (0x10, 6, !0),
        (0x20, 4, !0),
    ]);
    let default = acl(&[(1, 7, !0), (4, 5, !0), (0x20, 0, !0)]);
    fs.setxattr(
        targets[0].1,
        b"system.posix_acl_access",
        &access,
        XattrSet::Either,
    )
    .unwrap();
    fs.setxattr(
        d.ino,
        b"system.posix_acl_default",
        &default,
        XattrSet::Either,
    )
    .unwrap();
    model
        .get_mut("f1")
        .unwrap()
        .insert(b"system.posix_acl_access".to_vec(), access);
    model
        .get_mut("d")
        .unwrap()
        .insert(b"system.posix_acl_default".to_vec(), default);
    assert_eq!(fs.getattr(targets[0].1).unwrap().perm, 0o664);
    // The fast symlink stays one with an xattr block counted in its blocks.
    assert_eq!(fs.readlink(s.ino).unwrap(), b"f1");
    // A file with attributes removed: its block (if any) goes with it.
    let gone = fs
        .make_node(root, b"gone", &node(FileType::Regular, 0o644))
        .unwrap();
    fs.setxattr(gone.ino, b"user.big", &vec![1; bs / 2], XattrSet::Either)
        .unwrap();
    fs.unlink(root, b"gone").unwrap();
    drop(fs);

    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .env("PATH", support::sbin_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: e2fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ro = open(&img, false);
    for (p, a) in &model {
        let ino = ro.lookup(ro.root(), p.as_bytes()).unwrap().ino;
        assert_eq!(&xattrs(&ro, ino), a, "{name}: {p} after reopen");
    }
    if !is_root() {
        eprintln!("SKIP kernel view: not root");
        return;
    }
    let mnt = img.with_extension("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(&img)
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount");
    let tree = xattrs_tree(&mnt);
    support::kernel_view::unmount(&mnt);
    for (p, a) in &model {
        let k = tree.get(p.as_bytes()).cloned().unwrap_or_default();
        assert_eq!(&k, a, "{name}: kernel view of {p}");
    }
}

#[test]
fn ext4_defaults() {
    run_variant("ext4", "ext4", &[]);
}

#[test]
fn ext4_128_byte_inodes_1k() {
    run_variant("ext4_128", "ext4", &["-I", "128", "-b", "1024"]);
}

#[test]
fn ext4_no_metadata_csum() {
    run_variant("ext4_nocsum", "ext4", &["-O", "^metadata_csum"]);
}

#[test]
fn ext3_defaults() {
    run_variant("ext3", "ext3", &[]);
}

#[test]
fn ext2_defaults() {
    run_variant("ext2", "ext2", &[]);
}

/// Without the ext_attr feature the first attribute turns it on, as the kernel does;
/// e2fsck would otherwise call every xattr block invalid.
#[test]
fn ext2_without_ext_attr_feature() {
    run_variant("ext2_noea", "ext2", &["-O", "^ext_attr", "-I", "128"]);
}
