//! What the command line chose for compressed images' seek indexes (the cache directory, or
//! none) and the progress bar drawn while one is built, turned into the library's options.

use fs_drivers::container::{PeelContext, Progress};
use fs_drivers::disk::ImageOptions;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

static CACHE_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Called once from `main` with `--cache-dir` and `--no-index-cache`.
pub fn configure(dir: Option<PathBuf>, no_cache: bool) {
    let dir = if no_cache {
        None
    } else {
        dir.or_else(default_dir)
    };
    let _ = CACHE_DIR.set(dir);
}

/// $XDG_CACHE_HOME/imgmount, or ~/.cache/imgmount (an XDG path that is not absolute is to be
/// ignored, says the spec).
fn default_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|h| h.join(".cache"))
    })?;
    Some(base.join("imgmount"))
}

/// The image options for a command or the mount: the cache directory chosen, and a progress
/// bar when stderr is a terminal.
pub fn image_options(writable: bool, cache_bytes: u64) -> ImageOptions {
    let mut opts = ImageOptions::new(writable, cache_bytes);
    opts.peel = PeelContext {
        index_cache_dir: CACHE_DIR.get().cloned().flatten(),
        progress: std::io::stderr()
            .is_terminal()
            .then(|| Arc::new(Bar::new()) as Arc<dyn Progress>),
        ..PeelContext::default()
    };
    opts
}

/// indicatif's bar, redrawn on each report only: no ticker thread, since the background
/// mount forks after the image is opened and no thread may be running then.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bar(bar)
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.set_message(format!("imgmount: {what}"));
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn advance(&self, done: u64) {
        self.0.set_position(done);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
