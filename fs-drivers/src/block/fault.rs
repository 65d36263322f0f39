//! A fault-injecting wrapper for tests.
