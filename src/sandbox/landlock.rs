//! The Landlock ruleset: from here on the daemon may open nothing by path except what the
//! plan grants (what serving still needs: /dev/fuse for the extra worker channels, the pid
//! file directory to remove its file, and whatever a caller declares up front), may not
//! connect or bind TCP ports, and may not signal or reach abstract sockets outside itself.
//! Descriptors opened before (the image, /dev/fuse, the log) keep working.

use ::landlock::{
    Access as _, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use super::{Access, Grant};

/// The newest ABI these rules were written and tested against (Linux 6.12: signal and
/// abstract-socket scoping). Older kernels enforce what they know (best effort); newer rights
/// stay unhandled until added here deliberately.
const TESTED_ABI: ABI = ABI::V6;

fn rights(a: Access) -> ::landlock::BitFlags<AccessFs> {
    match a {
        Access::ReadWrite => {
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev
        }
        Access::ReadRemove => AccessFs::ReadFile | AccessFs::RemoveFile | AccessFs::RemoveDir,
        Access::CreateIn => {
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate
        }
    }
}

/// Restricts this thread and the threads it starts later. Returns how much the kernel enforces.
pub fn restrict(grants: &[Grant]) -> Result<String, String> {
    let err = |e: ::landlock::RulesetError| e.to_string();
    let mut created = Ruleset::default()
        .handle_access(AccessFs::from_all(TESTED_ABI))
        .map_err(err)?
        .handle_access(AccessNet::from_all(TESTED_ABI))
        .map_err(err)?
        .scope(Scope::from_all(TESTED_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?;
    for g in grants {
        // A path that is gone cannot be opened later either; nothing to grant.
        let Ok(fd) = PathFd::new(&g.path) else {
            continue;
        };
        created = created
            .add_rule(PathBeneath::new(fd, rights(g.access)))
            .map_err(err)?;
    }
    let status = created.restrict_self().map_err(err)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok("fully enforced".into()),
        RulesetStatus::PartiallyEnforced => Ok("partially enforced (older kernel ABI)".into()),
        RulesetStatus::NotEnforced => Err("not supported by this kernel".into()),
    }
}

/// The kernel's Landlock ABI version, for `--version` and `info`.
pub fn kernel_abi() -> Result<i32, String> {
    // SAFETY: the documented version query: NULL attributes, size 0, flag VERSION.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    if v < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => "disabled at boot (lsm= does not list landlock)".into(),
            Some(libc::ENOSYS) => "not built into this kernel".into(),
            _ => e.to_string(),
        });
    }
    Ok(v as i32)
}
