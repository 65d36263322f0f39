use super::*;
use std::collections::{BTreeMap, BTreeSet};

/// Blocks in memory with a first-fit allocator; counts writes so tests can tell that a
/// refused change touched nothing.
struct MemStore {
    bs: usize,
    blocks: Vec<Vec<u8>>,
    used: Vec<bool>,
    writes: usize,
}

impl MemStore {
    fn new(bs: usize, n: usize) -> Self {
        let mut used = vec![false; n];
        used[0] = true;
        MemStore {
            bs,
            blocks: vec![vec![0; bs]; n],
            used,
            writes: 0,
        }
    }

    fn used_count(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }
}

impl Store for MemStore {
    fn block_size(&self) -> usize {
        self.bs
    }
    fn metadata_csum(&self) -> bool {
        true
    }
    fn read_meta(&mut self, blk: u64) -> Result<Vec<u8>> {
        self.blocks
            .get(blk as usize)
            .cloned()
            .ok_or_else(|| Error::corrupt("block out of range"))
    }
    fn write_meta(&mut self, blk: u64, data: Vec<u8>) -> Result<()> {
        assert_eq!(data.len(), self.bs);
        assert!(self.used[blk as usize], "write to free block {blk}");
        self.writes += 1;
        self.blocks[blk as usize] = data;
        Ok(())
    }
    fn alloc_blocks(&mut self, goal: u64, _want: u64) -> Result<(u64, u64)> {
        let n = self.used.len();
        let start = (goal as usize).min(n);
        let found = (start..n).chain(0..start).find(|&b| !self.used[b]);
        let b = found.ok_or(Error::NoSpace)?;
        self.used[b] = true;
        Ok((b as u64, 1))
    }
    fn free_blocks(&mut self, first: u64, count: u64) -> Result<()> {
        for b in first..first + count {
            assert!(self.used[b as usize], "double free of {b}");
            self.used[b as usize] = false;
        }
        Ok(())
    }
}

const SEED: u32 = 0x1234_5678;

fn ctx() -> XattrCtx {
    XattrCtx {
        ino: 12,
        csum_seed: Some(SEED),
        goal: 5,
    }
}

/// A raw inode of `size` bytes with i_extra_isize 32 when it has an extra area.
fn inode(size: usize) -> Vec<u8> {
    let mut r = vec![0u8; size];
    r[0..2].copy_from_slice(&0o100_644u16.to_le_bytes());
    if size > 128 {
        r[0x80] = 32;
    }
    r
}

/// Everything the inode has, by full name (ACLs in xattr form), read back with the
/// reader's parsers, checking the block's layout rules on the way.
fn view(store: &mut MemStore, raw: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut all = Vec::new();
    let at = 128 + usize::from(u16_at(raw, 0x80));
    if raw.len() >= at + 4 {
        let area = &raw[at..];
        let entries = xattr::parse_ibody(area).unwrap();
        if entries.is_empty() {
            assert!(area.iter().all(|b| *b == 0), "empty area left bytes");
        }
        assert!(xattr::space(&entries) <= area.len() - 4);
        all.extend(entries);
    }
    let blk = file_acl(raw);
    if blk != 0 {
        let b = store.read_meta(blk).unwrap();
        let entries = xattr::parse_block(&b, blk, Some(SEED)).unwrap();
        assert!(!entries.is_empty(), "empty block kept");
        let keys: Vec<_> = entries.iter().map(key).collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "block entries unsorted"
        );
        let mut hashes = Vec::new();
        for e in &entries {
            let Value::Inline(v) = &e.value else { panic!() };
            assert_eq!(e.hash, xattr::entry_hash(&e.name, v));
            hashes.push(e.hash);
        }
        assert_eq!(u32_at(&b, H_HASH), xattr::block_hash(hashes));
        all.extend(entries);
    }
    let mut out = BTreeMap::new();
    for e in all {
        let Value::Inline(v) = e.value else { panic!() };
        let v = if e.index == 2 || e.index == 3 {
            acl::to_xattr(&v).unwrap()
        } else {
            v
        };
        let name = xattr::full_name(e.index, &e.name).unwrap();
        assert!(out.insert(name, v).is_none(), "duplicate name");
    }
    out
}

