//! Which processes get attributes with their directory listings.
//!
//! A READDIRPLUS reply makes the kernel build an inode and a dentry for every entry. A
//! process that then stats the entries (`ls -l`, `tar`, `du`, `os.walk` + `lstat`) saves a
//! LOOKUP round trip per entry; one that only wants names and types (`find -type f`, `ls`)
//! pays for up to 100,000 inodes it never touches: on a cold 100,000-file tree that made
//! `find` 4x slower than the kernel's own ext4, which never reads a file's inode for it.
//!
//! The kernel's FUSE_READDIRPLUS_AUTO only sends READDIRPLUS for the first request of a
//! listing (and after lookups in that directory); the rest come as plain READDIR. So a reply
//! to that first request can choose: entries with attributes, or just "." and ".." — after
//! which the kernel asks for the rest as plain READDIR. We choose per process, from what the
//! process did before: one that has looked up a non-directory is a stat-ing walker and gets
//! attributes; one that has not (yet) gets names. A walker's first directory therefore costs
//! a LOOKUP per entry, once, about what READDIRPLUS_AUTO already costs any listing larger
//! than one reply.

use std::collections::HashSet;
use std::sync::Mutex;

/// Processes remembered; a full set starts over (a forgotten walker relearns in one
/// directory). Keyed by the kernel's pid of the request, a thread id for threaded walkers.
const MAX_PROCESSES: usize = 4096;

#[derive(Default)]
pub struct ListingModes {
    stat_users: Mutex<HashSet<u32>>,
}

impl ListingModes {
    /// `pid` looked up a non-directory: from now on its listings carry attributes.
    pub fn saw_file_lookup(&self, pid: u32) {
        let mut set = self.stat_users.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_PROCESSES && !set.contains(&pid) {
            set.clear();
        }
        set.insert(pid);
    }

    /// Whether `pid`'s listings should carry attributes.
    pub fn wants_attributes(&self, pid: u32) -> bool {
        self.stat_users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gets_attributes_after_it_looked_up_a_file() {
        let m = ListingModes::default();
        assert!(!m.wants_attributes(7));
        m.saw_file_lookup(7);
        assert!(m.wants_attributes(7));
        assert!(!m.wants_attributes(8));
    }

    #[test]
    fn the_set_stays_bounded() {
        let m = ListingModes::default();
        for pid in 0..(MAX_PROCESSES as u32 * 3) {
            m.saw_file_lookup(pid);
            assert!(m.wants_attributes(pid));
        }
        assert!(m.stat_users.lock().unwrap().len() <= MAX_PROCESSES);
    }
}
