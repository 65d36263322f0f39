//! The vfs interface of the FAT driver: what the mount and the commands call.

use super::*;

impl FileSystem for FatFs {
    fn root(&self) -> Ino {
        ROOT_INO
    }

    fn info(&self) -> FsInfo {
        let t = match self.g.fat_type {
            FatType::Fat12 => "fat12",
            FatType::Fat16 => "fat16",
            FatType::Fat32 => "fat32",
        };
        let mut features = vec![
            format!("cluster size {}", self.g.cluster_size),
            format!("{} FATs", self.g.num_fats),
        ];
        if self.was_dirty {
            features.push("dirty (not cleanly unmounted)".into());
        }
        if self.g.used_backup {
            features.push("primary boot sector bad; using backup".into());
        }
        FsInfo {
            fs_type: t.into(),
            label: self.label.clone(),
            uuid: Some(format!(
                "{:04X}-{:04X}",
                self.g.volume_id >> 16,
                self.g.volume_id & 0xFFFF
            )),
            features,
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let _g = self.read_guard();
        let mut st = self.lock();
        let (_, loc) = self.existing_item(&mut st, parent, name)?;
        let ino = self.ino_for(&mut st, loc, parent);
        self.attr_of(&mut st, ino)
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        let _g = self.read_guard();
        let mut st = self.lock();
        self.attr_of(&mut st, ino)
    }

    fn prefetch_dir(&self, dir: Ino) {
        let first = {
            let _g = self.read_guard();
            let st = self.lock();
            match self.dir_first_cluster(&st, dir) {
                Ok(c) if self.g.valid_cluster(c) => c,
                _ => return,
            }
        };
        // The first cluster, and the FAT window that chains it (read when the listing starts).
        self.dev.readahead(self.g.cluster_offset(first), self.cs());
        let (entry, _) = table::entry_pos(self.g.fat_type, first);
        let window = table::WINDOW;
        self.dev
            .readahead(self.g.fat_offset + entry / window * window, window);
    }

    /// Entries are gathered in batches and handed to `emit` with no lock held, so a front end
    /// may call back into the filesystem (readdirplus) from `emit`.
    fn readdir(&self, ino: Ino, offset: u64, emit: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        const BATCH: usize = 128;
        let mut from = usize::try_from(offset).unwrap_or(usize::MAX);
        loop {
            let batch: Vec<DirEntry> = {
                let _g = self.read_guard();
                let mut st = self.lock();
                let l = self.take_listing(&mut st, ino)?;
                let mut batch = Vec::with_capacity(BATCH);
                for item in l.items.range(from..).map(|(_, i)| i).take(BATCH) {
                    let child = self.ino_for(&mut st, l.dir.slot_offset(item.idx), ino);
                    batch.push(DirEntry {
                        ino: child,
                        kind: if item.entry.is_dir() {
                            FileType::Directory
                        } else {
                            FileType::Regular
                        },
                        name: item.name.clone().into_bytes(),
                        next_offset: item.idx as u64 + 1,
                    });
                }
                self.put_listing(&mut st, ino, l);
                batch
            };
            let full = batch.len() == BATCH;
            for de in batch {
                from = de.next_offset as usize;
                if !emit(de) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let _g = self.read_guard();
        let (size, runs) = {
            let mut st = self.lock();
            let e = self.entry(&st, ino)?.ok_or(Error::IsDir)?;
            if e.is_dir() {
                return Err(Error::IsDir);
            }
            (
                u64::from(e.size()),
                self.runs_for(&mut st, ino, e.first_cluster(self.fat32()))?,
            )
        };
        if offset >= size {
            return Ok(0);
        }
        let len = (size - offset).min(buf.len() as u64) as usize;
        self.data_io(&runs, offset, len, |dev_off, i, n| {
            self.dev.read_direct_at(dev_off, &mut buf[i..i + n])
        })?;
        Ok(len)
    }

    fn readlink(&self, _ino: Ino) -> Result<Vec<u8>> {
        Err(Error::Invalid("FAT has no symbolic links".into()))
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let _g = self.read_guard();
        let st = self.lock();
        self.node(&st, ino)?;
        Ok(vec![XATTR_NAME.to_vec()])
    }

    fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let _g = self.read_guard();
        let st = self.lock();
        self.node(&st, ino)?;
        if name != XATTR_NAME {
            return Err(Error::NoData);
        }
        let a = self.entry(&st, ino)?.map_or(0, |e| e.attr());
        let mut s = Vec::new();
        for (bit, ch) in [
            (ATTR_RO, b'R'),
            (ATTR_HIDDEN, b'H'),
            (ATTR_SYSTEM, b'S'),
            (ATTR_ARCHIVE, b'A'),
        ] {
            if a & bit != 0 {
                s.push(ch);
            }
        }
        Ok(s)
    }

    fn statfs(&self) -> Result<StatFs> {
        let _g = self.read_guard();
        let mut st = self.lock();
        let free = match (&st.free, self.fsinfo_free()?) {
            // A read-only mount trusts a plausible FSInfo count, as Linux does, rather than
            // reading a FAT that can be hundreds of megabytes.
            (None, Some(n)) if !self.writable => u64::from(n),
            _ => u64::from(self.free_map(&mut st)?.free),
        };
        Ok(StatFs {
            block_size: self.g.cluster_size,
            blocks: u64::from(self.g.cluster_count),
            blocks_free: free,
            blocks_avail: free,
            files: 0,
            files_free: 0,
            name_max: 255,
        })
    }

    fn open(&self, ino: Ino, write: bool) -> Result<()> {
        if write && !self.writable {
            return Err(Error::ReadOnly);
        }
        let _g = self.read_guard();
        let mut st = self.lock();
        self.node(&st, ino)?;
        *st.open.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    fn release(&self, ino: Ino) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        let left = match st.open.get_mut(&ino) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return Ok(()),
        };
        if left > 0 {
            return Ok(());
        }
        st.open.remove(&ino);
        st.runs.remove(&ino);
        let orphan = st.nodes.get(&ino).and_then(|n| {
            if n.loc.is_none() {
                Some(n.detached)
            } else {
                None
            }
        });
        if let Some(detached) = orphan {
            if ino != ROOT_INO {
                st.nodes.remove(&ino);
                if let Some(e) = detached {
                    self.begin_write(&mut st)?;
                    self.free_chain(&mut st, e.first_cluster(self.fat32()))?;
                }
            }
        }
        Ok(())
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    fn create(&self, parent: Ino, name: &[u8], mode: u32) -> Result<Attr> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let name = short_name::normalize(name)?;
        if self.find_item(&mut st, parent, &name)?.is_some() {
            return Err(Error::Exists);
        }
        let ro = if mode & 0o222 == 0 { ATTR_RO } else { 0 };
        let e = self.new_entry(ATTR_ARCHIVE | ro);
        let loc = self.insert_entry(&mut st, parent, &name, e)?;
        self.touch_dir(&mut st, parent)?;
        let ino = self.ino_for(&mut st, loc, parent);
        self.attr_of(&mut st, ino)
    }

    fn mkdir(&self, parent: Ino, name: &[u8], _mode: u32) -> Result<Attr> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let name = short_name::normalize(name)?;
        if self.find_item(&mut st, parent, &name)?.is_some() {
            return Err(Error::Exists);
        }
        let parent_cluster = if parent == ROOT_INO {
            0
        } else {
            self.dir_first_cluster(&st, parent)?
        };
        let hint = self.free_map(&mut st)?.hint;
        let c = self.alloc_chain(&mut st, 1, hint)?[0];
        let mut e = self.new_entry(ATTR_DIR);
        e.set_first_cluster(c);
        let mut block = vec![0u8; self.g.cluster_size as usize];
        let mut dot = e;
        dot.0[..11].copy_from_slice(b".          ");
        block[..32].copy_from_slice(&dot.0);
        let mut dotdot = e;
        dotdot.0[..11].copy_from_slice(b"..         ");
        dotdot.set_first_cluster(parent_cluster);
        block[32..64].copy_from_slice(&dotdot.0);
        self.dev.write_at(self.g.cluster_offset(c), &block)?;
        let loc = match self.insert_entry(&mut st, parent, &name, e) {
            Ok(l) => l,
            Err(err) => {
                self.free_chain(&mut st, c)?;
                return Err(err);
            }
        };
        self.touch_dir(&mut st, parent)?;
        let ino = self.ino_for(&mut st, loc, parent);
        self.attr_of(&mut st, ino)
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let (item, loc) = self.existing_item(&mut st, parent, name)?;
        if item.entry.is_dir() {
            return Err(Error::IsDir);
        }
        self.remove_entry(&mut st, parent, item.idx)?;
        self.touch_dir(&mut st, parent)?;
        self.forget_item(&mut st, loc, item.entry)
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let (item, loc) = self.existing_item(&mut st, parent, name)?;
        if !item.entry.is_dir() {
            return Err(Error::NotDir);
        }
        let ino = self.ino_for(&mut st, loc, parent);
        if !self.with_listing(&mut st, ino, |l| l.items.is_empty())? {
            return Err(Error::NotEmpty);
        }
        self.remove_entry(&mut st, parent, item.idx)?;
        self.touch_dir(&mut st, parent)?;
        self.forget_item(&mut st, loc, item.entry)
    }

