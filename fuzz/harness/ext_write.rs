// The `ext_write` fuzz target, `include!`d by harness.rs (which provides the imports,
// `walk_all` and `name_from`). e2fsck cannot run inside the fuzzer, so `ext_check` re-reads
// the image the writer left and checks what e2fsck's passes 1 and 5 would: every block
// owned once (by metadata, an inode's extent tree or block map, or a shared xattr block with
// the right refcount), the bitmaps equal to what is owned and in use, each inode's i_blocks,
// and the group and superblock counters. The tree is then walked through the reader and
// every name's link count checked.
//
// Input layout: byte 0 = script length n, n script bytes, then the image as sparse records
// ([u32 LE offset in 512-byte sectors][u16 LE length][bytes] over zeros, as vdisk.rs), so
// megabyte images with a journal fit in a few KiB and the fuzzer mutates metadata, not zeros.

const EXT_MAX_IMAGE: u64 = 16 << 20;

/// The image a sparse description gives (None when it is empty or too large).
pub fn ext_sparse_image(data: &[u8]) -> Option<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut size = 0u64;
    let mut rest = data;
    while rest.len() >= 6 {
        let off = u64::from(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]])) * 512;
        let len = usize::from(u16::from_le_bytes([rest[4], rest[5]])).min(rest.len() - 6);
        pieces.push((off, &rest[6..6 + len]));
        rest = &rest[6 + len..];
        size = size.max(off + len as u64);
    }
    if size == 0 || size > EXT_MAX_IMAGE {
        return None;
    }
    let mut img = vec![0u8; size as usize];
    for (off, bytes) in pieces {
        img[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    }
    Some(img)
}

pub fn fuzz_ext_write(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (script, image) = rest.split_at(n);
    let Some(image) = ext_sparse_image(image) else {
        return;
    };
    // Only images that are consistent to begin with judge the writer: the block-level
    // checks, and every directory readable with the right link counts.
    if ext_check(&image).is_err() {
        return;
    }
    let before: DeviceRef = Arc::new(MemDevice::read_only(image.clone()));
    match fs_drivers::ext::ExtFs::open(before, Default::default()) {
        Ok(fs) if ext_check_links(&fs).is_ok() => {}
        _ => return,
    }
    let mem = Arc::new(MemDevice::from_vec(image));
    let Ok(Some(probe)) = fs_drivers::probe::probe(&*mem) else {
        return;
    };
    let opts = fs_drivers::disk::FsOptions {
        writable: true,
        ..Default::default()
    };
    // Until ext is writable this is where every input ends.
    let Ok(fs) = fs_drivers::disk::open_filesystem(mem.clone(), &probe, &opts) else {
        return;
    };
    if !fs.is_writable() {
        return;
    }
    run_ext_script(&*fs, script);
    if fs.sync().is_err() {
        return;
    }
    drop(fs);
    let after = mem.contents();
    if let Err(e) = ext_check(&after) {
        panic!("ext_write: the image the writer left is inconsistent: {e}");
    }
    let dev: DeviceRef = Arc::new(MemDevice::read_only(after));
    let fs = fs_drivers::ext::ExtFs::open(dev, Default::default())
        .unwrap_or_else(|e| panic!("ext_write: the written image does not open: {e}"));
    if let Err(e) = ext_check_links(&fs) {
        panic!("ext_write: {e}");
    }
    walk_all(&fs);
}

