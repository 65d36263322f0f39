//! e2fsprogs' test images (shared/corpus/e2fsprogs/*.img.gz, many deliberately corrupt):
//! each is opened and walked with a time bound; none may panic or hang.

mod ext_common;
mod support;

use ext_common::bounded_walk;
use flate2::read::GzDecoder;
use fs_drivers::block::{BlockDevice, MemDevice};
use fs_drivers::ext::{ExtFs, ExtOptions};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn e2fsprogs_corpus_opens_or_refuses_cleanly() {
    let Some(paths) = support::corpus_images("e2fsprogs") else {
        return;
    };
    let (mut opened, mut refused, mut walked) = (0, 0, 0usize);
    let mut reasons = std::collections::BTreeMap::new();
    for p in &paths {
        let mut data = Vec::new();
        let f = std::fs::File::open(p).expect("open corpus file");
        // Cap the inflated size: the corpus holds small images.
        if GzDecoder::new(f)
            .take(512 << 20)
            .read_to_end(&mut data)
            .is_err()
        {
            continue;
        }
        let t = Instant::now();
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::read_only(data));
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match ExtFs::open(dev, ExtOptions::default()) {
                Ok(fs) => Ok(bounded_walk(&fs, 20_000, 1 << 20)),
                Err(e) => Err(e.to_string()),
            }
        }));
        match result {
            Ok(Ok(n)) => {
                opened += 1;
                walked += n;
            }
            Ok(Err(e)) => {
                refused += 1;
                let key: String = e.chars().take(60).collect();
                *reasons.entry(key).or_insert(0) += 1;
            }
            Err(_) => panic!("{name}: panic"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name}: took {:?}",
            t.elapsed()
        );
    }
    eprintln!(
        "{} images: {opened} opened ({walked} inodes walked), {refused} refused",
        paths.len()
    );
    for (r, n) in reasons {
        eprintln!("  {n:3} × {r}");
    }
    assert!(opened > 0 || paths.is_empty());
}
