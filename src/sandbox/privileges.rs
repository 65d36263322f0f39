//! Giving up root: the serving process of a root-started mount becomes the invoking user (from
//! sudo's SUDO_UID/SUDO_GID) or else nobody, with no capabilities left in any set. Everything
//! it needs from then on is already open (the image, /dev/fuse) or done for it by the watcher.

use caps::CapSet;
use nix::unistd::{Gid, Uid};

/// The nobody account when /etc/passwd has none (the kernel's overflow uid).
const NOBODY: u32 = 65534;

/// The uid and gid a root-started daemon changes to; None when not running as root.
pub fn target_ids() -> Option<(u32, u32)> {
    if !Uid::effective().is_root() {
        return None;
    }
    let env_id = |name: &str| -> Option<u32> {
        std::env::var(name)
            .ok()?
            .parse()
            .ok()
            .filter(|&id: &u32| id != 0)
    };
    if let (Some(uid), Some(gid)) = (env_id("SUDO_UID"), env_id("SUDO_GID")) {
        return Some((uid, gid));
    }
    match nix::unistd::User::from_name("nobody") {
        Ok(Some(u)) if !u.uid.is_root() => Some((u.uid.as_raw(), u.gid.as_raw())),
        _ => Some((NOBODY, NOBODY)),
    }
}

/// Changes every uid and gid to `ids` and leaves no supplementary group. Must run while the
/// process has one thread: a uid change affects only the calling thread at the kernel level.
pub fn switch_ids(ids: (u32, u32)) -> Result<(), String> {
    let (uid, gid) = (Uid::from_raw(ids.0), Gid::from_raw(ids.1));
    // The bounding set can only shrink while CAP_SETPCAP is still held, i.e. before the uid
    // changes; clearing it means no later exec could regain anything either.
    caps::clear(None, CapSet::Bounding).map_err(|e| format!("capability bounding set: {e}"))?;
    nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))?;
    let r = nix::unistd::getresuid().map_err(|e| format!("getresuid: {e}"))?;
    if [r.real, r.effective, r.saved] != [uid; 3] {
        return Err("the uid did not change".into());
    }
    Ok(())
}

/// Empties every capability set this process can change. A uid change away from 0 already
/// empties the permitted and effective sets; this also covers a daemon that started with
/// capabilities but not as root (ambient or file capabilities).
pub fn drop_capabilities() -> Result<(), String> {
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| format!("capabilities ({set:?}): {e}"))?;
    }
    let left = caps::read(None, CapSet::Effective).map_err(|e| e.to_string())?;
    if !left.is_empty() {
        return Err(format!("capabilities still effective: {left:?}"));
    }
    Ok(())
}

/// Whether the kernel still lets us set NoNewPrivs; the flag is what makes the seccomp filter
/// and Landlock available to a process without CAP_SYS_ADMIN.
pub fn set_no_new_privs() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A process whose uid changed is not dumpable by default, but only if the kernel's
/// suid_dumpable says so: make sure the invoking user cannot ptrace the daemon, which holds
/// descriptors root opened.
pub fn forbid_ptrace() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

/// For the watcher of a root-started mount: of root's capabilities keep only what unmounting
/// and looking at the mount point need (CAP_SYS_ADMIN for umount2, CAP_DAC_READ_SEARCH to
/// reach a mount point below a directory closed to root's uid), in every set including the
/// bounding set.
pub fn keep_only_unmount_rights() -> Result<(), String> {
    use caps::{Capability, CapsHashSet};
    let keep: CapsHashSet = [Capability::CAP_SYS_ADMIN, Capability::CAP_DAC_READ_SEARCH]
        .into_iter()
        .collect();
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| e.to_string())?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| e.to_string())?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| e.to_string())?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| e.to_string())?;
    Ok(())
}