    fn rename(&self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8]) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let (src, src_loc) = self.existing_item(&mut st, parent, name)?;
        let new_name = short_name::normalize(new_name)?;
        let src_ino = self.ino_for(&mut st, src_loc, parent);
        let is_dir = src.entry.is_dir();
        // Directories must exist as such.
        self.dir_first_cluster(&st, new_parent)?;
        if is_dir && self.is_ancestor(&st, src_ino, new_parent) {
            return Err(Error::Invalid("cannot move a directory into itself".into()));
        }
        if let Some((t, t_loc)) = self.find_item(&mut st, new_parent, &new_name)? {
            if t_loc == src_loc {
                if t.name == new_name {
                    return Ok(());
                }
            } else {
                match (is_dir, t.entry.is_dir()) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) => {
                        let tino = self.ino_for(&mut st, t_loc, new_parent);
                        if !self.with_listing(&mut st, tino, |l| l.items.is_empty())? {
                            return Err(Error::NotEmpty);
                        }
                    }
                    (false, false) => {}
                }
                self.remove_entry(&mut st, new_parent, t.idx)?;
                self.forget_item(&mut st, t_loc, t.entry)?;
            }
        }
        // The new entry is complete before the old one goes, so a failure (ENOSPC while
        // growing the target directory) leaves the file under its old name.
        let new_loc = self.insert_entry(&mut st, new_parent, &new_name, src.entry)?;
        self.remove_entry(&mut st, parent, src.idx)?;
        st.by_loc.remove(&src_loc);
        st.by_loc.insert(new_loc, src_ino);
        if let Some(n) = st.nodes.get_mut(&src_ino) {
            n.loc = Some(new_loc);
            n.parent = new_parent;
        }
        self.touch_dir(&mut st, parent)?;
        if new_parent != parent {
            self.touch_dir(&mut st, new_parent)?;
        }
        if is_dir && parent != new_parent {
            st.dirs.remove(&src_ino);
            let c = src.entry.first_cluster(self.fat32());
            let pc = if new_parent == ROOT_INO {
                0
            } else {
                self.dir_first_cluster(&st, new_parent)?
            };
            if self.g.valid_cluster(c) {
                let base = self.g.cluster_offset(c);
                let slots = (self.cs() / 32).min(4);
                for i in 0..slots {
                    let mut raw = [0u8; 32];
                    self.dev.read_at(base + i * 32, &mut raw)?;
                    if &raw[..11] == b"..         " {
                        let mut e = Entry(raw);
                        e.set_first_cluster(pc);
                        self.dev.write_at(base + i * 32, &e.0)?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let _g = self.write_guard();
        let mut st = self.lock();
        self.begin_write(&mut st)?;
        let mut e = self.entry(&st, ino)?.ok_or(Error::IsDir)?;
        if e.is_dir() {
            return Err(Error::IsDir);
        }
        let size = u64::from(e.size());
        // Like the kernel's s_maxbytes check: nothing at or past the limit (EFBIG), a write
        // that crosses it is cut short there.
        let max = u64::from(u32::MAX);
        if offset >= max && !data.is_empty() {
            return Err(Error::FileTooBig);
        }
        let data = &data[..data.len().min((max - offset.min(max)) as usize)];
        let end = offset + data.len() as u64;
        if data.is_empty() {
            return Ok(0);
        }
        let want = end.max(size).div_ceil(self.cs()) as u32;
        self.resize_then(&mut st, ino, &mut e, want, |runs| {
            self.zero_fill(runs, size, offset)?;
            self.data_io(runs, offset, data.len(), |dev_off, i, n| {
                self.dev.write_direct_at(dev_off, &data[i..i + n])
            })
        })?;
        e.set_size(end.max(size) as u32);
        self.stamp(&mut e, false);
        e.set_attr(e.attr() | ATTR_ARCHIVE);
        self.put_entry(&mut st, ino, &e)?;
        Ok(data.len())
    }

    fn setattr(&self, ino: Ino, ch: &SetAttr) -> Result<Attr> {
        let _g = self.write_guard();
        let mut st = self.lock();
        for id in [
            ch.uid.map(|u| (u, self.opts.uid)),
            ch.gid.map(|g| (g, self.opts.gid)),
        ]
        .into_iter()
        .flatten()
        {
            if id.0 != id.1 {
                return Err(Error::Access("FAT has no file owners".into()));
            }
        }
        let Some(mut e) = self.entry(&st, ino)? else {
            if ch.size.is_some() {
                return Err(Error::IsDir);
            }
            return self.attr_of(&mut st, ino);
        };
        if ch.size.is_none() && ch.mode.is_none() && ch.atime.is_none() && ch.mtime.is_none() {
            return self.attr_of(&mut st, ino);
        }
        self.begin_write(&mut st)?;
        let tz = self.opts.tz_offset_minutes;
        if let Some(size) = ch.size {
            if e.is_dir() {
                return Err(Error::IsDir);
            }
            if size > u64::from(u32::MAX) {
                return Err(Error::FileTooBig);
            }
            let old = u64::from(e.size());
            let want = size.div_ceil(self.cs()) as u32;
            self.resize_then(&mut st, ino, &mut e, want, |runs| {
                self.zero_fill(runs, old, size)
            })?;
            e.set_size(size as u32);
            self.stamp(&mut e, false);
            e.set_attr(e.attr() | ATTR_ARCHIVE);
        }
        if let Some(mode) = ch.mode {
            if !e.is_dir() {
                let a = if mode & 0o222 == 0 {
                    e.attr() | ATTR_RO
                } else {
                    e.attr() & !ATTR_RO
                };
                e.set_attr(a);
            }
        }
        if let Some(t) = ch.atime {
            e.set_adate(time::from_unix(t, tz).0);
        }
        if let Some(t) = ch.mtime {
            let (d, tm, _) = time::from_unix(t, tz);
            e.set_mtime(d, tm);
        }
        self.put_entry(&mut st, ino, &e)?;
        self.attr_of(&mut st, ino)
    }

    fn fsync(&self, ino: Ino) -> Result<()> {
        let _g = self.write_guard();
        let st = self.lock();
        self.node(&st, ino)?;
        if st.dirty_marked {
            self.write_fsinfo(&st)?;
        }
        self.dev.flush()
    }

    fn sync(&self) -> Result<()> {
        let _g = self.write_guard();
        let mut st = self.lock();
        if st.dirty_marked {
            self.write_fsinfo(&st)?;
            if !self.was_dirty {
                self.set_dirty_flags(false)?;
            }
            st.dirty_marked = false;
        }
        if self.writable {
            self.dev.flush()?;
        }
        Ok(())
    }
}
