//! FAT32's FSInfo sector: the free-cluster count and next-free hint, trusted only when
//! plausible, and rewritten at sync.

use super::*;

impl FatFs {
    /// FSInfo's (free-cluster count, next-free hint) when the sector is valid; each value
    /// only when plausible.
    pub(super) fn fsinfo(&self) -> Result<Option<(Option<u32>, Option<u32>)>> {
        let Some(off) = self.g.fsinfo_offset else {
            return Ok(None);
        };
        let mut b = [0u8; 512];
        self.dev.read_at(off, &mut b)?;
        if b[..4] != 0x4161_5252u32.to_le_bytes() || b[484..488] != 0x6141_7272u32.to_le_bytes() {
            return Ok(None);
        }
        let n = u32::from_le_bytes([b[488], b[489], b[490], b[491]]);
        let h = u32::from_le_bytes([b[492], b[493], b[494], b[495]]);
        Ok(Some((
            (n <= self.g.cluster_count).then_some(n),
            self.g.valid_cluster(h).then_some(h),
        )))
    }

    pub(super) fn fsinfo_free(&self) -> Result<Option<u32>> {
        Ok(self.fsinfo()?.and_then(|f| f.0))
    }

    pub(super) fn write_fsinfo(&self, st: &State) -> Result<()> {
        let (Some(off), Some(fm)) = (self.g.fsinfo_offset, st.free.as_ref()) else {
            return Ok(());
        };
        let mut b = [0u8; 512];
        self.dev.read_at(off, &mut b)?;
        if b[..4] != 0x4161_5252u32.to_le_bytes() || b[484..488] != 0x6141_7272u32.to_le_bytes() {
            return Ok(());
        }
        b[488..492].copy_from_slice(&fm.free.to_le_bytes());
        b[492..496].copy_from_slice(&fm.hint.to_le_bytes());
        self.dev.write_at(off + 488, &b[488..496])
    }
}