/// The operations of `run_script` plus what only ext has: symlinks (fast and slow), hard
/// links, special files, xattrs, fallocate modes, rename flags.
fn run_ext_script(fs: &dyn FileSystem, script: &[u8]) {
    use fs_drivers::vfs::{Fallocate, NewNode, RenameFlags, XattrSet};
    let (first, second) = script.split_at(script.len() / 2);
    run_script(fs, first);
    let mut it = second.iter().copied();
    let mut next = move || it.next().unwrap_or(0);
    let root = fs.root();
    let mut inos: Vec<(Ino, Vec<u8>)> = Vec::new();
    let _ = fs.readdir(root, 0, &mut |e| {
        inos.push((e.ino, e.name));
        inos.len() < 64
    });
    for _ in 0..32 {
        let op = next();
        if op == 0 && inos.is_empty() {
            break;
        }
        let pick = |b: u8, v: &Vec<(Ino, Vec<u8>)>| v.get(usize::from(b) % v.len().max(1)).cloned();
        let name = name_from(Some(next()), Some(next()));
        match op % 8 {
            0 => {
                let len = usize::from(next()) * 4 + 1;
                let _ = fs.symlink(root, &name, &vec![b'l'; len], 0, 0);
            }
            1 => {
                if let Some((ino, _)) = pick(next(), &inos) {
                    let _ = fs.link(ino, root, &name);
                }
            }
            2 => {
                let kind = [
                    FileType::Fifo,
                    FileType::Socket,
                    FileType::CharDevice,
                    FileType::BlockDevice,
                ][usize::from(next() % 4)];
                let node = NewNode {
                    kind,
                    perm: 0o644,
                    uid: 1,
                    gid: 2,
                    rdev: u64::from(next()),
                    umask: 0,
                };
                let _ = fs.make_node(root, &name, &node);
            }
            3 | 4 => {
                if let Some((ino, _)) = pick(next(), &inos) {
                    let key = [b"user.a".as_ref(), b"user.bb", b"trusted.x", b"security.s"]
                        [usize::from(next() % 4)];
                    if op % 8 == 3 {
                        let len = usize::from(next()) * 9;
                        let how = [XattrSet::Either, XattrSet::Create, XattrSet::Replace]
                            [usize::from(next() % 3)];
                        let _ = fs.setxattr(ino, key, &vec![next(); len], how);
                    } else {
                        let _ = fs.removexattr(ino, key);
                    }
                }
            }
            5 => {
                if let Some((ino, _)) = pick(next(), &inos) {
                    let mode = match next() % 5 {
                        0 => Fallocate::Allocate,
                        1 => Fallocate::KeepSize,
                        2 => Fallocate::PunchHole,
                        3 => Fallocate::ZeroRange { keep_size: true },
                        _ => Fallocate::ZeroRange { keep_size: false },
                    };
                    let off = u64::from(next()) * 1531;
                    let len = u64::from(next()) * 2053 + 1;
                    let _ = fs.fallocate(ino, off, len, mode);
                }
            }
            6 => {
                if let (Some((_, a)), Some((_, b))) = (pick(next(), &inos), pick(next(), &inos)) {
                    let flags = RenameFlags {
                        noreplace: next() & 1 != 0,
                        exchange: next() & 1 != 0,
                    };
                    let _ = fs.rename_flags(root, &a, root, &b, flags);
                }
            }
            _ => {
                if let Ok(a) = fs.create(root, &name, 0o600) {
                    let _ = fs.write(
                        a.ino,
                        u64::from(next()) << 12,
                        &vec![next(); usize::from(next()) * 61],
                    );
                }
            }
        }
        inos.clear();
        let _ = fs.readdir(root, 0, &mut |e| {
            inos.push((e.ino, e.name));
            inos.len() < 64
        });
    }
}

fn le16(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 2)
        .map_or(0, |s| u64::from(u16::from_le_bytes([s[0], s[1]])))
}
fn le32(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4).map_or(0, |s| {
        u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    })
}

/// What ext_check learns of the layout.
struct ExtGeom<'a> {
    img: &'a [u8],
    bs: u64,
    blocks: u64,
    first_data: u64,
    bpg: u64,
    ipg: u64,
    inode_size: u64,
    groups: u64,
    desc_size: u64,
    ro_compat: u64,
}

impl ExtGeom<'_> {
    fn block(&self, n: u64) -> Result<&[u8], String> {
        if n >= self.blocks || n < self.first_data {
            return Err(format!("block {n} outside the filesystem"));
        }
        let s = (n * self.bs) as usize;
        self.img
            .get(s..s + self.bs as usize)
            .ok_or(format!("block {n} past the image"))
    }
    fn desc(&self, g: u64) -> Result<&[u8], String> {
        let at = (self.first_data + 1) * self.bs + g * self.desc_size;
        self.img
            .get(at as usize..(at + self.desc_size) as usize)
            .ok_or_else(|| format!("group descriptor {g} past the image"))
    }
    fn desc_field(&self, g: u64, lo: usize, hi: usize, wide: bool) -> Result<u64, String> {
        let d = self.desc(g)?;
        let (l, h) = if wide {
            (le32(d, lo), le32(d, hi))
        } else {
            (le16(d, lo), le16(d, hi))
        };
        Ok(if self.desc_size >= 64 {
            l | (h << if wide { 32 } else { 16 })
        } else {
            l
        })
    }
    fn has_super(&self, g: u64) -> bool {
        if self.ro_compat & 0x1 == 0 || g <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&b| {
            let mut p = b;
            while p < g {
                p *= b;
            }
            p == g
        })
    }
}

