//! Direct-I/O reads kept in flight by io_uring instead of a thread pool (the `ReadQueue` the
//! direct device in fs-drivers takes; fs-drivers forbids unsafe code, and pushing a read on a
//! ring is unsafe: the kernel writes into a buffer the compiler cannot see borrowed).
//!
//! One ring per process, served by one thread that owns it: callers send jobs over a channel,
//! the thread pushes them, waits for completions and finishes each job's promise. The ring
//! is restricted to IORING_OP_READ (IORING_REGISTER_RESTRICTIONS) before it is enabled, so
//! allowing `io_uring_enter` in the daemon's seccomp filter lets it do nothing `pread64` (on
//! the descriptors it already holds) could not: a ring cannot be made under the filter, and
//! this one cannot open, connect or write.
//!
//! Rings are made before the sandbox (`prepare`, in the daemon after its fork) or on first
//! use where there is no sandbox (`imgmount cat --direct`). The default is the pool (it
//! measured faster); `IMGMOUNT_DIRECT_QUEUE=uring` or `=pool` chooses (benches/luks_direct.py).

use fs_drivers::block::{AlignedBuf, PoolMaker, ReadDone, ReadQueue, ReadQueueMaker};
use io_uring::{opcode, register::Restriction, types, IoUring};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};

/// The ring's size: reads in flight at most, plus the wake-up read. A sequential reader keeps
/// 4-5 1 MiB chunks in flight, so a few readers fit; more wait in the thread's backlog.
const ENTRIES: u32 = 32;
/// The user data of the wake-up read (jobs count up from 0).
const WAKE: u64 = u64::MAX;

/// Which queue direct reads use when nothing overrides it: the pool, because it read a cold
/// 512 MiB file faster than the ring in all three side-by-side runs (832 against 496 MB/s,
/// 492 against 311, 717 against 551; docs/direct-io.md); random reads do not use the queue.
const DEFAULT_URING: bool = false;

/// A ring that can only read, with the eventfd that wakes its thread: the thread keeps a read
/// of the eventfd on the ring, so one wait (`submit_and_wait`) sees both completions and new
/// jobs (a caller writes the eventfd after sending a job).
struct Ring {
    ring: IoUring,
    wake: Arc<EventFd>,
}

/// The serving thread of one process's ring.
struct Running {
    pid: u32,
    jobs: Arc<Mutex<Sender<Job>>>,
    wake: Arc<EventFd>,
}

/// A ring made before the sandbox, by this process id, not yet served.
static PREPARED: Mutex<Option<(u32, Ring)>> = Mutex::new(None);
static RUNNING: Mutex<Option<Running>> = Mutex::new(None);
/// The maker this run chose, and whether it is the ring's.
static CHOSEN: OnceLock<(Arc<dyn ReadQueueMaker>, bool)> = OnceLock::new();
/// The queue maker for direct reads, chosen once per run: io_uring when asked for (or made the
/// default) and the kernel makes a restricted ring, else the pool.
pub fn maker() -> Arc<dyn ReadQueueMaker> {
    chosen().0.clone()
}

fn chosen() -> &'static (Arc<dyn ReadQueueMaker>, bool) {
    CHOSEN.get_or_init(|| {
        let want = match std::env::var("IMGMOUNT_DIRECT_QUEUE").as_deref() {
            Ok("pool") => false,
            Ok("uring") => true,
            _ if !DEFAULT_URING => {
                return (
                    Arc::new(PoolFallback(
                        "the pool measured faster here; IMGMOUNT_DIRECT_QUEUE=uring uses it".into(),
                    )),
                    false,
                )
            }
            _ => true,
        };
        if !want {
            return (Arc::new(PoolMaker), false);
        }
        match new_ring() {
            Ok(_) => (Arc::new(UringMaker), true),
            Err(e) => (Arc::new(PoolFallback(e.to_string())), false),
        }
    })
}

