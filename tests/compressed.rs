//! Compressed images (issue 14): fixtures written by the codecs' own CLIs
//! (fixtures/build-compressed.sh) must decode, through the container layer, to exactly what
//! the CLI decompresses them to; `ls -lR`/`cat` through imgmount must equal the raw disk's; the
//! seek index must be reused on a second open and rebuilt when the file changes; damaged
//! streams must give an error, never a panic or a hang.

mod common;

use common::*;
use fs_drivers::block::{BlockDevice, DeviceRef, FileDevice};
use fs_drivers::container::compressed::index_stats;
use fs_drivers::container::{peel, PeelContext};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// (file name, the CLI that decompresses it). Missing files (tool not installed) are skipped.
const CASES: &[(&str, &str)] = &[
    ("gpt.img.gz", "gzip"),
    ("gpt.img.pigz.gz", "gzip"),
    ("gpt.img.bgz", "gzip"),
    ("gpt.img.xz", "xz"),
    ("gpt.img.mb.xz", "xz"),
    ("gpt.img.zst", "zstd"),
    ("gpt.img.pzstd.zst", "zstd"),
    ("gpt.img.bz2", "bzip2"),
    ("gpt.img.pbzip2.bz2", "bzip2"),
];

/// The index counters are process-wide; tests that assert on them take turns.
static COUNTERS: Mutex<()> = Mutex::new(());

fn compressed_dir() -> Option<PathBuf> {
    fixtures("build-compressed.sh").map(|d| d.join("compressed"))
}