/// Checks the image as module comment says; Err names the first problem.
pub fn ext_check(img: &[u8]) -> Result<(), String> {
    let sb = img.get(1024..2048).ok_or("no superblock")?;
    if le16(sb, 56) != 0xEF53 {
        return Err("no ext magic".into());
    }
    let incompat = le32(sb, 96);
    let ro_compat = le32(sb, 100);
    let compat = le32(sb, 92);
    // What the checker does not model: meta_bg, journal devices, inline data, bigalloc,
    // sparse_super2, a journal needing recovery.
    if incompat & 0x4 != 0 {
        return Err("the journal needs recovery (RECOVER is set)".into());
    }
    if incompat & (0x10 | 0x8 | 0x8000) != 0 || ro_compat & 0x200 != 0 || compat & 0x200 != 0 {
        return Err("layout outside what the checker models".into());
    }
    let log = le32(sb, 24);
    if log > 6 {
        return Err("block size".into());
    }
    let bs = 1024u64 << log;
    let wide = incompat & 0x80 != 0;
    let blocks = le32(sb, 4) | if wide { le32(sb, 0x150) << 32 } else { 0 };
    let g = ExtGeom {
        img,
        bs,
        blocks,
        first_data: le32(sb, 20),
        bpg: le32(sb, 32),
        ipg: le32(sb, 40),
        inode_size: if le32(sb, 76) == 0 { 128 } else { le16(sb, 88) },
        groups: 0,
        desc_size: if wide { le16(sb, 254).max(32) } else { 32 },
        ro_compat,
    };
    if g.bpg == 0
        || g.ipg == 0
        || g.inode_size < 128
        || blocks <= g.first_data
        || blocks * bs > img.len() as u64
    {
        return Err("geometry".into());
    }
    let g = ExtGeom {
        groups: (blocks - g.first_data).div_ceil(g.bpg),
        ..g
    };
    let first_ino = if le32(sb, 76) == 0 { 11 } else { le32(sb, 84) };
    let inodes = le32(sb, 0);
    if inodes != g.groups * g.ipg || g.groups > 4096 {
        return Err("inode count".into());
    }
    let gdt_blocks = (g.groups * g.desc_size).div_ceil(bs);
    let reserved_gdt = if compat & 0x10 != 0 { le16(sb, 206) } else { 0 };
    // Block → owner (0 = filesystem metadata, else the inode).
    let mut owner: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let own =
        |b: u64, who: u64, owner: &mut std::collections::HashMap<u64, u64>| -> Result<(), String> {
            if b < g.first_data || b >= blocks {
                return Err(format!(
                    "inode {who} points at block {b}, outside the filesystem"
                ));
            }
            if let Some(prev) = owner.insert(b, who) {
                return Err(format!(
                    "block {b} is owned twice (by {prev} and by {who}; 0 = metadata)"
                ));
            }
            Ok(())
        };
    let itable_blocks = (g.ipg * g.inode_size).div_ceil(bs);
    for grp in 0..g.groups {
        let start = g.first_data + grp * g.bpg;
        if g.has_super(grp) {
            for b in start..start + 1 + gdt_blocks + reserved_gdt {
                own(b, 0, &mut owner)?;
            }
        }
        own(g.desc_field(grp, 0, 32, true)?, 0, &mut owner)?;
        own(g.desc_field(grp, 4, 36, true)?, 0, &mut owner)?;
        let it = g.desc_field(grp, 8, 40, true)?;
        for b in it..it + itable_blocks {
            own(b, 0, &mut owner)?;
        }
    }
    // Pass 1: every inode in use, its blocks.
    let mut in_use = vec![false; inodes as usize + 1];
    let mut dirs_in_group = vec![0u64; g.groups as usize];
    let mut xattr_refs: std::collections::BTreeMap<u64, u64> = Default::default();
    for grp in 0..g.groups {
        let flags = g.desc_field(grp, 18, 18, false)? & 0xffff;
        let ibm = g.block(g.desc_field(grp, 4, 36, true)?)?;
        let it = g.desc_field(grp, 8, 40, true)?;
        if flags & 1 != 0 {
            // INODE_UNINIT: nothing in use, the table need not even be zeroed.
            continue;
        }
        // Past ipg - itable_unused the table may be uninitialised too (gdt_csum/metadata_csum).
        let csums = ro_compat & (0x10 | 0x400) != 0;
        let unused = if csums {
            g.desc_field(grp, 28, 50, false)?
        } else {
            0
        };
        for i in 0..g.ipg {
            if i >= g.ipg.saturating_sub(unused) {
                if ibm[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                    return Err(format!(
                        "inode {} in use past itable_unused",
                        grp * g.ipg + i + 1
                    ));
                }
                continue;
            }
            let ino = grp * g.ipg + i + 1;
            let bit = ibm[(i / 8) as usize] & (1 << (i % 8)) != 0;
            let at = (it * bs + i * g.inode_size) as usize;
            let raw = img.get(at..at + 128).ok_or("inode table past the image")?;
            let links = le16(raw, 26);
            let mode = le16(raw, 0);
            if ino < first_ino {
                if !bit {
                    return Err(format!("reserved inode {ino} is free in the bitmap"));
                }
            } else if bit != (links > 0 && mode != 0) {
                return Err(format!(
                    "inode {ino}: bitmap says {}, links {links} mode {mode:o}",
                    if bit { "in use" } else { "free" }
                ));
            }
            in_use[ino as usize] = bit;
            if !bit || (ino < first_ino && mode == 0 && ino != 7) {
                continue;
            }
            if mode & 0o170000 == 0o040000 {
                dirs_in_group[grp as usize] += 1;
            }
            let mut mine = 0u64;
            let iflags = le32(raw, 32);
            let size = le32(raw, 4) | (le32(raw, 108) << 32);
            let kind = mode & 0o170000;
            if ino == 7 {
                // The resize inode: its double-indirect block alone (what it lists are the
                // reserved GDT blocks, owned above).
                let dind = le32(raw, 40 + 13 * 4);
                if dind != 0 {
                    own(dind, 7, &mut owner)?;
                }
                continue;
            }
            let no_blocks = matches!(kind, 0o010000 | 0o020000 | 0o060000 | 0o140000)
                || (kind == 0o120000 && size < 60 && iflags & 0x80000 == 0);
            if iflags & 0x10000000 != 0 {
                return Err(format!("inode {ino} has inline data"));
            } else if no_blocks {
            } else if iflags & 0x80000 != 0 {
                let mut stack = vec![(raw[40..100].to_vec(), 0u32)];
                while let Some((node, level)) = stack.pop() {
                    if le16(&node, 0) != 0xF30A || level > 5 {
                        return Err(format!("inode {ino}: bad extent node"));
                    }
                    let (n, depth) = (le16(&node, 2) as usize, le16(&node, 6));
                    for e in 0..n {
                        let o = 12 + e * 12;
                        if depth > 0 {
                            let child = le32(&node, o + 4) | (le16(&node, o + 8) << 32);
                            own(child, ino, &mut owner)?;
                            mine += 1;
                            stack.push((g.block(child)?.to_vec(), level + 1));
                        } else {
                            let mut len = le16(&node, o + 4);
                            if len > 32768 {
                                len -= 32768;
                            }
                            let start = le32(&node, o + 8) | (le16(&node, o + 6) << 32);
                            for b in start..start + len {
                                own(b, ino, &mut owner)?;
                            }
                            mine += len;
                        }
                    }
                }
            } else {
                let per = bs / 4;
                let mut stack: Vec<(u64, u32)> = (0..15)
                    .map(|k| {
                        (
                            le32(raw, 40 + k * 4),
                            if k < 12 { 0 } else { k as u32 - 11 },
                        )
                    })
                    .collect();
                while let Some((b, level)) = stack.pop() {
                    if b == 0 {
                        continue;
                    }
                    own(b, ino, &mut owner)?;
                    mine += 1;
                    if level > 0 {
                        let blk = g.block(b)?;
                        stack.extend((0..per as usize).map(|k| (le32(blk, k * 4), level - 1)));
                    }
                }
            }
            let acl = le32(raw, 104) | (le16(raw, 118) << 32);
            if acl != 0 {
                *xattr_refs.entry(acl).or_default() += 1;
                if xattr_refs[&acl] == 1 {
                    own(acl, ino, &mut owner)?;
                }
                mine += 1;
            }
            let huge = ro_compat & 0x8 != 0;
            let iblocks = le32(raw, 28) | if huge { le16(raw, 116) << 32 } else { 0 };
            let want = if huge && iflags & 0x40000 != 0 {
                mine
            } else {
                mine * (bs / 512)
            };
            if iblocks != want {
                return Err(format!(
                    "inode {ino}: i_blocks {iblocks}, owns {mine} blocks ({want})"
                ));
            }
        }
    }
    for (b, refs) in &xattr_refs {
        let blk = g.block(*b)?;
        if le32(blk, 0) != 0xEA02_0000 || le32(blk, 4) != *refs {
            return Err(format!(
                "xattr block {b}: refcount {} for {refs} inodes",
                le32(blk, 4)
            ));
        }
    }
    // Pass 5: bitmaps and counters.
    let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
    for grp in 0..g.groups {
        let flags = g.desc_field(grp, 18, 18, false)? & 0xffff;
        let start = g.first_data + grp * g.bpg;
        let end = (start + g.bpg).min(blocks);
        let bbm = g.block(g.desc_field(grp, 0, 32, true)?)?;
        let mut free = 0;
        for b in start..end {
            let i = b - start;
            let owned = owner.contains_key(&b);
            if flags & 2 != 0 {
                // BLOCK_UNINIT: only metadata may live here.
                if owner.get(&b).is_some_and(|o| *o != 0) {
                    return Err(format!(
                        "block {b} in BLOCK_UNINIT group {grp} is owned by inode {}",
                        owner[&b]
                    ));
                }
                free += u64::from(!owned);
                continue;
            }
            let bit = bbm[(i / 8) as usize] & (1 << (i % 8)) != 0;
            if bit != owned {
                return Err(match owner.get(&b) {
                    Some(o) => format!("block {b} (owner {o}) is free in the bitmap"),
                    None => format!("block {b} is used in the bitmap, nothing owns it"),
                });
            }
            free += u64::from(!bit);
        }
        let counted = g.desc_field(grp, 12, 44, false)?;
        if counted != free {
            return Err(format!(
                "group {grp}: free blocks count {counted}, bitmap has {free}"
            ));
        }
        free_blocks += free;
        let ifree = (grp * g.ipg + 1..=(grp + 1) * g.ipg)
            .filter(|i| !in_use[*i as usize])
            .count() as u64;
        let (cf, cd) = (
            g.desc_field(grp, 14, 46, false)?,
            g.desc_field(grp, 16, 48, false)?,
        );
        if cf != ifree || cd != dirs_in_group[grp as usize] {
            return Err(format!(
                "group {grp}: free inodes {cf} (counted {ifree}), dirs {cd} (counted {})",
                dirs_in_group[grp as usize]
            ));
        }
        free_inodes += ifree;
    }
    let sb_free = le32(sb, 12) | if wide { le32(sb, 0x158) << 32 } else { 0 };
    if sb_free != free_blocks || le32(sb, 16) != free_inodes {
        return Err(format!(
            "superblock: free blocks {sb_free} (groups {free_blocks}), free inodes {} (groups {free_inodes})",
            le32(sb, 16)
        ));
    }
    Ok(())
}

