//! Seeded random operation sequences against an in-memory model on FAT12/16/32: every result
//! (data or errno) must match the model, periodic reopen must show the same tree, and at the
//! end fsck.fat, mtools and the fatfs crate must agree.

mod fat_util;
mod support;

use fat_util::*;
use fs_drivers::block::{BlockCache, DeviceRef, FileDevice};
use fs_drivers::vfs::{FileSystem, SetAttr};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The driver's case folding: one-to-one uppercase per character.
fn fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut u = c.to_uppercase();
            match (u.next(), u.next()) {
                (Some(x), None) => x,
                _ => c,
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
enum M {
    File(Vec<u8>),
    Dir(BTreeMap<String, (String, M)>),
}

impl M {
    fn dir(&self) -> &BTreeMap<String, (String, M)> {
        match self {
            M::Dir(d) => d,
            M::File(_) => panic!("not a dir"),
        }
    }
    fn dir_mut(&mut self) -> &mut BTreeMap<String, (String, M)> {
        match self {
            M::Dir(d) => d,
            M::File(_) => panic!("not a dir"),
        }
    }
    fn at(&self, path: &[String]) -> &M {
        path.iter().fold(self, |m, c| &m.dir()[&fold(c)].1)
    }
    fn at_mut(&mut self, path: &[String]) -> &mut M {
        path.iter()
            .fold(self, |m, c| &mut m.dir_mut().get_mut(&fold(c)).unwrap().1)
    }
    fn flatten(&self, prefix: &str, out: &mut BTreeMap<String, Node>) {
        for (name, m) in self.dir().values() {
            let p = format!("{prefix}/{name}");
            match m {
                M::File(d) => {
                    out.insert(p, Node::File(d.clone()));
                }
                M::Dir(_) => {
                    out.insert(p.clone(), Node::Dir);
                    m.flatten(&p, out);
                }
            }
        }
    }
}

const NAMES: &[&str] = &[
    "a",
    "B",
    "file.txt",
    "File.TXT",
    "readme",
    "README.MD",
    "a long file name number one.text",
    "A Long File Name Number One.TEXT",
    "another long name that shares a prefix 1",
    "another long name that shares a prefix 2",
    "ünïcødé.dat",
    "ÜNÏCØDÉ.DAT",
    "日本語",
    "emoji 😀 name",
    "x.y.z",
    ".hidden",
    "dir1",
    "Dir2",
    "lower.c",
    "MiXeD.Cc",
];

fn pick_dir(rng: &mut Rng, m: &M) -> Vec<String> {
    let mut path = Vec::new();
    loop {
        let subdirs: Vec<String> = m
            .at(&path)
            .dir()
            .values()
            .filter(|(_, c)| matches!(c, M::Dir(_)))
            .map(|(n, _)| n.clone())
            .collect();
        if subdirs.is_empty() || rng.below(3) == 0 || path.len() >= 4 {
            return path;
        }
        path.push(subdirs[rng.below(subdirs.len() as u64) as usize].clone());
    }
}

fn pick_name(rng: &mut Rng, m: &M, dir: &[String]) -> String {
    let d = m.at(dir).dir();
    if !d.is_empty() && rng.below(2) == 0 {
        let v: Vec<&(String, M)> = d.values().collect();
        let n = &v[rng.below(v.len() as u64) as usize].0;
        // Sometimes address an existing entry by another case.
        if rng.below(4) == 0 {
            return n.to_uppercase();
        }
        return n.clone();
    }
    NAMES[rng.below(NAMES.len() as u64) as usize].to_string()
}

fn ino_of(fs: &dyn FileSystem, path: &[String]) -> u64 {
    resolve(fs, &path.join("/")).unwrap()
}

fn errno<T>(r: fs_drivers::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

fn run(bits: u32, size_kib: u32, spc: u32, max_file: u64, ops: usize, seed: u64) {
    let Some(img) = fresh_image(&format!("random{bits}"), bits, size_kib, spc) else {
        return;
    };
    let file: DeviceRef = Arc::new(FileDevice::open(&img, true).unwrap());
    let dev: DeviceRef = Arc::new(BlockCache::new(file, 1 << 20, 4096));
    let mut fs = open_dev(dev.clone(), true);
    let mut model = M::Dir(BTreeMap::new());
    let mut rng = Rng(seed);
    let mut counts = [0usize; 9];
    for step in 0..ops {
        let op = rng.below(100);
        let dir = pick_dir(&mut rng, &model);
        let dino = ino_of(&fs, &dir);
        let name = pick_name(&mut rng, &model, &dir);
        let key = fold(&name);
        let existing = model.at(&dir).dir().get(&key).cloned();
        let ctx = format!("step {step} op {op} dir {dir:?} name {name:?}");
        match op {
            0..=14 => {
                counts[0] += 1;
                let r = errno(fs.create(dino, name.as_bytes(), 0o644));
                let want = if existing.is_some() { 17 } else { 0 };
                assert_eq!(r, want, "create {ctx}");
                if want == 0 {
                    model
                        .at_mut(&dir)
                        .dir_mut()
                        .insert(key, (name, M::File(Vec::new())));
                }
            }
            15..=39 => {
                counts[1] += 1;
                let Some((stored, M::File(mut data))) = existing else {
                    continue;
                };
                let ino = fs.lookup(dino, name.as_bytes()).unwrap().ino;
                let off = rng.below((data.len() as u64 + 3000).min(max_file));
                let cap = if rng.below(10) == 0 { 40_000 } else { 3000 };
                let len = rng.below((max_file - off).min(cap));
                let bytes = rng.bytes(len as usize);
                fs.open(ino, true).unwrap();
                assert_eq!(
                    fs.write(ino, off, &bytes).unwrap(),
                    bytes.len(),
                    "write {ctx}"
                );
                fs.release(ino).unwrap();
                if !bytes.is_empty() {
                    let end = off as usize + bytes.len();
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[off as usize..end].copy_from_slice(&bytes);
                }
                model
                    .at_mut(&dir)
                    .dir_mut()
                    .insert(key, (stored, M::File(data)));
            }
            40..=49 => {
                counts[2] += 1;
                let Some((stored, M::File(mut data))) = existing else {
                    continue;
                };
                let ino = fs.lookup(dino, name.as_bytes()).unwrap().ino;
                let size = rng.below(max_file);
                let a = fs
                    .setattr(
                        ino,
                        &SetAttr {
                            size: Some(size),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                assert_eq!(a.size, size);
                data.resize(size as usize, 0);
                model
                    .at_mut(&dir)
                    .dir_mut()
                    .insert(key, (stored, M::File(data)));
            }
            50..=59 => {
                counts[3] += 1;
                let r = errno(fs.unlink(dino, name.as_bytes()));
                let want = match &existing {
                    None => 2,
                    Some((_, M::Dir(_))) => 21,
                    Some(_) => 0,
                };
                assert_eq!(r, want, "unlink {ctx}");
                if want == 0 {
                    model.at_mut(&dir).dir_mut().remove(&key);
                }
            }
            60..=69 => {
                counts[4] += 1;
                if dir.len() >= 5 {
                    continue;
                }
                let r = errno(fs.mkdir(dino, name.as_bytes(), 0o755));
                let want = if existing.is_some() { 17 } else { 0 };
                assert_eq!(r, want, "mkdir {ctx}");
                if want == 0 {
                    model
                        .at_mut(&dir)
                        .dir_mut()
                        .insert(key, (name, M::Dir(BTreeMap::new())));
                }
            }
            70..=76 => {
                counts[5] += 1;
                let r = errno(fs.rmdir(dino, name.as_bytes()));
                let want = match &existing {
                    None => 2,
                    Some((_, M::File(_))) => 20,
                    Some((_, M::Dir(d))) if !d.is_empty() => 39,
                    Some(_) => 0,
                };
                assert_eq!(r, want, "rmdir {ctx}");
                if want == 0 {
                    model.at_mut(&dir).dir_mut().remove(&key);
                }
            }
            77..=91 => {
                counts[6] += 1;
                let ddir = pick_dir(&mut rng, &model);
                let dd_ino = ino_of(&fs, &ddir);
                let new_name = pick_name(&mut rng, &model, &ddir);
                let nkey = fold(&new_name);
                let r = errno(fs.rename(dino, name.as_bytes(), dd_ino, new_name.as_bytes()));
                let ctx = format!("{ctx} -> {ddir:?} {new_name:?}");
                let Some((stored, src)) = existing else {
                    assert_eq!(r, 2, "rename {ctx}");
                    continue;
                };
                let mut src_path = dir.clone();
                src_path.push(stored.clone());
                let fold_path = |p: &[String]| p.iter().map(|c| fold(c)).collect::<Vec<_>>();
                let is_dir = matches!(src, M::Dir(_));
                let inside = {
                    let (s, d) = (fold_path(&src_path), fold_path(&ddir));
                    d.len() >= s.len() && d[..s.len()] == s[..]
                };
                let target = model.at(&ddir).dir().get(&nkey).cloned();
                let same = fold_path(&dir) == fold_path(&ddir) && key == nkey;
                let want = if is_dir && inside {
                    22
                } else if same {
                    0
                } else {
                    match (&src, &target) {
                        (_, None) => 0,
                        (M::Dir(_), Some((_, M::File(_)))) => 20,
                        (M::File(_), Some((_, M::Dir(_)))) => 21,
                        (M::Dir(_), Some((_, M::Dir(d)))) if !d.is_empty() => 39,
                        _ => 0,
                    }
                };
                assert_eq!(r, want, "rename {ctx}");
                if want == 0 {
                    model.at_mut(&dir).dir_mut().remove(&key);
                    model.at_mut(&ddir).dir_mut().insert(nkey, (new_name, src));
                }
            }
            _ => {
                counts[7] += 1;
                let Some((_, M::File(data))) = existing else {
                    continue;
                };
                let a = fs.lookup(dino, name.as_bytes()).unwrap();
                assert_eq!(a.size, data.len() as u64, "size {ctx}");
                assert!(read_all(&fs, a.ino, a.size) == data, "data {ctx}");
            }
        }
        if step % 700 == 699 {
            counts[8] += 1;
            let mut want = BTreeMap::new();
            model.flatten("", &mut want);
            let got = walk(&fs);
            assert!(
                got == want,
                "step {step}: tree differs:\n{}",
                diff(&got, &want)
            );
            fs.sync().unwrap();
            drop(fs);
            fs = open_dev(dev.clone(), true);
            let again = walk(&fs);
            assert!(
                again == want,
                "step {step}: after reopen:\n{}",
                diff(&again, &want)
            );
        }
    }
    eprintln!(
        "FAT{bits}: ops create/write/trunc/unlink/mkdir/rmdir/rename/read/reopen = {counts:?}"
    );
    let mut want = BTreeMap::new();
    model.flatten("", &mut want);
    assert!(walk(&fs) == want);
    let files = want.values().filter(|n| matches!(n, Node::File(_))).count();
    let bytes: usize = want
        .values()
        .map(|n| if let Node::File(d) = n { d.len() } else { 0 })
        .sum();
    eprintln!(
        "FAT{bits}: final tree {} entries, {files} files, {bytes} bytes",
        want.len()
    );
    fs.sync().unwrap();
    drop(fs);
    if have("fsck.fat") {
        fsck(&img).unwrap_or_else(|e| panic!("fsck.fat FAT{bits} after {ops} random ops:\n{e}"));
    }
    let theirs = walk_fatfs(&std::fs::read(&img).unwrap());
    assert!(theirs == want, "fatfs view:\n{}", diff(&theirs, &want));
    if have("mdir") {
        // mtools cannot show names outside the BMP; compare only when there are none.
        // mtools shows a character outside the BMP (a surrogate pair) as two '_'.
        let strip = |k: &String| {
            k.chars()
                .map(|c| {
                    if (c as u32) > 0xFFFF {
                        "__".to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect::<String>()
        };
        let mt: BTreeMap<String, Node> = want.iter().map(|(k, v)| (strip(k), v.clone())).collect();
        check_with_mtools(&img, &mt);
    }
    let _ = std::fs::remove_file(&img);
}

#[test]
fn random_ops_fat12() {
    run(12, 8192, 8, 48 << 10, 3000, 0xF12);
}

#[test]
fn random_ops_fat16() {
    run(16, 32768, 4, 96 << 10, 3000, 0xF16);
}

#[test]
fn random_ops_fat32() {
    run(32, 40960, 1, 96 << 10, 3000, 0xF32);
}
