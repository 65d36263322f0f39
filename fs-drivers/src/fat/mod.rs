//! FAT12/16/32 read-write driver.
