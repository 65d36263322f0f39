//! How `info` shows a copy-on-write overlay: as the outermost layer of the chain, with the
//! store's format, chunk size, chunks used and whether its origin was checked.

use super::info::{human_size, LayerReport};
use fs_drivers::cow::Overlay;

pub fn report(o: &Overlay) -> LayerReport {
    let i = o.snapshot.info();
    let store = match &o.path {
        Some(p) => format!("store {}", p.display()),
        None => "in memory, discarded at the end".into(),
    };
    let origin = if o.path.is_none() {
        ""
    } else if i.origin_checked {
        ", origin checked"
    } else {
        ", origin not recorded"
    };
    LayerReport {
        format: format!("cow ({})", i.format),
        detail: Some(format!(
            "{store}, {} chunks, {} chunks used ({}){origin}",
            human_size(i.chunk_size),
            i.chunks_used,
            human_size(i.chunks_used * i.chunk_size)
        )),
    }
}