/// Through the reader: every name's target has the link count the tree gives it (names for
/// files; 2 + subdirectories for directories, or 1 with dir_nlink's overflow).
pub fn ext_check_links(fs: &dyn FileSystem) -> Result<(), String> {
    let mut names: std::collections::HashMap<Ino, u32> = Default::default();
    let mut subdirs: std::collections::HashMap<Ino, u32> = Default::default();
    let mut stack = vec![fs.root()];
    let mut seen = std::collections::HashSet::new();
    while let Some(dir) = stack.pop() {
        if !seen.insert(dir) || seen.len() > MAX_NODES {
            continue;
        }
        let mut ents = Vec::new();
        fs.readdir(dir, 0, &mut |e| {
            ents.push(e);
            true
        })
        .map_err(|e| format!("readdir {dir}: {e}"))?;
        for e in ents {
            *names.entry(e.ino).or_default() += 1;
            if e.kind == FileType::Directory {
                *subdirs.entry(dir).or_default() += 1;
                stack.push(e.ino);
            }
        }
    }
    for ino in seen.iter().copied().chain(names.keys().copied()) {
        let a = fs.getattr(ino).map_err(|e| format!("getattr {ino}: {e}"))?;
        let want = if a.kind == FileType::Directory {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            names[&ino]
        };
        if a.nlink != want && !(a.kind == FileType::Directory && a.nlink == 1) {
            return Err(format!(
                "inode {ino}: nlink {}, the tree gives {want}",
                a.nlink
            ));
        }
    }
    Ok(())
}
