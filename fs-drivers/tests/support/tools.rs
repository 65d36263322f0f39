//! Finding the reference tools the tests run (mkfs, fsck, qemu-img, ...), also in the sbin
//! directories an ordinary user's PATH lacks. The one copy for both crates' tests: the root
//! crate's tests/common includes this file by path.
#![allow(dead_code)]

use std::path::PathBuf;

/// PATH with the sbin directories added, for running tools that live there.
pub fn sbin_path() -> String {
    format!(
        "{}:/sbin:/usr/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Where `name` is installed, if it is.
pub fn tool_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn have_tool(name: &str) -> bool {
    tool_path(name).is_some()
}

/// Prints a skip line and returns false when `name` is missing.
pub fn require_tool(name: &str) -> bool {
    require_tools(&[name])
}

/// Prints a skip line for the first missing tool and returns false, or returns true.
pub fn require_tools(names: &[&str]) -> bool {
    match names.iter().find(|n| !have_tool(n)) {
        Some(n) => {
            eprintln!("SKIP: '{n}' is not installed (bash fixtures/deps.sh installs it)");
            false
        }
        None => true,
    }
}
