//! Cluster chains of the FAT driver: allocation near a goal, freeing, growing and shrinking a
//! file's chain with rollback, and data I/O over a run list. Writers allocate every cluster
//! they need before linking any, so ENOSPC or a failed write leaves the file as it was.

use super::*;

impl FatFs {
    pub(super) fn set_dirty_flags(&self, dirty: bool) -> Result<()> {
        let mut b = [0u8; 1];
        self.dev.read_at(self.g.state_offset, &mut b)?;
        b[0] = if dirty { b[0] | 1 } else { b[0] & !1 };
        self.dev.write_at(self.g.state_offset, &b)?;
        if self.g.fat_type != FatType::Fat12 {
            let bit = if self.g.fat_type == FatType::Fat16 {
                0x8000
            } else {
                0x0800_0000
            };
            let v = table::read_entry(&*self.dev, &self.g, 1)?;
            table::write_entry(
                &*self.dev,
                &self.g,
                1,
                if dirty { v & !bit } else { v | bit },
            )?;
        }
        Ok(())
    }

    /// Every change starts here: refuses on a read-only mount, marks the volume dirty once,
    /// and makes sure the free map exists.
    pub(super) fn begin_write(&self, st: &mut State) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        self.free_map(st)?;
        if !st.dirty_marked {
            // Durable before the first real change, so a crash is always seen by fsck.
            self.set_dirty_flags(true)?;
            self.dev.flush()?;
            st.dirty_marked = true;
        }
        Ok(())
    }

    pub(super) fn free_map<'a>(&self, st: &'a mut State) -> Result<&'a mut FreeMap> {
        if st.free.is_none() {
            let mut fm = FreeMap::build(&*self.dev, &self.g)?;
            // Start where the last writer left off, as Linux does with FSInfo's hint.
            if let Some((_, Some(h))) = self.fsinfo()? {
                fm.hint = h;
            }
            st.free = Some(fm);
        }
        // Just filled above.
        st.free.as_mut().ok_or_else(|| Error::corrupt("free map"))
    }

    /// Allocates `n` clusters as a terminated chain (not yet linked to anything); the result
    /// holds exactly `n` clusters, so callers asking for n ≥ 1 may index `[0]`.
    pub(super) fn alloc_chain(&self, st: &mut State, n: u32, near: u32) -> Result<Vec<u32>> {
        let fm = self.free_map(st)?;
        let picked = fm.pick(&self.g, n, near)?;
        for (i, &c) in picked.iter().enumerate() {
            let next = picked
                .get(i + 1)
                .copied()
                .unwrap_or(table::eoc(self.g.fat_type));
            table::write_entry(&*self.dev, &self.g, c, next)?;
            fm.set_used(c, true);
        }
        if let Some(&last) = picked.last() {
            fm.hint = if last < self.g.max_cluster() {
                last + 1
            } else {
                2
            };
        }
        Ok(picked)
    }

    /// Frees the chain starting at `first`, as far as it is well formed.
    pub(super) fn free_chain(&self, st: &mut State, first: u32) -> Result<()> {
        let mut freed: Vec<(u32, u32)> = Vec::new();
        let mut c = first;
        let mut count = 0u32;
        while self.g.valid_cluster(c) && count <= self.g.cluster_count {
            let next = table::read_entry(&*self.dev, &self.g, c)?;
            if next == 0 {
                break;
            }
            table::write_entry(&*self.dev, &self.g, c, 0)?;
            self.free_map(st)?.set_used(c, false);
            match freed.last_mut() {
                Some(r) if r.0 + r.1 == c => r.1 += 1,
                _ => freed.push((c, 1)),
            }
            count += 1;
            match table::classify(&self.g, next) {
                table::Next::Cluster(n) => c = n,
                _ => break,
            }
        }
        if self.opts.discard {
            for (c, n) in freed {
                self.dev
                    .discard(self.g.cluster_offset(c), u64::from(n) * self.cs())?;
            }
        }
        Ok(())
    }

    /// Grows or shrinks the chain of file `ino` to `want` clusters, updating `e`'s first
    /// cluster (the caller writes `e`). New clusters are allocated as a whole chain before
    /// being linked, so ENOSPC leaves the file as it was.
    pub(super) fn resize_chain(
        &self,
        st: &mut State,
        ino: Ino,
        e: &mut Entry,
        want: u32,
    ) -> Result<Arc<Runs>> {
        let first = e.first_cluster(self.fat32());
        let cur = self.runs_for(st, ino, first)?;
        let have = cur.total;
        if want == have {
            return Ok(cur);
        }
        let mut runs = (*cur).clone();
        if want > have {
            let near = runs.last().unwrap_or(0);
            let new = self.alloc_chain(st, want - have, near)?;
            match runs.last() {
                Some(last) => table::write_entry(&*self.dev, &self.g, last, new[0])?,
                None => {
                    e.set_first_cluster(new[0]);
                    runs.first = new[0];
                }
            }
            for c in new {
                runs.push(c);
            }
        } else if want == 0 {
            e.set_first_cluster(0);
            self.free_chain(st, first)?;
            runs.truncate(0);
        } else {
            let (keep, _) = runs
                .map(want - 1)
                .ok_or_else(|| Error::corrupt("run list"))?;
            let (drop, _) = runs.map(want).ok_or_else(|| Error::corrupt("run list"))?;
            table::write_entry(&*self.dev, &self.g, keep, table::eoc(self.g.fat_type))?;
            self.free_chain(st, drop)?;
            runs.truncate(want);
        }
        let runs = Arc::new(runs);
        st.runs.insert(ino, runs.clone());
        Ok(runs)
    }

    /// Copies between `buf` and the file's clusters at file offset `off`.
    pub(super) fn data_io(
        &self,
        runs: &Runs,
        off: u64,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let cs = self.cs();
        let mut done = 0usize;
        while done < len {
            let pos = off + done as u64;
            let ci = u32::try_from(pos / cs).map_err(|_| Error::corrupt("offset"))?;
            let within = pos % cs;
            let (c, contig) = runs
                .map(ci)
                .ok_or_else(|| Error::corrupt("file size beyond its cluster chain"))?;
            let avail = u64::from(contig) * cs - within;
            let n = avail.min((len - done) as u64) as usize;
            f(self.g.cluster_offset(c) + within, done, n)?;
            done += n;
        }
        Ok(())
    }

    /// Resizes the file's chain to `want` clusters, then writes through `fill`. If `fill`
    /// fails, the data never reached the image: clusters the resize added go back to the free
    /// pool, so a failed device write leaks nothing (the entry on disk still names the old
    /// chain). A failure of that rollback would only leak; `fill`'s error wins.
    pub(super) fn resize_then(
        &self,
        st: &mut State,
        ino: Ino,
        e: &mut Entry,
        want: u32,
        fill: impl FnOnce(&Runs) -> Result<()>,
    ) -> Result<()> {
        let before = self.runs_for(st, ino, e.first_cluster(self.fat32()))?.total;
        let runs = self.resize_chain(st, ino, e, want)?;
        if let Err(err) = fill(&runs) {
            if want > before {
                let _ = self.resize_chain(st, ino, e, before);
            }
            return Err(err);
        }
        Ok(())
    }

    pub(super) fn zero_fill(&self, runs: &Runs, from: u64, to: u64) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(zeros.len() as u64) as usize;
            self.data_io(runs, pos, n, |dev_off, i, len| {
                self.dev.write_direct_at(dev_off, &zeros[i..i + len])
            })?;
            pos += n as u64;
        }
        Ok(())
    }
}
