//! Which filesystem is on a device, by superblock magic.
