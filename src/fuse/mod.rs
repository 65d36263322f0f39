//! The FUSE front end: the adapter from `vfs::FileSystem` to fuser, mount options, the
//! kernel attach/detach, and the mount's life cycle (daemon, readiness, signals, umount).

pub mod adapter;
pub mod idle;
pub mod kernel;
pub mod lifecycle;
pub mod listing;
pub mod log;
pub mod mountinfo;
pub mod options;
pub mod pidfile;
pub mod readaround;
pub mod sandbox_plan;
pub mod service;
pub mod umount;
pub mod watcher;

pub use adapter::{Adapter, Ownership};
pub use lifecycle::{check_mountpoint, run_background, run_foreground, serve, ServeConfig};
