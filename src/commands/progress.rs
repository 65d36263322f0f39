//! The progress line of `extract` on a terminal (entries, bytes, rate), drawn by indicatif at
//! most ten times a second. Hidden when disabled (stderr is not a terminal).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    files: u64,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        let target = if enabled {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        // The template is a constant, so it always parses; the default style is the fallback.
        if let Ok(style) =
            ProgressStyle::with_template("extract: {msg} entries, {bytes}, {bytes_per_sec}")
        {
            bar.set_style(style);
        }
        bar.set_message("0");
        Progress { bar, files: 0 }
    }

    pub fn file(&mut self) {
        self.files += 1;
        self.bar.set_message(self.files.to_string());
    }

    pub fn bytes(&mut self, n: u64) {
        self.bar.inc(n);
    }

    /// Runs `f` (which prints a warning) with the progress line out of the way.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        self.bar.suspend(f)
    }

    /// Draws the final counts and ends the line.
    pub fn finish(&mut self) {
        self.bar.abandon();
    }
}
