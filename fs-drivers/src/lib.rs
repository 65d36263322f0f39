//! The engine behind imgmount: block devices, a write-back block cache, partition tables,
//! filesystem probing and filesystem drivers, all behind small traits so every layer can be
//! tested over an in-memory or fault-injecting device. No FUSE in here: `vfs` is the one
//! interface the front ends (the FUSE adapter, `ls`/`cat`/`extract`) use.
#![forbid(unsafe_code)]

pub mod block;
mod bpb;
mod bytes;
pub mod container;
pub mod cow;
pub mod disk;
pub mod erofs;
pub mod error;
pub mod ext;
pub mod fat;
pub mod hybrid;
pub mod iso9660;
pub mod multi;
pub mod partition;
pub mod probe;
pub mod squashfs;
pub mod vfs;

pub use error::{Error, Result};
