//! What the mount daemon declares before entering its sandbox (see `crate::sandbox`): the
//! paths it still opens while serving, and whether it changes ids. Files a daemon creates
//! after the start (a write overlay's store, an index cache) are granted here, up front.

use std::path::Path;

use crate::sandbox::{self, Access, Plan, Protection};

use super::service::Service;
use super::{log, pidfile};

const DEV_FUSE: &str = "/dev/fuse";

pub fn for_daemon(uid: u32, service: &Service) -> Plan {
    let switch_ids = sandbox::target_ids();
    let mut plan = Plan {
        switch_ids,
        ..Plan::default()
    };
    // fuser opens /dev/fuse again for each extra worker thread (FUSE_DEV_IOC_CLONE).
    if may_open_rw(Path::new(DEV_FUSE), switch_ids) {
        plan.grant(Path::new(DEV_FUSE), Access::ReadWrite);
    }
    // Removing our pid file at the end; a daemon that changed uid cannot (the directory is
    // root's), and leaves that to the watcher.
    if switch_ids.is_none() {
        plan.grant(&pidfile::dir_for(uid), Access::ReadRemove);
        // --pid-file and --mkdir leftovers, removed at the end (the watcher tries too).
        let parents = service
            .pid_file
            .iter()
            .chain(&service.made_dirs)
            .filter_map(|p| p.parent());
        for dir in parents {
            plan.grant(dir, Access::ReadRemove);
        }
    }
    plan
}

/// Whether the worker threads get channels of their own: only if the serving process will
/// still be allowed to open /dev/fuse. Otherwise they share one, which works as well, a bit
/// slower under parallel load.
pub fn can_clone_channels(plan: &Plan) -> bool {
    plan.grants
        .iter()
        .any(|g| g.path == Path::new(DEV_FUSE) && g.access == Access::ReadWrite)
}

/// Whether the daemon, as the ids it will have, may open `path` read-write.
fn may_open_rw(path: &Path, ids: Option<(u32, u32)>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((uid, gid)) = ids else {
        return nix::unistd::access(
            path,
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
        )
        .is_ok();
    };
    let Ok(md) = std::fs::metadata(path) else {
        return false;
    };
    let m = md.mode();
    let rw = |shift: u32| (m >> shift) & 0o6 == 0o6;
    if md.uid() == uid {
        rw(6)
    } else if md.gid() == gid {
        rw(3)
    } else {
        rw(0)
    }
}

/// One log line with what is on, and one error line per protection that is missing.
pub fn report(list: &[Protection]) {
    let on: Vec<&str> = list
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| *n)
        .collect();
    log::info(&format!("sandbox: {}", on.join(", ")));
    for line in sandbox::describe(list) {
        if line.contains(": MISSING") {
            log::error(&format!("sandbox: {line}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_fuse_access_for_the_ids_the_daemon_will_have() {
        let dir = std::env::temp_dir().join(format!("imgmount-plan-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let set = |m: u32| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m));
        let md = std::fs::metadata(&dir).unwrap();
        use std::os::unix::fs::MetadataExt;
        let (owner, group) = (md.uid(), md.gid());
        let stranger = (owner.wrapping_add(4242), group.wrapping_add(4242));
        set(0o666).unwrap();
        assert!(may_open_rw(&dir, Some(stranger)));
        set(0o600).unwrap();
        assert!(!may_open_rw(&dir, Some(stranger)));
        assert!(may_open_rw(&dir, Some((owner, stranger.1))));
        set(0o660).unwrap();
        assert!(may_open_rw(&dir, Some((stranger.0, group))));
        set(0o640).unwrap();
        assert!(!may_open_rw(&dir, Some((stranger.0, group))));
        std::fs::remove_file(&dir).unwrap();
        assert!(!may_open_rw(&dir, Some(stranger)));
    }
}
