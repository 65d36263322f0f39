//! The imgmount front ends that integration tests drive directly (the binary's commands live
//! in main.rs): the FUSE adapter and the mount life cycle.

pub mod fuse;
pub mod host;
pub mod sandbox;
pub mod uring;