fn set_either(s: &mut MemStore, raw: &mut [u8], name: &[u8], value: &[u8]) -> Result<i64> {
    set(s, &ctx(), raw, name, value, XattrSet::Either)
}

#[test]
fn small_value_stays_in_the_inode() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = inode(256);
    assert_eq!(
        set_either(&mut s, &mut raw, b"user.a", b"hello").unwrap(),
        0
    );
    assert_eq!(file_acl(&raw), 0);
    assert_eq!(u32_at(&raw, 160), xattr::MAGIC);
    assert_eq!(s.writes, 0);
    let v = view(&mut s, &raw);
    assert_eq!(v[&b"user.a".to_vec()], b"hello");
    // The extra fields before the area are untouched.
    assert_eq!(u16_at(&raw, 0x80), 32);
}

#[test]
fn no_inode_room_goes_to_a_new_block() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = inode(128);
    assert_eq!(set_either(&mut s, &mut raw, b"user.b", b"2").unwrap(), 1);
    assert_eq!(set_either(&mut s, &mut raw, b"user.a", b"1").unwrap(), 0);
    assert_eq!(set_either(&mut s, &mut raw, b"trusted.z", b"").unwrap(), 0);
    assert_eq!(file_acl(&raw), 5, "allocated at the goal");
    let v = view(&mut s, &raw);
    assert_eq!(v.len(), 3);
    assert_eq!(v[&b"trusted.z".to_vec()], b"");
    // Removing them all frees the block.
    for n in [&b"user.a"[..], b"user.b"] {
        assert_eq!(remove(&mut s, &ctx(), &mut raw, n).unwrap(), 0);
    }
    assert_eq!(remove(&mut s, &ctx(), &mut raw, b"trusted.z").unwrap(), -1);
    assert_eq!(file_acl(&raw), 0);
    assert_eq!(s.used_count(), 1);
}

#[test]
fn flags_and_missing_names() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = inode(256);
    let c = ctx();
    let r = set(&mut s, &c, &mut raw, b"user.a", b"x", XattrSet::Replace);
    assert!(matches!(r, Err(Error::NoData)));
    set(&mut s, &c, &mut raw, b"user.a", b"x", XattrSet::Create).unwrap();
    let r = set(&mut s, &c, &mut raw, b"user.a", b"y", XattrSet::Create);
    assert!(matches!(r, Err(Error::Exists)));
    set(&mut s, &c, &mut raw, b"user.a", b"y", XattrSet::Replace).unwrap();
    assert!(matches!(
        remove(&mut s, &c, &mut raw, b"user.b"),
        Err(Error::NoData)
    ));
    assert!(matches!(
        set_either(&mut s, &mut raw, b"foo.bar", b""),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        set_either(&mut s, &mut raw, b"system.data", b""),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        set_either(&mut s, &mut raw, b"user.", b""),
        Err(Error::Invalid(_))
    ));
    let long = [b"user.".to_vec(), vec![b'n'; 256]].concat();
    assert!(matches!(
        set_either(&mut s, &mut raw, &long, b""),
        Err(Error::NameTooLong)
    ));
    let max = [b"user.".to_vec(), vec![b'n'; 255]].concat();
    set_either(&mut s, &mut raw, &max, b"v").unwrap();
    assert_eq!(view(&mut s, &raw)[&max], b"v");
    assert_eq!(view(&mut s, &raw)[&b"user.a".to_vec()], b"y");
}

#[test]
fn growing_value_moves_to_the_block_and_back() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = inode(256);
    set_either(&mut s, &mut raw, b"user.keep", b"k").unwrap();
    set_either(&mut s, &mut raw, b"user.big", b"small").unwrap();
    assert_eq!(file_acl(&raw), 0);
    let big = vec![7u8; 300];
    assert_eq!(set_either(&mut s, &mut raw, b"user.big", &big).unwrap(), 1);
    let ib = xattr::parse_ibody(&raw[160..]).unwrap();
    assert_eq!(ib.len(), 1, "moved out of the inode");
    assert_eq!(view(&mut s, &raw)[&b"user.big".to_vec()], big);
    assert_eq!(set_either(&mut s, &mut raw, b"user.big", b"s").unwrap(), -1);
    assert_eq!(file_acl(&raw), 0);
    assert_eq!(xattr::parse_ibody(&raw[160..]).unwrap().len(), 2);
    assert_eq!(s.used_count(), 1);
}

