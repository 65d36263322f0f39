//! Opening an image: the file, the cache over it, the partition table, and the filesystem(s).
