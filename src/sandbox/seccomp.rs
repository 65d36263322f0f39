//! The system calls the serving daemon makes once its sandbox is on: everything else is
//! refused. The list was measured (`strace -f` of a daemon through a full tree walk with
//! every file read, xattr listing, a FAT read-write workload with fsync, `imgmount umount`
//! and SIGTERM; see docs/security.md) and is checked by running the mount tests with the
//! filter's kill action: a call missing here kills the daemon and fails the test.
//!
//! Argument checks where they are cheap and meaningful: new threads yes, new processes no
//! (clone must carry CLONE_THREAD; clone3 hides its flags in memory, so it answers ENOSYS and
//! the C library falls back to clone); ioctl only for cloning the /dev/fuse channel; signals
//! only to this process; no executable memory.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// `FUSE_DEV_IOC_CLONE`: _IOR(229, 0, uint32_t).
const FUSE_DEV_IOC_CLONE: u64 = 0x8004_e500;

/// Calls allowed whatever their arguments. Measured with benches/syscalls.sh (root, FAT
/// read-write workload, umount, SIGTERM; Linux 6.18, glibc 2.41); the few marked "path not
/// measured" are on a known path the workload does not take.
const PLAIN: &[libc::c_long] = &[
    // Serving: FUSE requests in and out, the image read and written.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    // Direct reads through io_uring (src/uring.rs): the ring, made before the filter, is
    // restricted to IORING_OP_READ, so entering it does no more than pread64.
    libc::SYS_io_uring_enter,
    libc::SYS_fsync,
    // A copy-on-write store (fs_drivers::cow): data before the metadata that points at it, and
    // the store file grown as chunks are added.
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fadvise64,
    // -o discard (FileDevice: punch hole, zero range); path not measured.
    libc::SYS_fallocate,
    libc::SYS_statx,
    // std's fallback where statx is refused; path not measured.
    libc::SYS_newfstatat,
    libc::SYS_close,
    // Opening /dev/fuse for each worker channel, reading and removing the pid file: Landlock
    // decides which paths.
    libc::SYS_openat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(not(target_arch = "x86_64"))]
    libc::SYS_unlinkat,
    // Removing the mount point directories --mkdir made (Landlock decides which).
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    // Memory and threads.
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    // LUKS's helper pool (rayon) yields while its idle threads spin before they sleep.
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_clone3,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Signals: the main thread waits for SIGTERM & co.; the session thread raises SIGUSR1.
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    // `imgmount run`: is the parent that started us still there (after re-arming PDEATHSIG).
    libc::SYS_getppid,
    libc::SYS_gettid,
    // Time is the vDSO's; this is its fallback where the clock source has none.
    libc::SYS_clock_gettime,
    // Reaping fusermount3's auto_unmount helper at the end (ordinary users); path not measured
    // as root.
    libc::SYS_wait4,
    // The log (a file already open, or the syslog socket connected before the sandbox) and
    // the watcher's replies (std reads sockets with recv).
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    // A panic message with a backtrace (RUST_BACKTRACE set, std's default hook, as in the
    // tests' daemon): paths are shortened by the working directory, the executable is found
    // through /proc/self/exe (and then refused by Landlock, so the trace has no symbols).
    libc::SYS_getcwd,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(not(target_arch = "x86_64"))]
    libc::SYS_readlinkat,
];

/// `int` arguments are compared on their low 32 bits: the upper half of the register is not
/// guaranteed to be clean.
fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Only fails for an argument index above 5, which none of these use.
    SeccompCondition::new(arg, len, op, value).expect("argument index")
}

fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    // Only fails for an empty condition list, which none of these are.
    SeccompRule::new(conds).expect("conditions")
}