#[test]
fn too_big_is_enospc_and_changes_nothing() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = inode(256);
    set_either(&mut s, &mut raw, b"user.a", &[1; 600]).unwrap();
    let (before, writes) = (raw.clone(), s.writes);
    for n in [1024 - 32 - 20 - 3, 2000] {
        let r = set_either(&mut s, &mut raw, b"user.b", &vec![2; n]);
        assert!(matches!(r, Err(Error::NoSpace)), "{n}");
    }
    assert_eq!(raw, before);
    assert_eq!(s.writes, writes);
    // Exactly filling the block works: header 32, entry 20, end marker 4.
    let mut raw2 = inode(128);
    set_either(&mut s, &mut raw2, b"user.b", &vec![2; 1024 - 32 - 20 - 4]).unwrap();
}

#[test]
fn allocation_failure_changes_nothing() {
    let mut s = MemStore::new(1024, 2);
    s.used[1] = true;
    let mut raw = inode(128);
    let r = set_either(&mut s, &mut raw, b"user.a", b"1");
    assert!(matches!(r, Err(Error::NoSpace)));
    assert_eq!(raw, inode(128));
}

/// An inode whose xattr block holds user.s = "shared" with refcount 2.
fn shared_setup(s: &mut MemStore) -> Vec<u8> {
    let mut raw = inode(128);
    set_either(s, &mut raw, b"user.s", b"shared").unwrap();
    let blk = file_acl(&raw);
    let mut b = s.blocks[blk as usize].clone();
    b[H_REFCOUNT..H_REFCOUNT + 4].copy_from_slice(&2u32.to_le_bytes());
    set_block_csum(&mut b, &ctx(), blk);
    s.blocks[blk as usize] = b;
    raw
}

fn refcount(s: &MemStore, blk: u64) -> u32 {
    let b = &s.blocks[blk as usize];
    xattr::parse_block(b, blk, Some(SEED)).unwrap();
    u32_at(b, H_REFCOUNT)
}

#[test]
fn shared_block_is_copied_on_write() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = shared_setup(&mut s);
    let old = file_acl(&raw);
    let other = raw.clone();
    assert_eq!(set_either(&mut s, &mut raw, b"user.t", b"mine").unwrap(), 0);
    let new = file_acl(&raw);
    assert_ne!(new, old);
    assert_eq!(refcount(&s, old), 1);
    assert_eq!(refcount(&s, new), 1);
    assert_eq!(view(&mut s, &raw).len(), 2);
    assert_eq!(
        view(&mut s, &other).len(),
        1,
        "the other owner's view is unchanged"
    );
    // An unchanged value does not copy anything.
    let mut raw2 = shared_setup(&mut s);
    let blk2 = file_acl(&raw2);
    assert_eq!(
        set_either(&mut s, &mut raw2, b"user.s", b"shared").unwrap(),
        0
    );
    assert_eq!(file_acl(&raw2), blk2);
    // Removing the only attribute of a shared block just drops the reference.
    assert_eq!(remove(&mut s, &ctx(), &mut raw2, b"user.s").unwrap(), -1);
    assert_eq!(file_acl(&raw2), 0);
    assert_eq!(refcount(&s, blk2), 1);
    assert!(s.used[blk2 as usize]);
}

#[test]
fn drop_block_frees_or_decrements() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = shared_setup(&mut s);
    let blk = file_acl(&raw);
    let mut other = raw.clone();
    assert_eq!(drop_block(&mut s, &ctx(), &mut raw).unwrap(), -1);
    assert_eq!(refcount(&s, blk), 1);
    assert_eq!(drop_block(&mut s, &ctx(), &mut other).unwrap(), -1);
    assert!(!s.used[blk as usize]);
    assert_eq!(drop_block(&mut s, &ctx(), &mut other).unwrap(), 0);
}

#[test]
fn bad_block_checksum_is_corrupt() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = inode(128);
    set_either(&mut s, &mut raw, b"user.a", b"1").unwrap();
    s.blocks[file_acl(&raw) as usize][100] ^= 1;
    let r = set_either(&mut s, &mut raw, b"user.b", b"2");
    assert!(matches!(r, Err(Error::Corrupt(_))));
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

