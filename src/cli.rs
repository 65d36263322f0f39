//! Command-line definitions (clap derive). `main` dispatches on these.

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "imgmount",
    version,
    about = "Mount a disk image file as a directory tree, as an ordinary user",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub mount: MountArgs,
    /// Where seek indexes of compressed images are kept (default: $XDG_CACHE_HOME/imgmount).
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Build a compressed image's seek index in memory only; neither read nor write the cache.
    #[arg(long, global = true)]
    pub no_index_cache: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Unmount an imgmount mount and wait until its daemon has closed the image.
    Umount(UmountArgs),
    /// Show the partition table and the filesystems of an image.
    Info(InfoArgs),
    /// List files in an image without mounting it.
    Ls(LsArgs),
    /// Write files from an image to standard output without mounting it.
    Cat(CatArgs),
    /// Copy a file or tree out of an image without mounting it.
    Extract(ExtractArgs),
    /// Mount an image, run a command inside it, unmount, and exit with the command's status.
    Run(RunArgs),
    /// Write a copy-on-write store's changes into its image, then empty the store.
    Merge(MergeArgs),
}

/// Which part of the disk to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSel {
    /// 1-based table index (logical MBR partitions from 5).
    Index(u32),
    All,
}

impl std::str::FromStr for PartitionSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(PartitionSel::All);
        }
        match s.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(PartitionSel::Index(n)),
            _ => Err(format!(
                "'{s}' is not a partition number (1, 2, ...) or 'all'"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FsTypeArg {
    Auto,
    Ext2,
    Ext3,
    Ext4,
    Fat,
    Squashfs,
    Erofs,
    Iso9660,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The disk image file.
    #[arg(required = true)]
    pub image: Option<PathBuf>,
    /// The directory to mount it on.
    #[arg(required = true)]
    pub mountpoint: Option<PathBuf>,
    /// Mount options, comma-separated: ro, rw, allow_other, uid=N, gid=N, umask=OOO, fakeroot, cache=SIZE, ...
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Partition to mount (1-based) or 'all'; default: the bare filesystem, or every partition as p1/, p2/, ...
    #[arg(short = 'p', long = "partition", value_name = "N|all")]
    pub partition: Option<PartitionSel>,
    /// Filesystem type.
    #[arg(short = 't', long = "type", value_enum, default_value = "auto")]
    pub fs_type: FsTypeArg,
    /// Stay in the foreground.
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Log file for the background daemon (default: syslog).
    #[arg(long = "log", value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Write the serving daemon's pid to FILE (removed when it exits).
    #[arg(long = "pid-file", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Create the mount point if it does not exist, and remove it at unmount.
    #[arg(long)]
    pub mkdir: bool,
    #[command(flatten)]
    pub open: crate::image_open::OpenArgs,
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// Where the image is mounted; or --all.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub mountpoint: Option<PathBuf>,
    /// Unmount every imgmount mount of the calling user.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Mount options, as for a mount (ro, rw, uid=N, cache=SIZE, ...).
    #[arg(short = 'o', value_name = "OPTIONS", action = clap::ArgAction::Append)]
    pub options: Vec<String>,
    /// Partition to mount (1-based) or 'all'.
    #[arg(short = 'p', long = "partition", value_name = "N|all")]
    pub partition: Option<PartitionSel>,
    /// Filesystem type.
    #[arg(short = 't', long = "type", value_enum, default_value = "auto")]
    pub fs_type: FsTypeArg,
    /// Write through this copy-on-write store instead of the image (as `-o cow=FILE`).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    /// Mount on DIR (an existing empty directory, kept) instead of a fresh private one.
    #[arg(long = "mountpoint", value_name = "DIR")]
    pub mountpoint: Option<PathBuf>,
    /// After a second SIGINT/SIGTERM/SIGHUP, SIGKILL the command if it is still running this many seconds later.
    #[arg(long = "kill-after", value_name = "SECONDS", default_value_t = 10.0)]
    pub kill_after: f64,
    /// Log file for the mount daemon (default: syslog).
    #[arg(long = "log", value_name = "FILE")]
    pub log: Option<PathBuf>,
    #[command(flatten)]
    pub open: crate::image_open::OpenArgs,
    /// The disk image file.
    pub image: PathBuf,
    /// The command to run, after '--', with its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Machine-readable output (schema in README.md).
    #[arg(long)]
    pub json: bool,
    /// Read through this copy-on-write store (created when missing; see `-o cow=FILE`).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    #[command(flatten)]
    pub open: crate::image_open::OpenArgs,
    /// The disk image file (raw disk or bare filesystem).
    pub image: PathBuf,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Long listing, like ls -l.
    #[arg(short = 'l')]
    pub long: bool,
    /// Recurse into directories.
    #[arg(short = 'R')]
    pub recursive: bool,
    /// Show entries whose names start with '.'.
    #[arg(short = 'a')]
    pub all: bool,
    /// One JSON object per entry (schema in README.md).
    #[arg(long)]
    pub json: bool,
    /// Include extended attributes in --json output.
    #[arg(long)]
    pub xattrs: bool,
    /// Partition to read (1-based, logical MBR partitions from 5); without it a partitioned
    /// disk's paths start with p1/, p2/, ...
    #[arg(short = 'p', long = "partition", value_name = "N")]
    pub partition: Option<PartitionSel>,
    /// Read through this copy-on-write store (created when missing; see `-o cow=FILE`).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    #[command(flatten)]
    pub open: crate::image_open::OpenArgs,
    /// The disk image file (raw disk or bare filesystem).
    pub image: PathBuf,
    /// File or directory in the image to list (default: /).
    pub path: Option<OsString>,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// Partition to read (1-based, logical MBR partitions from 5); without it a partitioned
    /// disk's paths start with p1/, p2/, ...
    #[arg(short = 'p', long = "partition", value_name = "N")]
    pub partition: Option<PartitionSel>,
    /// Read through this copy-on-write store (created when missing; see `-o cow=FILE`).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    #[command(flatten)]
    pub open: crate::image_open::OpenArgs,
    /// The disk image file (raw disk or bare filesystem).
    pub image: PathBuf,
    /// Files in the image to write out, in order.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Partition to read (1-based, logical MBR partitions from 5); without it a partitioned
    /// disk's paths start with p1/, p2/, ...
    #[arg(short = 'p', long = "partition", value_name = "N")]
    pub partition: Option<PartitionSel>,
    /// Do not restore owners even as root.
    #[arg(long)]
    pub no_same_owner: bool,
    /// Restore extended attributes.
    #[arg(long)]
    pub xattrs: bool,
    /// Replace files that already exist under DEST.
    #[arg(long)]
    pub overwrite: bool,
    /// Read through this copy-on-write store (created when missing; see `-o cow=FILE`).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    #[command(flatten)]
    pub open: crate::image_open::OpenArgs,
    /// The disk image file (raw disk or bare filesystem).
    pub image: PathBuf,
    /// PATH in the image to copy; given alone, it is DEST and PATH is / (`extract IMAGE DEST`).
    #[arg(value_name = "PATH")]
    pub path: OsString,
    /// The host directory to copy into.
    #[arg(value_name = "DEST")]
    pub dest: Option<OsString>,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The image the store was made over (written in place).
    pub image: PathBuf,
    /// The COW store (`-o cow=FILE`): dm-snapshot's, or qcow2 when named *.qcow2.
    pub store: PathBuf,
}
