//! Hybrid ISOs: an ISO 9660 volume that starts at byte 0 of a disk which also carries an MBR
//! or GPT (xorriso's isohybrid and `-append_partition` layouts), so the same bytes are both
//! a CD image and a partitioned disk.
//!
//! The rule (docs/iso9660.md): when the whole image holds an ISO 9660 primary volume
//! descriptor at 32 KiB and some partition of the table overlaps the ISO's volume space
//! (from that descriptor to the volume's end), the ISO is the disk's main view: it is listed
//! first as an extra, index-less volume, and a mount or `ls` without `-p` shows its tree.
//! `-p N` and `-p all` still reach the partitions (an appended EFI partition, say).

use crate::block::DeviceRef;
use crate::disk::Volume;
use crate::iso9660::{self, DESCRIPTOR_START};
use crate::partition::{PartitionTable, Scheme};
use crate::probe::{FsKind, Probe};
use crate::Result;

/// The whole-disk ISO volume when the rule above applies.
pub fn iso_over_table(device: &DeviceRef, table: &PartitionTable) -> Result<Option<Volume>> {
    if table.scheme == Scheme::None {
        return Ok(None);
    }
    let Some(id) = iso9660::identify(device.as_ref())? else {
        return Ok(None);
    };
    let iso_end = id.bytes.min(device.size());
    let overlaps = table.partitions.iter().any(|p| {
        !p.ptype.is_extended()
            && p.start < iso_end
            && p.start.saturating_add(p.size) > DESCRIPTOR_START
    });
    if !overlaps {
        return Ok(None);
    }
    Ok(Some(Volume {
        index: None,
        start: 0,
        size: device.size(),
        ptype: None,
        name: None,
        uuid: None,
        bootable: false,
        logical: false,
        container: false,
        probe: Some(Probe {
            kind: FsKind::Iso9660,
            label: id.label,
            uuid: id.uuid,
        }),
        probe_error: None,
        device: device.clone(),
    }))
}
