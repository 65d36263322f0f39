//! LUKS through the command line: an image qemu-img encrypted (its own LUKS1 writer) lists,
//! reads and mounts exactly like the plaintext it came from; a mount -o rw writes what
//! qemu-img decrypts into an fsck-clean FAT; a LUKS partition of a GPT disk unlocks alone;
//! no key, a wrong key and a key on stdin each behave as one line (or none).

mod common;
mod mount_support;

use common::{imgmount, imgmount_bin, require_tool, run_with_timeout, tool, TempDir};
use mount_support::{is_mounted, skip_reason, MountGuard};
use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const PASS: &str = "s3cret pass";

struct Images {
    /// Removed on drop; `None` for the shared master, kept under cargo's target/tmp.
    _dir: Option<TempDir>,
    plain: PathBuf,
    enc: PathBuf,
    key: PathBuf,
    dir: PathBuf,
    /// /dir/deeper/big.bin's bytes, as mcopy put them in.
    big: Vec<u8>,
}

fn sh(cmd: &mut Command) -> String {
    run_with_timeout(cmd, Duration::from_secs(120))
        .expect_ok()
        .stdout
}

/// A private copy of the shared images (tests that write change theirs).
fn images(tag: &str) -> Option<Images> {
    static MASTER: std::sync::OnceLock<Option<Images>> = std::sync::OnceLock::new();
    let m = MASTER.get_or_init(make_images).as_ref()?;
    let dir = TempDir::new(tag);
    let d = dir.path().to_path_buf();
    let copy = |p: &PathBuf| {
        let to = d.join(p.file_name().unwrap());
        std::fs::copy(p, &to).unwrap();
        to
    };
    Some(Images {
        plain: copy(&m.plain),
        enc: copy(&m.enc),
        key: copy(&m.key),
        dir: d,
        big: m.big.clone(),
        _dir: Some(dir),
    })
}