/// Makes this process's ring while it still may (before seccomp refuses io_uring_setup):
/// called by the daemon just before it enters its sandbox, when direct reads use the ring.
pub fn prepare() {
    let Some((_, true)) = CHOSEN.get() else {
        return;
    };
    let pid = std::process::id();
    if RUNNING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|r| r.pid == pid)
    {
        return;
    }
    if let Ok(ring) = new_ring() {
        *PREPARED.lock().unwrap_or_else(|p| p.into_inner()) = Some((pid, ring));
    }
}

/// A ring that can only read (restricted before it is enabled), and its eventfd. Blocking
/// eventfd: the ring polls it (a non-blocking one would answer EAGAIN at once).
fn new_ring() -> io::Result<Ring> {
    let ring = IoUring::builder().setup_r_disabled().build(ENTRIES)?;
    ring.submitter()
        .register_restrictions(&mut [Restriction::sqe_op(opcode::Read::CODE)])?;
    ring.submitter().register_enable_rings()?;
    let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).map_err(io::Error::from)?;
    Ok(Ring {
        ring,
        wake: Arc::new(wake),
    })
}

struct UringMaker;

impl ReadQueueMaker for UringMaker {
    fn start(&self) -> io::Result<Box<dyn ReadQueue>> {
        let pid = std::process::id();
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.as_ref() {
            if r.pid == pid {
                return Ok(Box::new(Handle {
                    jobs: r.jobs.clone(),
                    wake: r.wake.clone(),
                }));
            }
        }
        // A forked child's copy of the parent's ring state: the parent's, never touched here.
        if let Some(old) = running.take() {
            std::mem::forget(old);
        }
        let prepared = PREPARED.lock().unwrap_or_else(|p| p.into_inner()).take();
        let ring = match prepared {
            Some((p, ring)) if p == pid => ring,
            Some(other) => {
                std::mem::forget(other);
                new_ring()?
            }
            None => new_ring()?,
        };
        let (tx, rx) = channel();
        let wake = ring.wake.clone();
        // The thread lives as long as the process: it waits on the ring, which the eventfd
        // read keeps busy, so it does not notice the devices going away.
        std::thread::Builder::new()
            .name("imgmount-uring".into())
            .spawn(move || serve(ring, rx))?;
        let jobs = Arc::new(Mutex::new(tx));
        *running = Some(Running {
            pid,
            jobs: jobs.clone(),
            wake: wake.clone(),
        });
        Ok(Box::new(Handle { jobs, wake }))
    }

    fn describe(&self) -> String {
        format!(
            "O_DIRECT reads through io_uring (one ring of {ENTRIES} entries restricted to \
             reads; 1 MiB chunks, 4 MiB prefetched ahead of sequential readers)"
        )
    }
}

/// The pool, not the ring: says why in the log line.
struct PoolFallback(String);

impl ReadQueueMaker for PoolFallback {
    fn start(&self) -> io::Result<Box<dyn ReadQueue>> {
        PoolMaker.start()
    }
    fn describe(&self) -> String {
        format!(
            "{}; io_uring is not used ({})",
            PoolMaker.describe(),
            self.0
        )
    }
}

struct Job {
    file: Arc<File>,
    pos: u64,
    buf: AlignedBuf,
    done: ReadDone,
}

struct Handle {
    jobs: Arc<Mutex<Sender<Job>>>,
    wake: Arc<EventFd>,
}

impl ReadQueue for Handle {
    fn read(&self, file: &Arc<File>, pos: u64, buf: AlignedBuf, done: ReadDone) {
        let job = Job {
            file: file.clone(),
            pos,
            buf,
            done,
        };
        // Refused only when the serving thread is gone: `done` drops unfinished and the
        // reader reads the range itself.
        if self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .is_ok()
        {
            let _ = self.wake.write(1);
        }
    }
}