const U: u32 = u32::MAX;

#[test]
fn acls_are_stored_in_ext4_form() {
    let mut s = MemStore::new(1024, 16);
    let mut raw = inode(256);
    raw[0..2].copy_from_slice(&0o104_644u16.to_le_bytes());
    let a = acl(&[
        (1, 6, U),
        (2, 6, 1000),
        (4, 4, U),
        (0x10, 6, U),
        (0x20, 0, U),
    ]);
    let access = b"system.posix_acl_access";
    let r = set(&mut s, &ctx(), &mut raw, access, &a, XattrSet::Replace);
    assert!(matches!(r, Err(Error::NoData)));
    set(&mut s, &ctx(), &mut raw, access, &a, XattrSet::Create).unwrap();
    let e = &xattr::parse_ibody(&raw[160..]).unwrap()[0];
    assert_eq!((e.index, e.name.len()), (2, 0));
    let Value::Inline(disk) = &e.value else {
        panic!()
    };
    assert_eq!(disk.len(), 4 + 4 + 8 + 4 + 4 + 4);
    assert_eq!(view(&mut s, &raw)[&b"system.posix_acl_access".to_vec()], a);
    // The mask becomes the group bits; the file type and setuid stay.
    assert_eq!(u16_at(&raw, 0), 0o104_660);
    // An ACL the mode says all of is not kept, only the mode.
    let plain = acl(&[(1, 7, U), (4, 5, U), (0x20, 4, U)]);
    set_either(&mut s, &mut raw, b"system.posix_acl_access", &plain).unwrap();
    assert!(view(&mut s, &raw).is_empty());
    assert_eq!(u16_at(&raw, 0), 0o104_754);
    // Default ACLs only on directories.
    let r = set_either(&mut s, &mut raw, b"system.posix_acl_default", &plain);
    assert!(matches!(r, Err(Error::Access(_))));
    // User attributes only on files and directories; others namespaces anywhere.
    let mut link = inode(256);
    link[0..2].copy_from_slice(&0o120_777u16.to_le_bytes());
    let r = set_either(&mut s, &mut link, b"user.x", b"1");
    assert!(matches!(r, Err(Error::NotPermitted(_))));
    set_either(&mut s, &mut link, b"trusted.x", b"1").unwrap();
    raw[0..2].copy_from_slice(&0o040_755u16.to_le_bytes());
    set_either(&mut s, &mut raw, b"system.posix_acl_default", &plain).unwrap();
    assert_eq!(
        view(&mut s, &raw)[&b"system.posix_acl_default".to_vec()],
        plain
    );
    assert_eq!(u16_at(&raw, 0), 0o040_755);
    // A header without entries removes the ACL (and is fine when there is none).
    let empty = acl(&[]);
    set_either(&mut s, &mut raw, b"system.posix_acl_access", &empty).unwrap();
    set_either(&mut s, &mut raw, b"system.posix_acl_default", &empty).unwrap();
    assert!(view(&mut s, &raw).is_empty());
}

#[test]
fn invalid_acls_are_refused() {
    let bad = [
        acl(&[(1, 6, U), (4, 4, U)]),                             // no other
        acl(&[(4, 4, U), (1, 6, U), (0x20, 0, U)]),               // out of order
        acl(&[(1, 6, U), (2, 6, 5), (4, 4, U), (0x20, 0, U)]),    // named entry without mask
        acl(&[(1, 8, U), (4, 4, U), (0x20, 0, U)]),               // perm beyond rwx
        acl(&[(1, 6, U), (4, 4, U), (0x40, 0, U), (0x20, 0, U)]), // unknown tag
        acl(&[(1, 6, U), (1, 6, U), (4, 4, U), (0x20, 0, U)]),    // repeated
        vec![2, 0, 0, 0, 1],                                      // not whole entries
    ];
    for x in bad {
        assert!(
            matches!(acl::from_xattr(&x), Err(Error::Invalid(_))),
            "{x:?}"
        );
    }
    let v1 = [1u32.to_le_bytes().to_vec(), acl(&[(1, 6, U)])[4..].to_vec()].concat();
    assert!(matches!(acl::from_xattr(&v1), Err(Error::Unsupported(_))));
    let ok = acl(&[(1, 7, U), (4, 5, U), (8, 1, 7), (0x10, 5, U), (0x20, 5, U)]);
    let disk = acl::from_xattr(&ok).unwrap().unwrap();
    assert_eq!(acl::to_xattr(&disk).unwrap(), ok);
}

