//! Helpers every fs-drivers test may use: reference tools and the damaged-image corpora.
#![allow(dead_code, unused_imports)]

pub mod corpus;
pub mod crash;
pub mod ext_rw;
pub mod kernel_view;
pub mod model;
pub mod random_ops;
pub mod replay;
pub mod tools;

pub use corpus::{corpus_images, inflated, workspace_root};
pub use tools::{have_tool, require_tool, require_tools, sbin_path, tool_path};
