//! Partition tables: MBR (with extended/logical chains) and GPT. A partition is a linear
//! slice of the disk, as device-mapper's `linear` target.
