//! Where the passphrase of a LUKS-encrypted image comes from: `--key-file FILE` (`-`: standard
//! input), else a no-echo prompt when standard input is a terminal, else one line saying a key
//! is needed. It is asked for only when a LUKS header is found, at most once per run, and
//! lives in zeroized memory.

use clap::Args;
use fs_drivers::container::luks::KeySource;
use fs_drivers::disk::ImageOptions;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

/// How to open the image file, the same for the mount and every command.
#[derive(Args, Debug, Clone, Default)]
pub struct OpenArgs {
    /// Byte offset of the image inside the file (e.g. an AppImage's squashfs; `info` names it).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub offset: u64,
    /// Passphrase of a LUKS-encrypted image, read whole from FILE ('-': standard input), as cryptsetup --key-file reads it.
    #[arg(long = "key-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Read and write the image file with O_DIRECT, bypassing the host page cache.
    #[arg(long)]
    pub direct: bool,
}

static KEYS: OnceLock<Option<Arc<KeySource>>> = OnceLock::new();
static DIRECT: OnceLock<bool> = OnceLock::new();

/// Chooses this run's key source from the command line. `info` asks only with --key-file:
/// without one it shows the LUKS header and leaves the volume locked.
pub fn init(cli: &crate::cli::Cli) {
    use crate::cli::Command;
    let (args, image, ask) = match &cli.command {
        Some(Command::Info(a)) => (&a.open, &a.image, false),
        Some(Command::Ls(a)) => (&a.open, &a.image, true),
        Some(Command::Cat(a)) => (&a.open, &a.image, true),
        Some(Command::Extract(a)) => (&a.open, &a.image, true),
        Some(Command::Run(a)) => (&a.open, &a.image, true),
        Some(Command::Umount(_) | Command::Merge(_)) => return,
        None => match &cli.mount.image {
            Some(image) => (&cli.mount.open, image, true),
            None => return,
        },
    };
    let source = match (&args.key_file, ask) {
        (Some(file), _) => Some(from_file(file.clone())),
        (None, true) => Some(prompt_or_refuse(image)),
        (None, false) => None,
    };
    let _ = KEYS.set(source);
    let _ = DIRECT.set(args.direct);
}

fn from_file(file: PathBuf) -> Arc<KeySource> {
    Arc::new(KeySource::new(move || {
        let mut key = Zeroizing::new(Vec::new());
        let read = if file == Path::new("-") {
            std::io::stdin().lock().read_to_end(&mut key)
        } else {
            std::fs::File::open(&file).and_then(|mut f| f.read_to_end(&mut key))
        };
        read.map_err(|e| format!("cannot read the key file {}: {}", file.display(), e.kind()))?;
        if key.is_empty() {
            return Err(format!("the key file {} is empty", file.display()));
        }
        Ok(key)
    }))
}

fn prompt_or_refuse(image: &Path) -> Arc<KeySource> {
    let shown = image.display().to_string();
    Arc::new(KeySource::new(move || {
        if !std::io::stdin().is_terminal() {
            return Err(
                "the image is LUKS-encrypted and a key is needed: give --key-file FILE ('-' for standard input)"
                    .into(),
            );
        }
        let line = rpassword::prompt_password(format!("Passphrase for {shown}: "))
            .map_err(|e| format!("cannot read the passphrase: {}", e.kind()))?;
        Ok(Zeroizing::new(line.into_bytes()))
    }))
}

/// `ImageOptions` for an image this run opens; `direct` adds to `--direct` (a mount's
/// `-o direct`). Builds on the seek-index cache's options (`index_cache`).
pub fn image_options(writable: bool, cache_bytes: u64, direct: bool) -> ImageOptions {
    let mut opts = crate::index_cache::image_options(writable, cache_bytes);
    opts.peel.luks_key = KEYS.get().cloned().flatten();
    opts.direct = direct || DIRECT.get().copied().unwrap_or(false);
    if opts.direct {
        opts.read_queue = Some(imgmount::uring::maker());
    }
    opts
}

/// The one warning a direct open that fell back to buffered I/O gives; a direct open that
/// worked logs how its requests are issued.
pub fn warn_fallback(img: &fs_drivers::disk::Image, image: &Path) {
    if img.direct_io() {
        log::info!(
            "{}: direct I/O: {}",
            image.display(),
            imgmount::uring::maker().describe()
        );
    }
    if img.direct_fallback() {
        eprintln!(
            "imgmount: {}: the host filesystem refuses O_DIRECT; using buffered I/O",
            image.display()
        );
    }
}
