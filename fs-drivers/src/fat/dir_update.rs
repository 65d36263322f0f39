//! Directory updates of the FAT driver: finding, inserting and removing entries (long-name
//! slots included) through the cached listings, and the timestamps a change stamps.

use super::*;

impl FatFs {
    pub(super) fn stamp(&self, e: &mut Entry, create: bool) {
        let (d, t, c) = time::from_unix(now(), self.opts.tz_offset_minutes);
        e.set_mtime(d, t);
        e.set_adate(d);
        if create {
            e.set_ctime(d, t, c);
        }
    }

    pub(super) fn take_listing(&self, st: &mut State, ino: Ino) -> Result<Listing> {
        if let Some(l) = st.dirs.remove(&ino) {
            return Ok(l);
        }
        Ok(Listing::new(self.read_dir(st, ino)?))
    }

    pub(super) fn put_listing(&self, st: &mut State, ino: Ino, l: Listing) {
        let bytes: usize = st.dirs.values().map(|d| d.dir.data.len()).sum();
        if st.dirs.len() >= MAX_CACHED_DIRS || bytes + l.dir.data.len() > MAX_CACHED_DIR_BYTES {
            st.dirs.clear();
        }
        st.dirs.insert(ino, l);
    }

    pub(super) fn with_listing<T>(
        &self,
        st: &mut State,
        ino: Ino,
        f: impl FnOnce(&Listing) -> T,
    ) -> Result<T> {
        let l = self.take_listing(st, ino)?;
        let r = f(&l);
        self.put_listing(st, ino, l);
        Ok(r)
    }

    /// The entry `name` names in `dir` (ENOENT when there is none or the name cannot exist).
    pub(super) fn existing_item(
        &self,
        st: &mut State,
        dir: Ino,
        name: &[u8],
    ) -> Result<(Item, u64)> {
        let name = lookup_name(name).ok_or(Error::NotFound)?;
        self.find_item(st, dir, &name)?.ok_or(Error::NotFound)
    }

    /// The item called `name` in directory `dir` and the device offset of its 8.3 entry.
    /// The entry is re-read from the device: the cached listing's copy of size, clusters and
    /// times goes stale as the file is written.
    pub(super) fn find_item(
        &self,
        st: &mut State,
        dir: Ino,
        name: &str,
    ) -> Result<Option<(Item, u64)>> {
        let found = self.with_listing(st, dir, |l| {
            l.find(name).map(|i| (i.clone(), l.dir.slot_offset(i.idx)))
        })?;
        let Some((mut item, loc)) = found else {
            return Ok(None);
        };
        self.dev.read_at(loc, &mut item.entry.0)?;
        Ok(Some((item, loc)))
    }

    /// Writes `name` (long-name slots as needed) with the body of `e` into directory `dir_ino`
    /// and returns the device offset of its 8.3 entry.
    pub(super) fn insert_entry(
        &self,
        st: &mut State,
        dir_ino: Ino,
        name: &str,
        e: Entry,
    ) -> Result<u64> {
        if dir_ino != ROOT_INO && self.node(st, dir_ino)?.loc.is_none() {
            return Err(Error::NotFound);
        }
        let mut l = self.take_listing(st, dir_ino)?;
        // On error the listing is dropped: it is re-read from the device next time.
        let loc = self.insert_into(st, &mut l, name, e)?;
        self.put_listing(st, dir_ino, l);
        Ok(loc)
    }

