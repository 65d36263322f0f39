//! ext4-view (an independent, fuzzed reader) as a second reference: for every fixture it
//! accepts, every file's type, mode, owner, size, content, symlink target and every
//! directory's listing must agree with ours. Needs no root.

mod ext_common;

use ext4_view::{Ext4, Path as VPath};
use ext_common::{images, open, read_chunks, refused, show, walk};
use fs_drivers::vfs::FileType;
use std::collections::BTreeSet;
use std::io::Read;

fn abs(p: &[u8]) -> Vec<u8> {
    [b"/", p].concat()
}

#[test]
fn every_fixture_matches_ext4_view() {
    let imgs = images();
    if imgs.is_empty() {
        eprintln!("SKIP: no fixtures");
    }
    let mut compared = 0;
    for img in imgs {
        let fs = open(&img);
        let ours = walk(&fs);
        assert_eq!(
            fs.dx_fallbacks(),
            0,
            "{}: htree lookups fell back to linear scans",
            img.display()
        );
        let view = match Ext4::load_from_path(&img) {
            Ok(v) => v,
            Err(e) => {
                eprintln!(
                    "ext4-view refuses {}: {e}; our walk of {} paths checked alone",
                    img.display(),
                    ours.len()
                );
                continue;
            }
        };
        compared += 1;
        for (path, node) in &ours {
            let what = format!("{}:/{}", img.display(), show(path));
            let full = abs(path);
            let vp = VPath::new(&full);
            if view.symlink_metadata(vp).is_err() {
                // ext4-view refuses some inodes (e.g. encrypted ones); ours must have
                // refused their contents too.
                continue;
            }
            let m = view.symlink_metadata(vp).expect("ext4-view metadata");
            assert_eq!(m.mode(), node.attr.perm, "{what} mode");
            assert_eq!(m.uid(), node.attr.uid, "{what} uid");
            assert_eq!(m.gid(), node.attr.gid, "{what} gid");
            assert_eq!(m.len(), node.attr.size, "{what} size");
            match node.attr.kind {
                FileType::Directory => {
                    let Ok(rd) = view.read_dir(vp) else { continue };
                    let theirs: BTreeSet<Vec<u8>> = rd
                        .map(|e| e.expect("ext4-view entry").file_name().as_ref().to_vec())
                        .filter(|n| n != b"." && n != b"..")
                        .collect();
                    let mine: BTreeSet<Vec<u8>> = ours
                        .keys()
                        .filter_map(|k| {
                            let rest = if path.is_empty() {
                                Some(&k[..])
                            } else {
                                k.strip_prefix(&path[..]).and_then(|r| r.strip_prefix(b"/"))
                            }?;
                            (!rest.is_empty() && !rest.contains(&b'/')).then(|| rest.to_vec())
                        })
                        .collect();
                    assert_eq!(mine, theirs, "{what} listing");
                }
                FileType::Symlink => {
                    let t = view.read_link(vp).expect("ext4-view readlink");
                    assert_eq!(node.target.as_deref(), Some(t.as_ref()), "{what} target");
                }
                // The kernel oracle already compares the 1 GiB sparse file; ext4-view reading
                // it in a debug build takes most of this test's time.
                FileType::Regular if node.attr.size > 64 << 20 => {}
                FileType::Regular if !refused(&fs, node.attr.ino) => {
                    let mut f = view.open(vp).expect("ext4-view open");
                    let mut theirs = Vec::new();
                    let mut failed = false;
                    read_chunks(&fs, node.attr.ino, node.attr.size, |off, chunk| {
                        if failed {
                            return;
                        }
                        theirs.resize(chunk.len(), 0);
                        if let Err(e) = f.read_exact(&mut theirs) {
                            // ext4-view reads a hole in a block map as block 0 and fails.
                            eprintln!("ext4-view cannot read {what} at {off}: {e}");
                            failed = true;
                            return;
                        }
                        assert!(
                            theirs == chunk,
                            "{what}: content differs in the MiB at {off}"
                        );
                    });
                }
                _ => {}
            }
        }
    }
    eprintln!("compared {compared} fixtures with ext4-view");
    // ext4-view reads plain ext2/3/4 with or without checksums, 64bit, bigalloc, 64 KiB
    // blocks: most fixtures must have been compared, not skipped.
    assert!(
        compared >= 8 || images().len() < 12,
        "ext4-view compared only {compared} fixtures"
    );
}
