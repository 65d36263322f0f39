//! How the direct device keeps several O_DIRECT reads in flight: a `ReadQueue` takes an aligned
//! read and reports it done later. The default is a pool of threads each doing one `pread`
//! (this module); imgmount injects an io_uring queue where the kernel offers one (its own
//! crate, which may hold the unsafe code submission needs; this crate forbids it). A queue is
//! started per process (`ReadQueueMaker::start`): a daemonising fork keeps the device but not
//! the threads, so the child starts its own.

use crate::Result;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

use super::direct::DIRECT_ALIGN;

/// An aligned scratch area of `len` bytes, owned, so a queue may keep it while the read is in
/// flight. Aligned without unsafe code: a `Vec` one alignment larger than needed, used from its
/// first aligned byte. The heap area never moves while the buffer lives (it is never resized).
pub struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let align = DIRECT_ALIGN as usize;
        let mem = vec![0u8; len + align];
        let start = mem.as_ptr().align_offset(align);
        AlignedBuf { mem, start, len }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where a read's result goes: several requests may take their bytes from one chunk read ahead.
#[derive(Default)]
pub(crate) struct Slot {
    /// `None` while in flight; `Some(None)` when it failed (a reader then reads the range
    /// itself and reports its own error).
    done: Mutex<Option<Option<Arc<AlignedBuf>>>>,
    cv: Condvar,
}

impl Slot {
    pub(crate) fn wait(&self) -> Option<Arc<AlignedBuf>> {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = g.as_ref() {
                return r.clone();
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn fill(&self, r: Option<AlignedBuf>) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.map(Arc::new));
        self.cv.notify_all();
    }
}

/// The promise of one read: `finish` it exactly once with the filled buffer, or with `None`
/// when the read failed or came up short. Dropped unfinished, it reports a failure, so a
/// reader never waits forever on a queue that went away.
pub struct ReadDone {
    slot: Option<Arc<Slot>>,
}

impl ReadDone {
    pub(crate) fn new(slot: Arc<Slot>) -> ReadDone {
        ReadDone { slot: Some(slot) }
    }
    pub fn finish(mut self, buf: Option<AlignedBuf>) {
        if let Some(s) = self.slot.take() {
            s.fill(buf);
        }
    }
}

impl Drop for ReadDone {
    fn drop(&mut self) {
        if let Some(s) = self.slot.take() {
            s.fill(None);
        }
    }
}

/// A started queue, used by one process.
pub trait ReadQueue: Send + Sync {
    /// Reads `buf.len()` bytes (aligned) at `pos` (aligned, inside the file) of `file` (opened
    /// O_DIRECT) and finishes `done` with the buffer.
    fn read(&self, file: &Arc<File>, pos: u64, buf: AlignedBuf, done: ReadDone);
}

/// Makes a process's queue; what imgmount injects through `ImageOptions::read_queue`.
pub trait ReadQueueMaker: Send + Sync {
    /// The queue for the calling process; an error makes the device use the thread pool.
    fn start(&self) -> std::io::Result<Box<dyn ReadQueue>>;
    /// What imgmount logs as the direct-I/O mode.
    fn describe(&self) -> String;
}

/// The pool's size: the requests in flight besides the callers' own.
pub const POOL_THREADS: usize = 4;

/// The default: `POOL_THREADS` threads, each doing one `pread` at a time.
pub struct PoolMaker;

impl ReadQueueMaker for PoolMaker {
    fn start(&self) -> std::io::Result<Box<dyn ReadQueue>> {
        Ok(Box::new(Pool::start()?))
    }
    fn describe(&self) -> String {
        format!(
            "O_DIRECT reads through a pool of {POOL_THREADS} threads (1 MiB chunks, 4 MiB \
             prefetched ahead of sequential readers)"
        )
    }
}

struct Job {
    file: Arc<File>,
    pos: u64,
    buf: AlignedBuf,
    done: ReadDone,
}

struct Pool {
    jobs: Mutex<Sender<Job>>,
}

impl Pool {
    fn start() -> std::io::Result<Pool> {
        let (jobs, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..POOL_THREADS {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            // The threads end when the queue (the only sender) is dropped.
            std::thread::Builder::new()
                .name("imgmount-direct".into())
                .spawn(move || loop {
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    let Job {
                        file,
                        pos,
                        mut buf,
                        done,
                    } = job;
                    let ok = read_aligned(&file, pos, buf.as_mut_slice()).is_ok();
                    done.finish(ok.then_some(buf));
                })?;
        }
        Ok(Pool {
            jobs: Mutex::new(jobs),
        })
    }
}

impl ReadQueue for Pool {
    fn read(&self, file: &Arc<File>, pos: u64, buf: AlignedBuf, done: ReadDone) {
        let job = Job {
            file: file.clone(),
            pos,
            buf,
            done,
        };
        // A send fails only when every worker is gone; the job's `done` then drops unfinished
        // and the reader reads the range itself.
        let _ = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
    }
}

/// Fills `b` (aligned length) from aligned `pos`, all inside the direct part of the file.
pub(crate) fn read_aligned(file: &File, pos: u64, b: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < b.len() {
        match file.read_at(&mut b[done..], pos + done as u64) {
            Ok(0) => return Err(crate::Error::OutOfRange),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