/// Every allowed call with its argument conditions (an empty list: any arguments).
pub fn allowed(pid: u32) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut m: BTreeMap<i64, Vec<SeccompRule>> = PLAIN.iter().map(|&s| (s, vec![])).collect();
    let own = u64::from(pid);
    m.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )])],
    );
    m.insert(
        libc::SYS_ioctl,
        vec![rule(vec![cond(
            1,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Eq,
            FUSE_DEV_IOC_CLONE,
        )])],
    );
    // No new executable memory (no W^X bypass for injected code): mmap and mprotect only
    // without PROT_EXEC.
    for nr in [libc::SYS_mmap, libc::SYS_mprotect] {
        m.insert(
            nr,
            vec![rule(vec![cond(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
                0,
            )])],
        );
    }
    // Debug builds of std check that a descriptor is open before closing it.
    m.insert(
        libc::SYS_fcntl,
        vec![rule(vec![cond(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )])],
    );
    m.insert(
        libc::SYS_kill,
        vec![rule(vec![cond(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            own,
        )])],
    );
    m.insert(
        libc::SYS_tgkill,
        vec![rule(vec![cond(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            own,
        )])],
    );
    // Naming threads, and re-arming the parent-death signal that a change of uid cleared
    // (`imgmount run`'s daemon stops with its parent).
    m.insert(
        libc::SYS_prctl,
        [libc::PR_SET_NAME, libc::PR_SET_PDEATHSIG]
            .into_iter()
            .map(|op| {
                rule(vec![cond(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    op as u64,
                )])
            })
            .collect(),
    );
    m
}

fn arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| format!("no seccomp filter for {}", std::env::consts::ARCH))
}

/// Installs the filter on every thread of the process. `refuse` is what an unlisted call
/// gets: EPERM in a release build; the test build may choose killing the process instead.
pub fn install(pid: u32, refuse: SeccompAction) -> Result<(), String> {
    let arch = arch()?;
    let main: BpfProgram = SeccompFilter::new(allowed(pid), refuse, SeccompAction::Allow, arch)
        .and_then(TryInto::try_into)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    // A second, stacked filter: the kernel applies the stricter answer, so clone3 (allowed
    // above) answers ENOSYS and glibc uses clone, whose flags the first filter can check.
    let clone3: BpfProgram = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e| format!("seccomp filter: {e}"))?;
    // In this order: once the main filter is on, installing another is no longer allowed.
    seccompiler::apply_filter_all_threads(&clone3).map_err(|e| format!("seccomp: {e}"))?;
    seccompiler::apply_filter_all_threads(&main).map_err(|e| format!("seccomp: {e}"))?;
    Ok(())
}

/// Whether this kernel has seccomp filtering (`--version` and `info`).
pub fn kernel_support() -> Result<(), String> {
    // PR_GET_SECCOMP fails with EINVAL on a kernel built without CONFIG_SECCOMP.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Err("not built into this kernel".into());
    }
    arch().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_for_this_architecture() {
        let prog: BpfProgram = SeccompFilter::new(
            allowed(1),
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch().unwrap(),
        )
        .and_then(TryInto::try_into)
        .unwrap();
        assert!(prog.len() > allowed(1).len());
    }

    /// What the sandbox exists to refuse stays off the list: a new entry here needs a reason
    /// in docs/security.md, not just a passing test.
    #[test]
    fn escape_routes_are_not_listed() {
        let list = allowed(1);
        for (name, nr) in [
            ("socket", libc::SYS_socket),
            ("socketpair", libc::SYS_socketpair),
            ("connect", libc::SYS_connect),
            ("bind", libc::SYS_bind),
            ("execve", libc::SYS_execve),
            ("execveat", libc::SYS_execveat),
            ("ptrace", libc::SYS_ptrace),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("mount", libc::SYS_mount),
            ("umount2", libc::SYS_umount2),
            ("setuid", libc::SYS_setuid),
            ("setresuid", libc::SYS_setresuid),
            ("capset", libc::SYS_capset),
            ("bpf", libc::SYS_bpf),
            ("unshare", libc::SYS_unshare),
            ("setns", libc::SYS_setns),
            ("chmod", libc::SYS_fchmodat),
            ("linkat", libc::SYS_linkat),
            ("symlinkat", libc::SYS_symlinkat),
            ("renameat2", libc::SYS_renameat2),
            ("mkdirat", libc::SYS_mkdirat),
        ] {
            assert!(!list.contains_key(&nr), "{name} is allowed");
        }
        // Allowed only with argument checks.
        for nr in [
            libc::SYS_clone,
            libc::SYS_ioctl,
            libc::SYS_kill,
            libc::SYS_tgkill,
            libc::SYS_prctl,
            libc::SYS_fcntl,
            libc::SYS_mmap,
            libc::SYS_mprotect,
        ] {
            assert!(!list[&nr].is_empty(), "syscall {nr} has no argument check");
        }
    }
}
