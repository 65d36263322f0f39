//! BlockCache: an LRU write-back cache over any BlockDevice.
// Placeholder until the cache lands: the type exists so dependants compile.