/// Random sets and removes of names and value sizes that exercise both areas, against a
/// map: after every step the inode's view equals the map, the layout rules hold, and no
/// block leaks.
#[test]
fn random_ops_match_a_model() {
    for (isize, bs) in [
        (256, 1024),
        (128, 1024),
        (512, 4096),
        (160, 1024),
        (256, 65536),
    ] {
        let mut s = MemStore::new(bs, 64);
        let mut raw = inode(isize);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut blocks = 0i64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ isize as u64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let steps = if bs > 4096 { 500 } else { 3000 };
        for step in 0..steps {
            let ns = ["user.", "trusted.", "security."][rnd(3) as usize];
            let name = format!("{ns}{}", "n".repeat(1 + rnd(12) as usize)).into_bytes();
            let r = if rnd(3) == 0 {
                let r = remove(&mut s, &ctx(), &mut raw, &name);
                match model.remove(&name) {
                    Some(_) => r.unwrap(),
                    None => {
                        assert!(matches!(r, Err(Error::NoData)));
                        0
                    }
                }
            } else {
                let len = [0, 1, 3, 4, 17, 60, 200, 700, bs / 3][rnd(9) as usize];
                let value = vec![rnd(256) as u8; len];
                match set_either(&mut s, &mut raw, &name, &value) {
                    Ok(d) => {
                        model.insert(name, value);
                        d
                    }
                    Err(Error::NoSpace) => {
                        // Only when it truly fits nowhere: the block without it is full.
                        let mut trial = model.clone();
                        trial.insert(name, value);
                        let need: usize = trial
                            .iter()
                            .map(|(n, v)| xattr::entry_len(n.len()) + xattr::value_len(v.len()))
                            .sum();
                        assert!(need > bs - 32 - 4, "step {step}: ENOSPC with room");
                        0
                    }
                    Err(e) => panic!("step {step}: {e}"),
                }
            };
            blocks += r;
            assert_eq!(view(&mut s, &raw), model, "step {step}");
            assert_eq!(blocks, i64::from(file_acl(&raw) != 0));
            assert_eq!(
                s.used_count() as i64,
                1 + blocks,
                "step {step}: leaked block"
            );
        }
        let names: BTreeSet<_> = model.keys().cloned().collect();
        for n in names {
            blocks += remove(&mut s, &ctx(), &mut raw, &n).unwrap();
        }
        assert_eq!(blocks, 0);
        assert_eq!(file_acl(&raw), 0);
    }
}

/// Damaged in-inode areas and blocks (random bytes behind valid magics) give errors or
/// well-formed results, never a panic.
#[test]
fn damaged_areas_never_panic() {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let mut s = MemStore::new(1024, 8);
        let mut raw = inode(256);
        // A plausible start (a few real entries) then random damage.
        set_either(&mut s, &mut raw, b"user.a", b"0123456789").unwrap();
        let mut raw128 = inode(128);
        set_either(&mut s, &mut raw128, b"user.b", &[7; 100]).unwrap();
        let blk = file_acl(&raw128) as usize;
        for _ in 0..1 + rnd() % 6 {
            let i = 164 + (rnd() % 92) as usize;
            raw[i] = rnd() as u8;
            let j = 32 + (rnd() % 992) as usize;
            s.blocks[blk][j] = rnd() as u8;
        }
        // Keep the checksum valid so the damage reaches the parser.
        let mut b = s.blocks[blk].clone();
        set_block_csum(&mut b, &ctx(), blk as u64);
        s.blocks[blk] = b;
        raw[0x68..0x6C].copy_from_slice(&(blk as u32).to_le_bytes());
        let name = [b"user.".to_vec(), vec![b'a' + (rnd() % 3) as u8]].concat();
        let value = vec![1u8; (rnd() % 300) as usize];
        let _ = match round % 3 {
            0 => set_either(&mut s, &mut raw, &name, &value),
            1 => remove(&mut s, &ctx(), &mut raw, &name),
            _ => drop_block(&mut s, &ctx(), &mut raw),
        };
    }
}
