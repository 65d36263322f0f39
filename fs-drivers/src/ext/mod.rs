//! ext2/ext3/ext4 reader, one module per on-disk structure.