/// An 8 MiB FAT12 tree and qemu-img's LUKS1 encryption of it (made once: qemu-img spends
/// seconds benchmarking its PBKDF).
fn make_images() -> Option<Images> {
    for t in ["qemu-img", "mkfs.fat", "mcopy", "mmd", "mtype", "fsck.fat"] {
        if !require_tool(t) {
            return None;
        }
    }
    // One fixed directory under cargo's scratch space, replaced by every run.
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("luks_cli-master");
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let plain = d.join("plain.img");
    sh(tool("mkfs.fat")
        .args(["-C", "-F", "12", "-n", "PLAIN"])
        .arg(&plain)
        .arg("8192"));
    std::fs::write(d.join("a.txt"), "alpha\n").unwrap();
    let big: Vec<u8> = (0..200_003u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(d.join("big.bin"), &big).unwrap();
    sh(tool("mmd")
        .arg("-i")
        .arg(&plain)
        .args(["::/dir", "::/dir/deeper"]));
    sh(tool("mcopy")
        .arg("-i")
        .arg(&plain)
        .arg(d.join("a.txt"))
        .arg("::/a.txt"));
    sh(tool("mcopy")
        .arg("-i")
        .arg(&plain)
        .arg(d.join("big.bin"))
        .arg("::/dir/deeper/big.bin"));
    let enc = d.join("enc.luks");
    sh(tool("qemu-img")
        .args(["convert", "-f", "raw", "-O", "luks", "--object"])
        .arg(format!("secret,id=s0,data={PASS}"))
        .args(["-o", "key-secret=s0,iter-time=10"])
        .arg(&plain)
        .arg(&enc));
    let key = d.join("key");
    std::fs::write(&key, PASS).unwrap();
    Some(Images {
        _dir: None,
        plain,
        enc,
        key,
        dir: d,
        big,
    })
}

fn one_line_failure(args: &[&OsStr], want: &str) {
    let r = imgmount(args);
    assert!(!r.ok(), "{args:?} succeeded");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("imgmount: "), "{}", r.stderr);
    assert!(r.stderr.contains(want), "{}", r.stderr);
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

#[test]
fn ls_cat_info_and_key_errors() {
    let Some(im) = images("cli") else { return };
    let plain_ls = imgmount([os("ls"), os("-lR"), im.plain.as_os_str()])
        .expect_ok()
        .stdout;
    let enc_ls = imgmount([
        os("ls"),
        os("-lR"),
        os("--key-file"),
        im.key.as_os_str(),
        im.enc.as_os_str(),
    ])
    .expect_ok()
    .stdout;
    assert!(plain_ls.contains("big.bin"), "{plain_ls}");
    assert_eq!(enc_ls, plain_ls);
    let want = &im.big;
    // The key on standard input.
    let mut child = Command::new(imgmount_bin())
        .args([
            os("cat"),
            os("--key-file"),
            os("-"),
            im.enc.as_os_str(),
            os("/dir/deeper/big.bin"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASS.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == *want, "cat through LUKS differs from mtype");

    // No key (stdin is no terminal here), a wrong key, an unreadable key file.
    one_line_failure(&[os("ls"), im.enc.as_os_str()], "a key is needed");
    let bad = im.dir.join("bad");
    std::fs::write(&bad, "nope").unwrap();
    one_line_failure(
        &[
            os("cat"),
            os("--key-file"),
            bad.as_os_str(),
            im.enc.as_os_str(),
            os("/a.txt"),
        ],
        "wrong passphrase",
    );
    one_line_failure(
        &[
            os("extract"),
            os("--key-file"),
            im.dir.join("missing").as_os_str(),
            im.enc.as_os_str(),
            im.dir.join("out").as_os_str(),
        ],
        "cannot read the key file",
    );

    // info needs no key: the header's facts, and nothing below it.
    let info = imgmount([os("info"), im.enc.as_os_str()])
        .expect_ok()
        .stdout;
    let uuid = sh(tool("cryptsetup").arg("luksUUID").arg(&im.enc));
    for want in [
        "LUKS1: aes-xts-plain64",
        "512-byte sectors",
        "keyslots 0 (pbkdf2)",
        "locked",
        uuid.trim(),
    ] {
        assert!(info.contains(want), "{want} missing from:\n{info}");
    }
    let info = imgmount([
        os("info"),
        os("--key-file"),
        im.key.as_os_str(),
        im.enc.as_os_str(),
    ])
    .expect_ok()
    .stdout;
    assert!(
        info.contains("LUKS1 (aes-xts-plain64") && info.contains("fat12"),
        "{info}"
    );
}

#[test]
fn luks_partition_of_a_gpt_disk_unlocks_alone() {
    if !require_tool("sfdisk") {
        return;
    }
    let Some(im) = images("gpt") else { return };
    let disk = im.dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    let mut child = tool("sfdisk")
        .args(["-q", "--no-reread"])
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048, size=16384, type=U\nstart=18432, size=24576, type=L\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let mut d = std::fs::read(&disk).unwrap();
    let plain = std::fs::read(&im.plain).unwrap();
    let enc = std::fs::read(&im.enc).unwrap();
    d[2048 * 512..2048 * 512 + plain.len()].copy_from_slice(&plain);
    d[18432 * 512..18432 * 512 + enc.len()].copy_from_slice(&enc);
    std::fs::write(&disk, &d).unwrap();
    let ls = imgmount([
        os("ls"),
        os("-R"),
        os("--key-file"),
        im.key.as_os_str(),
        disk.as_os_str(),
    ])
    .expect_ok()
    .stdout;
    assert!(
        ls.contains("p1/dir/deeper") && ls.contains("p2/dir/deeper"),
        "{ls}"
    );
    let p2 = imgmount([
        os("cat"),
        os("-p"),
        os("2"),
        os("--key-file"),
        im.key.as_os_str(),
        disk.as_os_str(),
        os("/a.txt"),
    ])
    .expect_ok()
    .stdout;
    assert_eq!(p2, "alpha\n");
    // Without a key the plaintext partition still needs none; the whole disk says why not.
    let p1 = imgmount([os("cat"), os("-p"), os("1"), disk.as_os_str(), os("/a.txt")]);
    assert!(
        !p1.ok() && p1.stderr.contains("partition 2") && p1.stderr.contains("a key is needed"),
        "{p1:?}"
    );
    let info = imgmount([os("info"), disk.as_os_str()]).expect_ok().stdout;
    assert!(info.contains("LUKS1: aes-xts-plain64"), "{info}");
}

fn mount(args: &[&OsStr]) {
    imgmount(args).expect_ok();
}

#[test]
fn mount_reads_and_writes_through_luks() {
    if let Some(why) = skip_reason() {
        println!("SKIP: {why}");
        return;
    }
    let Some(im) = images("mnt") else { return };
    let mnt = im.dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());
    // A wrong key mounts nothing.
    one_line_failure(
        &[
            os("--key-file"),
            im.dir.join("key").with_extension("x").as_os_str(),
            im.enc.as_os_str(),
            mnt.as_os_str(),
        ],
        "key file",
    );
    assert!(!is_mounted(&mnt));
    mount(&[
        os("--key-file"),
        im.key.as_os_str(),
        im.enc.as_os_str(),
        mnt.as_os_str(),
    ]);
    let want = &im.big;
    assert!(std::fs::read(mnt.join("dir/deeper/big.bin")).unwrap() == *want);
    imgmount([os("umount"), mnt.as_os_str()]).expect_ok();

    // qemu-img's output is the header and key material, then the payload.
    let header_len = (std::fs::metadata(&im.enc).unwrap().len()
        - std::fs::metadata(&im.plain).unwrap().len()) as usize;
    let before = std::fs::read(&im.enc).unwrap()[..header_len].to_vec();
    mount(&[
        os("-o"),
        os("rw"),
        os("--key-file"),
        im.key.as_os_str(),
        im.enc.as_os_str(),
        mnt.as_os_str(),
    ]);
    let written: Vec<u8> = (0..77_777u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(mnt.join("dir/new.bin"), &written).unwrap();
    std::fs::remove_file(mnt.join("a.txt")).unwrap();
    imgmount([os("umount"), mnt.as_os_str()]).expect_ok();
    assert!(!is_mounted(&mnt));
    assert!(
        std::fs::read(&im.enc).unwrap()[..header_len] == before[..],
        "header changed"
    );
    let out = im.dir.join("out.img");
    sh(tool("qemu-img")
        .args(["convert", "--object"])
        .arg(format!("secret,id=s0,data={PASS}"))
        .arg("--image-opts")
        .arg(format!(
            "driver=luks,key-secret=s0,file.filename={}",
            im.enc.display()
        ))
        .args(["-O", "raw"])
        .arg(&out));
    sh(tool("fsck.fat").arg("-n").arg(&out));
    // Binary output: read raw, not through the String helpers.
    let got = tool("mtype")
        .arg("-i")
        .arg(&out)
        .arg("::/dir/new.bin")
        .output()
        .unwrap();
    assert!(got.status.success());
    assert!(
        got.stdout == written,
        "dir/new.bin differs after qemu-img decryption"
    );
    let listing = sh(tool("mdir").args(["-b", "-i"]).arg(&out).arg("::/"));
    assert!(
        !listing.contains("A.TXT") && !listing.contains("a.txt"),
        "{listing}"
    );
}

/// Runs a command on a fresh pseudo-terminal, answers its passphrase prompt with the text of
/// argv[1], and prints everything the terminal showed.
const PY_PTY: &str = r#"
import os, pty, sys, time
answer = sys.argv[1].encode() + b"\n"
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
out = b""
def more():
    global out
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        return False
    out += chunk
    return bool(chunk)
while b"Passphrase" not in out and more():
    pass
time.sleep(0.5)  # the prompt is written just before echo is turned off
os.write(fd, answer)
while more():
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn terminal_prompt_without_echo() {
    if !require_tool("python3") {
        return;
    }
    let Some(im) = images("tty") else { return };
    let run = |answer: &str| {
        run_with_timeout(
            Command::new("python3")
                .args(["-c", PY_PTY, answer])
                .arg(imgmount_bin())
                .arg("ls")
                .arg(&im.enc),
            Duration::from_secs(60),
        )
    };
    let r = run(PASS);
    assert!(r.ok(), "{r:?}");
    assert!(r.stdout.contains("Passphrase for"), "{}", r.stdout);
    assert!(
        r.stdout.contains("a.txt") && r.stdout.contains("dir"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains(PASS),
        "the passphrase was echoed: {}",
        r.stdout
    );
    let r = run("wrong one");
    assert!(!r.ok());
    assert!(r.stdout.contains("wrong passphrase"), "{}", r.stdout);
}
