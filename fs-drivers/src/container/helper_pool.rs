//! Persistent helper threads of the serving process, shared by the layers that hand work to
//! threads which outlive a call (LUKS sector crypto, compressed clusters decoded ahead).
//!
//! The FUSE daemon forks after the image is opened, and a fork keeps only the calling thread:
//! no thread may exist before it. So a pool starts lazily, only once
//! `compressed::allow_read_ahead(true)` was called (the daemon does that in the child), and
//! it is keyed by process id: a forked child never touches its parent's pool.

use std::sync::{Arc, Mutex};

/// A pool slot: the process that started the pool, and the pool.
pub(crate) type Slot = Mutex<Option<(u32, Arc<rayon::ThreadPool>)>>;

/// The pool in `slot` (started with `threads` threads named `name` on first use), when
/// threads may outlive a call and the machine has two cores or more.
pub(crate) fn pool(
    slot: &Slot,
    threads: usize,
    name: &'static str,
) -> Option<Arc<rayon::ThreadPool>> {
    if !super::compressed::read_ahead_allowed()
        || std::thread::available_parallelism().map_or(1, |n| n.get()) < 2
    {
        return None;
    }
    let pid = std::process::id();
    let mut g = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((p, pool)) = g.as_ref() {
        if *p == pid {
            return Some(pool.clone());
        }
    }
    // A parent's pool in a forked child: its threads are not here; never touched.
    if let Some(old) = g.take() {
        std::mem::forget(old);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |_| name.into())
        .build()
        .ok()
        .map(Arc::new)?;
    *g = Some((pid, pool.clone()));
    Some(pool)
}