/// The ring's thread: pushes jobs, waits for completions, finishes them. Returns only with
/// no job in flight, or with them leaked (`abandon`).
fn serve(ring: Ring, rx: Receiver<Job>) {
    let Ring { mut ring, wake } = ring;
    // The wake-up read's 8 bytes: leaked, so the kernel may write them whenever it likes.
    let wake_buf: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let wake_ptr = wake_buf.as_mut_ptr();
    let mut flight: HashMap<u64, Job> = HashMap::new();
    let mut backlog: VecDeque<Job> = VecDeque::new();
    let mut next: u64 = 0;
    let mut armed = false;
    loop {
        if !armed {
            let sqe = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_ptr, 8)
                .build()
                .user_data(WAKE);
            // SAFETY: the 8 bytes are leaked (never freed nor read by Rust code), and the
            // eventfd is kept open by `wake`, which lives as long as this thread, which never
            // returns while the read may be in flight except by leaking (`abandon` forgets
            // `wake`). One slot of the ring is kept for this read (jobs take ENTRIES - 1).
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                return abandon(flight, backlog, wake);
            }
            armed = true;
        }
        loop {
            match rx.try_recv() {
                Ok(job) => backlog.push_back(job),
                Err(TryRecvError::Empty) => break,
                // Never: `RUNNING` keeps a sender for the process's life.
                Err(TryRecvError::Disconnected) => break,
            }
        }
        while flight.len() < ENTRIES as usize - 1 {
            let Some(job) = backlog.pop_front() else {
                break;
            };
            push(&mut ring, &mut flight, &mut next, job);
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(_) => return abandon(flight, backlog, wake),
        }
        for cqe in ring.completion() {
            if cqe.user_data() == WAKE {
                armed = false;
                continue;
            }
            let Some(job) = flight.remove(&cqe.user_data()) else {
                continue;
            };
            // A short or failed read is no result: the reader reads the range itself and
            // reports its own error.
            let ok = usize::try_from(cqe.result()).is_ok_and(|n| n == job.buf.len());
            job.done.finish(ok.then_some(job.buf));
        }
    }
}
fn push(ring: &mut IoUring, flight: &mut HashMap<u64, Job>, next: &mut u64, mut job: Job) {
    let Ok(len) = u32::try_from(job.buf.len()) else {
        return drop(job);
    };
    let id = *next;
    *next += 1;
    let ptr = job.buf.as_mut_slice().as_mut_ptr();
    let sqe = opcode::Read::new(types::Fd(job.file.as_raw_fd()), ptr, len)
        .offset(job.pos)
        .build()
        .user_data(id);
    // SAFETY: the entry points at `len` bytes of the job's buffer, a heap area that does not
    // move when the `AlignedBuf` value moves (its Vec is never resized) and that nothing reads
    // or writes until the completion for `id` arrives: the job (with the buffer and the
    // `Arc<File>` keeping the descriptor open) stays in `flight` until then, and this thread,
    // the only one that removes jobs, never returns while it holds jobs in flight except by
    // leaking them (`abandon`). At most ENTRIES - 1 jobs and the wake-up read are in flight,
    // so the queue has room (submit empties it each turn).
    let pushed = unsafe { ring.submission().push(&sqe) };
    if pushed.is_err() {
        // Never pushed, so the kernel holds no pointer into it.
        return drop(job);
    }
    flight.insert(id, job);
}

/// The ring failed while reads were in flight: their buffers (and the eventfd the wake-up read
/// waits on) may still be used by the kernel, so they are leaked, never freed; their readers,
/// and those of jobs never pushed, are told to read for themselves.
fn abandon(flight: HashMap<u64, Job>, backlog: VecDeque<Job>, wake: Arc<EventFd>) {
    std::mem::forget(wake);
    for (_, job) in flight {
        let Job {
            file, buf, done, ..
        } = job;
        std::mem::forget(buf);
        std::mem::forget(file);
        done.finish(None);
    }
    drop(backlog);
}
