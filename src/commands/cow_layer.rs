//! How `info` shows a copy-on-write overlay: as the outermost layer of the chain, with the
//! store's format, chunk (qcow2: cluster) size, chunks used, whether its origin was checked
//! and the backing file a qcow2 store names.

use super::info::{human_size, LayerReport};
use fs_drivers::cow::Overlay;

pub fn report(o: &Overlay) -> LayerReport {
    let i = o.snapshot.info();
    let store = match &o.path {
        Some(p) => format!("store {}", p.display()),
        None => "in memory, discarded at the end".into(),
    };
    // qemu's word for a qcow2 store's chunks.
    let unit = if i.format.starts_with("qcow2") {
        "clusters"
    } else {
        "chunks"
    };
    let origin = if o.path.is_none() {
        ""
    } else if i.origin_checked {
        ", origin checked"
    } else {
        ", origin not recorded"
    };
    let names = i.names_origin.map(|n| format!(", {n}")).unwrap_or_default();
    LayerReport {
        format: format!("cow ({})", i.format),
        detail: Some(format!(
            "{store}, {} {unit}, {} {unit} used ({}){origin}{names}",
            human_size(i.chunk_size),
            i.chunks_used,
            human_size(i.chunks_used * i.chunk_size)
        )),
    }
}
