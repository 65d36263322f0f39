//! Command-line definitions (clap derive). `main` dispatches on these.

use clap::{Args, Parser, Subcommand};
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
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The disk image file.
    #[arg(required = true)]
    pub image: Option<PathBuf>,
    /// The directory to mount it on.
    #[arg(required = true)]
    pub mountpoint: Option<PathBuf>,
    /// Mount options, comma-separated: ro, rw, allow_other, uid=N, gid=N, umask=OOO, cache=SIZE, ...
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
}

#[derive(Args, Debug)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Machine-readable output (schema in README.md).
    #[arg(long)]
    pub json: bool,
    /// Read through this copy-on-write store (created when missing; see `-o cow=FILE`).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
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
    #[arg(short = 'p', long = "partition", value_name = "N")]
    pub partition: Option<PartitionSel>,
    /// Read through this copy-on-write store (created when missing; see `-o cow=FILE`).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    pub image: PathBuf,
    pub path: Option<String>,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    #[arg(short = 'p', long = "partition", value_name = "N")]
    pub partition: Option<PartitionSel>,
    /// Read through this copy-on-write store (created when missing; see `-o cow=FILE`).
    #[arg(long, value_name = "FILE")]
    pub cow: Option<PathBuf>,
    pub image: PathBuf,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
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
    pub image: PathBuf,
    /// PATH in the image (default /) followed by DEST.
    #[arg(required = true, num_args = 1..=2, value_names = ["PATH", "DEST"])]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The image the store was made over (written in place).
    pub image: PathBuf,
    /// The dm-snapshot COW store (`-o cow=FILE`).
    pub store: PathBuf,
}
