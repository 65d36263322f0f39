//! A one-line progress display for `extract` on a terminal: entries, bytes and rate, redrawn at
//! most ten times a second. Does nothing when disabled (stderr is not a terminal).

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Progress {
    enabled: bool,
    files: u64,
    bytes: u64,
    start: Instant,
    last: Option<Instant>,
    shown: bool,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            files: 0,
            bytes: 0,
            start: Instant::now(),
            last: None,
            shown: false,
        }
    }

    pub fn file(&mut self) {
        self.files += 1;
        self.tick();
    }

    pub fn bytes(&mut self, n: u64) {
        self.bytes += n;
        self.tick();
    }

    fn tick(&mut self) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now - l < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        self.draw(now);
    }

    fn draw(&mut self, now: Instant) {
        let secs = (now - self.start).as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[Kextract: {} entries, {:.1} MiB, {:.1} MiB/s",
            self.files,
            mib(self.bytes),
            mib(self.bytes) / secs
        );
        let _ = err.flush();
        self.shown = true;
    }

    /// Erases the line so a warning can be printed on a clean line.
    pub fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.shown = false;
            self.last = None;
        }
    }

    /// Draws the final counts and ends the line.
    pub fn finish(&mut self) {
        if self.enabled {
            self.draw(Instant::now());
            let _ = writeln!(std::io::stderr());
            self.shown = false;
        }
    }
}