    pub(super) fn insert_into(
        &self,
        st: &mut State,
        l: &mut Listing,
        name: &str,
        mut e: Entry,
    ) -> Result<u64> {
        let slots: Vec<[u8; 32]> = match short_name::plan(name, &l.shorts)? {
            Plan::ShortOnly(s, flags) => {
                e.0[..11].copy_from_slice(&s);
                e.0[12] = flags;
                vec![e.0]
            }
            Plan::WithLfn(s) => {
                e.0[..11].copy_from_slice(&s);
                e.0[12] = 0;
                let mut v = lfn::make_slots(name, &s);
                v.push(e.0);
                v
            }
        };
        let need = slots.len();
        let mut start = 0;
        let mut run = 0;
        // Without deleted slots the only free ones are past the end marker.
        let scan_from = if l.has_deleted() { 0 } else { l.end };
        for idx in scan_from..l.dir.slots() {
            if idx >= l.end || l.dir.slot(idx)[0] == DELETED {
                if run == 0 {
                    start = idx;
                }
                run += 1;
                if run == need {
                    break;
                }
            } else {
                run = 0;
            }
        }
        if run < need {
            if run == 0 {
                start = l.dir.slots();
            }
            let missing = ((need - run) * 32) as u64;
            let k = missing.div_ceil(self.cs()) as u32;
            if !l.dir.complete || l.dir.data.len() as u64 + u64::from(k) * self.cs() > MAX_DIR_BYTES
            {
                return Err(Error::NoSpace);
            }
            let last = l
                .dir
                .extents
                .last()
                .map(|&(off, len)| ((off + len - self.g.data_offset) / self.cs()) as u32 + 1)
                .ok_or_else(|| Error::corrupt("directory without clusters"))?;
            let new = self.alloc_chain(st, k, last)?;
            let zeros = vec![0u8; self.g.cluster_size as usize];
            for &c in &new {
                self.dev.write_at(self.g.cluster_offset(c), &zeros)?;
                l.dir.extents.push((self.g.cluster_offset(c), self.cs()));
                l.dir.data.extend_from_slice(&zeros);
            }
            table::write_entry(&*self.dev, &self.g, last, new[0])?;
        }
        for (i, s) in slots.iter().enumerate() {
            self.dev.write_at(l.dir.slot_offset(start + i), s)?;
        }
        // Slots past the old end marker were free whatever they held; keep an end marker
        // right after what we wrote so stale bytes there stay invisible.
        let after = start + need;
        if after > l.end && after < l.dir.slots() && l.dir.slot(after)[0] != 0 {
            self.dev.write_at(l.dir.slot_offset(after), &[0])?;
        }
        let short = Entry(slots[need - 1]);
        let item = Item {
            name: name.to_string(),
            short_display: short_name::display(&short.short(), short.ntres()),
            entry: short,
            idx: start + need - 1,
            first_idx: start,
        };
        l.inserted(start, &slots, item);
        Ok(l.dir.slot_offset(start + need - 1))
    }

    /// Marks an item's slots deleted (the 8.3 entry and its long-name slots).
    pub(super) fn remove_entry(&self, st: &mut State, dir_ino: Ino, idx: usize) -> Result<()> {
        let mut l = self.take_listing(st, dir_ino)?;
        if let Some(item) = l.items.get(&idx) {
            for s in item.first_idx..=item.idx {
                self.dev.write_at(l.dir.slot_offset(s), &[DELETED])?;
            }
        }
        l.removed(idx);
        self.put_listing(st, dir_ino, l);
        Ok(())
    }

    /// After an entry's slots are deleted: frees its clusters, or parks them with the inode
    /// while the file is open.
    pub(super) fn forget_item(&self, st: &mut State, loc: u64, entry: Entry) -> Result<()> {
        let first = entry.first_cluster(self.fat32());
        if let Some(ino) = st.by_loc.remove(&loc) {
            st.dirs.remove(&ino);
            let open = st.open.get(&ino).copied().unwrap_or(0) > 0;
            if open && !entry.is_dir() {
                if let Some(n) = st.nodes.get_mut(&ino) {
                    n.loc = None;
                    n.detached = Some(entry);
                }
                return Ok(());
            }
            st.runs.remove(&ino);
            if open {
                if let Some(n) = st.nodes.get_mut(&ino) {
                    n.loc = None;
                }
            } else {
                st.nodes.remove(&ino);
            }
        }
        self.free_chain(st, first)
    }

    pub(super) fn is_ancestor(&self, st: &State, anc: Ino, mut ino: Ino) -> bool {
        for _ in 0..=st.nodes.len() {
            if ino == anc {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            match st.nodes.get(&ino) {
                Some(n) => ino = n.parent,
                None => return false,
            }
        }
        false
    }

    /// Linux updates a directory's mtime when names are added or removed; so do we (the root
    /// has no entry to hold one, a removed directory has none left).
    pub(super) fn touch_dir(&self, st: &mut State, dir: Ino) -> Result<()> {
        if dir == ROOT_INO || self.node(st, dir)?.loc.is_none() {
            return Ok(());
        }
        if let Some(mut e) = self.entry(st, dir)? {
            let (d, t, _) = time::from_unix(now(), self.opts.tz_offset_minutes);
            e.set_mtime(d, t);
            self.put_entry(st, dir, &e)?;
        }
        Ok(())
    }

    pub(super) fn new_entry(&self, attr: u8) -> Entry {
        let mut e = Entry([0u8; 32]);
        e.set_attr(attr);
        self.stamp(&mut e, true);
        e
    }
}
