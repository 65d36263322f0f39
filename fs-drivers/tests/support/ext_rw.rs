//! Making, opening and checking ext images for the writer's tests (random operations,
//! crash points). Until the ext writer exists, `open_rw` answers its refusal and the tests
//! print a skip line: they start judging the writer the day `-o rw` on ext opens.

use fs_drivers::block::DeviceRef;
use fs_drivers::disk::{open_filesystem, FsOptions};
use fs_drivers::vfs::FileSystem;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A fresh image `size_mib` MiB large from `mke2fs -F -q <args>` under target/ext-rw-tests,
/// or None (with a skip line) when mke2fs is missing.
pub fn mkfs(tag: &str, args: &[&str], size_mib: u64) -> Option<PathBuf> {
    if !super::require_tool("mke2fs") {
        return None;
    }
    let dir = super::workspace_root().join("target/ext-rw-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join(format!("{tag}-{}.img", std::process::id()));
    let _ = std::fs::remove_file(&img);
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    let out = Command::new(super::tool_path("mke2fs").unwrap())
        .args(["-F", "-q"])
        .args(args)
        .arg(&img)
        .env("PATH", super::sbin_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mke2fs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(img)
}

/// The ext filesystem on `dev`, writable, the way the front ends open it.
pub fn open_rw(dev: DeviceRef) -> fs_drivers::Result<Arc<dyn FileSystem>> {
    let probe = fs_drivers::probe::probe(&*dev)?
        .ok_or_else(|| fs_drivers::Error::Invalid("no filesystem found".into()))?;
    let opts = FsOptions {
        writable: true,
        ..FsOptions::default()
    };
    let fs = open_filesystem(dev, &probe, &opts)?;
    if !fs.is_writable() {
        return Err(fs_drivers::Error::ReadOnly);
    }
    Ok(fs)
}

/// Opens `dev` writable, or prints why the test is skipped (ext rw refused) and gives None.
pub fn open_rw_or_skip(what: &str, dev: DeviceRef) -> Option<Arc<dyn FileSystem>> {
    match open_rw(dev) {
        Ok(fs) => Some(fs),
        Err(e) => {
            eprintln!("SKIP {what}: ext is not writable here yet ({e})");
            None
        }
    }
}

/// Runs e2fsck (`-fn` to check, `-fy` to repair/replay); Err carries the first lines of its
/// report. With `fix`, exit codes 1 and 2 (errors corrected) count as success.
pub fn e2fsck(img: &Path, fix: bool) -> Result<(), String> {
    let Some(tool) = super::tool_path("e2fsck") else {
        eprintln!("SKIP: e2fsck missing");
        return Ok(());
    };
    let out = Command::new(tool)
        .arg(if fix { "-fy" } else { "-fn" })
        .arg(img)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    if code == 0 || (fix && (code == 1 || code == 2)) {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let head: Vec<&str> = text.lines().take(25).collect();
    Err(format!(
        "e2fsck {} exit {code}:\n{}",
        if fix { "-fy" } else { "-fn" },
        head.join("\n")
    ))
}

/// `<target tmp dir>/<dir>/<name>`, the folder made.
pub fn scratch(dir: &str, name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d.join(name)
}

/// `mkfs.<fs_type> -q -F <args>` on a fresh `size_mib` MiB file `<dir>/<name>.img` in the
/// test binary's target tmp dir (no skip: callers check their tools first).
pub fn mkfs_image(dir: &str, name: &str, fs_type: &str, args: &[&str], size_mib: u64) -> PathBuf {
    let img = scratch(dir, &format!("{name}.img"));
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size_mib << 20))
        .expect("create image");
    let out = Command::new(format!("mkfs.{fs_type}"))
        .args(["-q", "-F"])
        .args(args)
        .arg(&img)
        .env("PATH", super::sbin_path())
        .output()
        .expect("mkfs");
    assert!(
        out.status.success(),
        "mkfs.{fs_type} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// The image file behind the block cache, as the front ends stack it.
pub fn cached_device(img: &Path, writable: bool) -> DeviceRef {
    let file: DeviceRef =
        Arc::new(fs_drivers::block::FileDevice::open(img, writable).expect("open image"));
    Arc::new(fs_drivers::block::BlockCache::with_defaults(file))
}

/// Root's id is 0; `id -u` keeps the tests free of libc calls.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