/// What the codec's own CLI decompresses `path` to.
fn cli_decompress(tool: &str, path: &Path) -> Vec<u8> {
    let out = Command::new(tool)
        .args(["-dc"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} -dc {}", path.display());
    out.stdout
}

fn open_layer(path: &Path, cache: Option<&Path>) -> fs_drivers::Result<(DeviceRef, String)> {
    let raw: DeviceRef = Arc::new(FileDevice::open(path, false)?);
    let ctx = PeelContext {
        path: Some(path.to_path_buf()),
        index_cache_dir: cache.map(Path::to_path_buf),
        ..PeelContext::default()
    };
    let (dev, layers) = peel(raw, &ctx)?;
    let desc = layers.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    Ok((dev, desc.join(" / ")))
}

fn read_all(dev: &DeviceRef) -> fs_drivers::Result<Vec<u8>> {
    let mut v = vec![0u8; dev.size() as usize];
    // In odd-sized reads, so reads straddle the pieces' edges.
    for (i, part) in v.chunks_mut(1_000_003).enumerate() {
        dev.read_at(i as u64 * 1_000_003, part)?;
    }
    Ok(v)
}

/// The seekable format (zstd's contrib/seekable_format): independent frames of 1 MiB, then a
/// skippable frame with (compressed, decoded) sizes per frame and a footer. The zstd CLI
/// here cannot write it.
fn write_seekable(src: &[u8], dest: &Path) {
    let mut out = Vec::new();
    let mut table = Vec::new();
    for piece in src.chunks(1 << 20) {
        let frame = zstd::bulk::compress(piece, 3).unwrap();
        table.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        table.extend_from_slice(&(piece.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    let frames = (table.len() / 8) as u32;
    table.extend_from_slice(&frames.to_le_bytes());
    table.push(0);
    table.extend_from_slice(&0x8F92_EAB1u32.to_le_bytes());
    out.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    out.extend_from_slice(&table);
    std::fs::write(dest, out).unwrap();
}

fn all_cases(tmp: &TempDir) -> Option<Vec<(PathBuf, &'static str)>> {
    let dir = compressed_dir()?;
    let mut v: Vec<(PathBuf, &str)> = CASES
        .iter()
        .map(|(n, t)| (dir.join(n), *t))
        .filter(|(p, t)| p.exists() && have_tool(t))
        .collect();
    // The seekable format is written here (the CLI cannot) and checked with the zstd CLI.
    if have_tool("zstd") {
        let raw = std::fs::read(disk("gpt.img")?).unwrap();
        let seekable = tmp.join("gpt.img.seekable.zst");
        write_seekable(&raw, &seekable);
        v.push((seekable, "zstd"));
    } else {
        eprintln!("SKIP: the seekable zstd case: 'zstd' is not installed");
    }
    Some(v)
}

#[test]
fn every_byte_equals_the_cli_decompression_and_the_index_is_reused() {
    let _turn = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = TempDir::new("compressed-bytes");
    let Some(cases) = all_cases(&tmp) else { return };
    // Compared as bytes, not hashes: hashing 64 MiB thirty times costs a minute unoptimized.
    let raw = std::fs::read(disk("gpt.img").unwrap()).unwrap();
    let cache = tmp.join("cache");
    for (path, tool) in &cases {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            cli_decompress(tool, path) == raw,
            "{tool} -dc {name} is not gpt.img"
        );
        let (built0, loaded0) = index_stats();
        let (dev, layers) = open_layer(path, Some(&cache)).unwrap();
        assert!(layers.contains("index built"), "{name}: {layers}");
        assert_eq!(index_stats(), (built0 + 1, loaded0), "{name}");
        assert!(
            read_all(&dev).unwrap() == raw,
            "{name}: {layers}: bytes differ"
        );
        drop(dev);
        let (dev, layers) = open_layer(path, Some(&cache)).unwrap();
        assert!(layers.contains("from cache"), "{name}: {layers}");
        assert_eq!(index_stats(), (built0 + 1, loaded0 + 1), "{name}");
        assert!(
            read_all(&dev).unwrap() == raw,
            "{name}: second open: bytes differ"
        );
        eprintln!("{name}: {layers}");
    }
    // Without a cache the index is built every time, and the bytes are the same.
    for (path, tool) in cases
        .iter()
        .filter(|c| c.0.to_string_lossy().ends_with(".bgz"))
    {
        let (dev, layers) = open_layer(path, None).unwrap();
        assert!(layers.contains("index built"), "{layers}");
        assert!(read_all(&dev).unwrap() == cli_decompress(tool, path));
    }
}

#[test]
fn a_changed_or_truncated_file_invalidates_its_index() {
    let _turn = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(dir) = compressed_dir() else { return };
    let tmp = TempDir::new("compressed-stale");
    let cache = tmp.join("cache");
    for name in [
        "gpt.img.bgz",
        "gpt.img.mb.xz",
        "gpt.img.zst",
        "gpt.img.pbzip2.bz2",
    ] {
        let src = dir.join(name);
        if !src.exists() {
            continue;
        }
        let img = tmp.join(name);
        std::fs::copy(&src, &img).unwrap();
        let (built0, _) = index_stats();
        open_layer(&img, Some(&cache)).unwrap();
        open_layer(&img, Some(&cache)).unwrap();
        assert_eq!(
            index_stats().0,
            built0 + 1,
            "{name}: rebuilt without a change"
        );

        // Same size, same mtime, one byte changed in the head: the sample hash differs.
        let mtime = std::fs::metadata(&img).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(&img).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 1;
        let len = bytes.len();
        std::fs::write(&img, &bytes).unwrap();
        let f = std::fs::File::options().append(true).open(&img).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let loaded = index_stats().1;
        let _ = open_layer(&img, Some(&cache)).map(|(d, _)| read_all(&d));
        let changed_at_tail = at as u64 + (64 << 10) >= len as u64;
        let changed_at_head = (at as u64) < (64 << 10);
        if changed_at_head || changed_at_tail {
            assert_eq!(
                index_stats().1,
                loaded,
                "{name}: a changed file kept its index"
            );
        }

        // Truncated: a different size, so the old index is never used; the new open fails
        // with one line or gives a shorter device, and never panics.
        std::fs::write(&img, &bytes[..len * 2 / 3]).unwrap();
        let before = index_stats();
        match open_layer(&img, Some(&cache)) {
            Ok((d, _)) => {
                let _ = read_all(&d);
            }
            Err(e) => assert!(!e.to_string().contains('\n'), "{name}: {e}"),
        }
        assert_eq!(
            index_stats().1,
            before.1,
            "{name}: a truncated file used a cached index"
        );
    }
}

/// Opens and reads a damaged file in a child thread with a time limit: an error is fine, a
/// panic or a hang is not.
fn survives(path: &Path) -> Result<(), String> {
    let p = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| match open_layer(&p, None) {
            Ok((dev, _)) => read_all(&dev).map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => panic!("{}: panicked", path.display()),
        Err(_) => panic!("{}: no answer within 60 s", path.display()),
    }
}

#[test]
fn truncated_and_bit_flipped_streams_give_errors_not_panics() {
    // It builds indexes too, which would move the counters under the other tests' feet.
    let _turn = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = TempDir::new("compressed-damage");
    let Some(cases) = all_cases(&tmp) else { return };
    for (path, _) in &cases {
        let good = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bad = tmp.join(&format!("bad-{name}"));
        for cut in [good.len() / 2, good.len() - 1] {
            std::fs::write(&bad, &good[..cut]).unwrap();
            let r = survives(&bad);
            assert!(r.is_err(), "{name} cut at {cut} read without an error");
            let e = r.unwrap_err();
            assert!(!e.contains('\n'), "{name}: {e}");
        }
        for frac in [3, 5, 7] {
            let mut b = good.clone();
            let at = b.len() * (frac - 1) / frac;
            b[at] ^= 0x10;
            std::fs::write(&bad, &b).unwrap();
            // A flip may land in bytes no check covers (padding, a table that still adds up);
            // all that is asked is an answer.
            let _ = survives(&bad);
        }
    }
}

#[test]
fn ls_and_cat_through_imgmount_equal_the_raw_disk() {
    let _turn = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = TempDir::new("compressed-cli");
    let Some(cases) = all_cases(&tmp) else { return };
    let raw = disk("gpt.img").unwrap();
    let cache = tmp.join("cache");
    let cache_arg = cache.to_str().unwrap();
    // The swap partition shows as an empty directory dated with the image file's mtime.
    let no_p3 = |s: String| {
        s.lines()
            .filter(|l| !l.ends_with(" /p3"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let want_ls = no_p3(
        imgmount(["ls", "-lR"].iter().map(Path::new).chain([raw.as_path()]))
            .expect_ok()
            .stdout,
    );
    let want_cat = imgmount([Path::new("cat"), &raw, Path::new("/p2/numbers.txt")])
        .expect_ok()
        .stdout;
    assert!(want_cat.len() > 100_000);
    for (path, _) in &cases {
        let p = path.to_str().unwrap();
        let ls = imgmount(["ls", "--cache-dir", cache_arg, "-lR", p]).expect_ok();
        assert_eq!(no_p3(ls.stdout), want_ls, "{p}");
        let cat = imgmount(["cat", "--cache-dir", cache_arg, p, "/p2/numbers.txt"]).expect_ok();
        assert_eq!(cat.stdout, want_cat, "{p}");
        let info = imgmount(["info", "--cache-dir", cache_arg, p]).expect_ok();
        assert!(
            info.stdout.contains("index from cache"),
            "{p}: {}",
            info.stdout
        );
        let info = imgmount(["info", "--no-index-cache", p]).expect_ok();
        assert!(info.stdout.contains("index built"), "{p}: {}", info.stdout);
    }
    // A damaged stream at open: one line naming the file, a non-zero exit.
    let (path, _) = &cases[0];
    let bytes = std::fs::read(path).unwrap();
    let cut = tmp.join("cut.img.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let r = imgmount(["ls".as_ref(), "--no-index-cache".as_ref(), cut.as_os_str()]);
    assert!(!r.ok());
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("imgmount: "), "{}", r.stderr);
}

#[test]
fn a_compressed_image_mounts_and_reads_like_the_raw_disk() {
    if !Path::new("/dev/fuse").exists() || !(is_root() || have_tool("fusermount3")) {
        eprintln!("SKIP: no FUSE here");
        return;
    }
    let Some(dir) = compressed_dir() else { return };
    let img = dir.join("gpt.img.mb.xz");
    if !img.exists() {
        eprintln!("SKIP: no xz");
        return;
    }
    let tmp = TempDir::new("compressed-mount");
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = tmp.join("cache");
    let args = [
        "--cache-dir".as_ref(),
        cache.as_os_str(),
        img.as_os_str(),
        mnt.as_os_str(),
    ];
    // The mount returns once it answers, so the index exists by then.
    imgmount(args).expect_ok();
    assert!(
        std::fs::read_dir(&cache).unwrap().count() > 0,
        "no index cached"
    );
    let got = std::fs::read(mnt.join("p2/numbers.txt"));
    let want = std::fs::read(fixture_tree("gpt", Some(2)).unwrap().join("numbers.txt"));
    imgmount(["umount".as_ref(), mnt.as_os_str()]).expect_ok();
    assert_eq!(got.unwrap(), want.unwrap());
}

/// The fsck test images of ../shared/corpus ship as `.img.gz`, written by many gzip versions
/// over the years: a sample of them, opened as they are, must decode to what `gzip -dc` gives.
#[test]
fn corpus_gzip_files_decode_like_gzip() {
    let _turn = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    let root = repo_root().join("../shared/corpus");
    if !root.is_dir() || !have_tool("gzip") {
        eprintln!("SKIP: no ../shared/corpus or no gzip");
        return;
    }
    let mut paths: Vec<PathBuf> = ["e2fsprogs", "dosfstools"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap())
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".img.gz"))
        .collect();
    paths.sort();
    let mut checked = 0;
    // gzip's trailer holds the size mod 4 GiB: the large sparse images are left out, for time.
    let small = |p: &PathBuf| {
        let b = std::fs::read(p).unwrap();
        let isize = u32::from_le_bytes(b[b.len() - 4..].try_into().unwrap());
        isize <= 64 << 20
    };
    for p in paths.iter().filter(|p| small(p)).step_by(8) {
        let want = cli_decompress("gzip", p);
        let (dev, layers) = open_layer(p, None).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(layers.starts_with("gzip"), "{}: {layers}", p.display());
        assert!(
            read_all(&dev).unwrap() == want,
            "{}: bytes differ",
            p.display()
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} corpus files");
}

/// One gzip stream (plain `gzip`) is read through checkpoints: reads at many places, cold,
/// each equal `gzip -dc`; the windows come from the cache on a second open, and damaged,
/// short or missing window data there is not trusted but rebuilt.
#[test]
fn single_stream_gzip_reads_anywhere_through_cached_checkpoints() {
    let _turn = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    if !have_tool("gzip") {
        eprintln!("SKIP: no gzip");
        return;
    }
    let tmp = TempDir::new("compressed-zran");
    // Text with long-range repeats, so that pieces reach back into their windows (the disk
    // fixtures are mostly zeros there), and a run of zeros, left unread.
    let mut text = Vec::new();
    let mut x = 12345u64;
    while text.len() < 20 << 20 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.extend_from_slice(format!("line {} {:x}\n", (x >> 33) % 5000, x >> 52).as_bytes());
        if (9 << 20..12 << 20).contains(&text.len()) {
            text.resize(12 << 20, 0);
        }
    }
    let raw = tmp.join("text.img");
    std::fs::write(&raw, &text).unwrap();
    let img = tmp.join("text.img.gz");
    let gz = Command::new("gzip").arg("-c").arg(&raw).output().unwrap();
    assert!(gz.status.success());
    std::fs::write(&img, gz.stdout).unwrap();
    let want = cli_decompress("gzip", &img);
    assert!(want == text);
    let cache = tmp.join("cache");
    let check_reads = |dev: &DeviceRef, what: &str| {
        assert_eq!(dev.size(), want.len() as u64, "{what}");
        let mut buf = vec![0u8; 4096];
        // Backwards from the end, so most reads miss the pieces held in memory.
        let step = want.len() / 97;
        for k in (0..=97).rev() {
            let off = (k * step + k * 4093).min(want.len() - buf.len());
            dev.read_at(off as u64, &mut buf).unwrap();
            assert!(buf == want[off..off + buf.len()], "{what}: at {off}");
        }
    };
    let (built0, loaded0) = index_stats();
    let (dev, layers) = open_layer(&img, Some(&cache)).unwrap();
    assert!(layers.contains("checkpoints; index built"), "{layers}");
    check_reads(&dev, "first open");
    drop(dev);
    let (dev, layers) = open_layer(&img, Some(&cache)).unwrap();
    assert!(layers.contains("index from cache"), "{layers}");
    assert_eq!(index_stats(), (built0 + 1, loaded0 + 1));
    check_reads(&dev, "second open");
    drop(dev);

    let windows = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "dat"))
        .expect("a window file beside the index");
    let good = std::fs::read(&windows).unwrap();
    // A byte flipped in every window that holds data (some belong to pieces of zeros, which
    // are never decoded).
    let mut flipped = good.clone();
    for w in flipped.chunks_mut(32 << 10) {
        if let Some(i) = w.iter().position(|&b| b != 0) {
            w[i] ^= 0x01;
        }
    }
    assert!(flipped != good, "no window with data");
    let damages: [(&str, Option<&[u8]>); 3] = [
        ("a flipped byte", Some(&flipped)),
        ("a short file", Some(&good[..good.len() - 1])),
        ("no file", None),
    ];
    for (what, bytes) in damages {
        match bytes {
            Some(b) => std::fs::write(&windows, b).unwrap(),
            None => std::fs::remove_file(&windows).unwrap(),
        }
        let (built, _) = index_stats();
        let (dev, layers) = open_layer(&img, Some(&cache)).unwrap();
        assert!(layers.contains("index built"), "{what}: {layers}");
        assert_eq!(index_stats().0, built + 1, "{what}: not rebuilt");
        check_reads(&dev, what);
        assert!(std::fs::read(&windows).unwrap() == good, "{what}");
    }

    // Damaged while in use: the piece behind that window fails with EIO, the rest still read.
    let (dev, _) = open_layer(&img, Some(&cache)).unwrap();
    std::fs::write(&windows, &flipped).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut failed = 0;
    for off in (0..want.len() - 4096).step_by(1 << 20) {
        match dev.read_at(off as u64, &mut buf) {
            Ok(()) => assert!(buf == want[off..off + 4096], "at {off}"),
            Err(e) => {
                assert!(e.to_string().contains("window"), "{e}");
                assert_eq!(e.errno(), libc::EIO);
                failed += 1;
            }
        }
    }
    assert!(
        failed > 0 && failed < want.len() >> 20,
        "{failed} reads failed"
    );
}
