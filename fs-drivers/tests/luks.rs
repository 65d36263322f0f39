//! LUKS volumes made by other implementations and read (and written) by ours: LUKS1 by
//! qemu-img's own LUKS writer and reader, LUKS2 headers by cryptsetup with the data encrypted
//! here by Python's `cryptography` (OpenSSL's AES-XTS, not the RustCrypto crates the driver
//! uses) under the volume key cryptsetup reveals.

use fs_drivers::block::{BlockDevice, DeviceRef, FileDevice};
use fs_drivers::container::luks::{self, KeySource};
use fs_drivers::container::PeelContext;
use fs_drivers::disk::{FsOptions, Image, ImageOptions};
use fs_drivers::vfs::FileSystem;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

const PASS: &[u8] = b"correct horse";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn have_all(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            println!("SKIP: {t} is not installed");
            return false;
        }
    }
    true
}

fn have_python_xts() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "from cryptography.hazmat.primitives.ciphers import modes; modes.XTS",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIP: python3 with the cryptography module is not installed");
    }
    ok
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("imgmount-luks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys(pass: &[u8]) -> Option<Arc<KeySource>> {
    Some(Arc::new(KeySource::fixed(pass)))
}

fn open(path: &Path, writable: bool, pass: &[u8]) -> fs_drivers::Result<Image> {
    let opts = ImageOptions {
        peel: PeelContext {
            luks_key: keys(pass),
            ..PeelContext::default()
        },
        ..ImageOptions::new(writable, 1 << 20)
    };
    Image::open_with(path, &opts)
}

fn err_of<T>(r: fs_drivers::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn device_bytes(dev: &DeviceRef) -> Vec<u8> {
    let mut v = vec![0u8; dev.size() as usize];
    dev.read_at(0, &mut v).unwrap();
    v
}

/// An 8 MiB FAT16 image with a few files (mtools), the plaintext every LUKS1 test encrypts.
fn fat_plain(dir: &TempDir) -> PathBuf {
    let img = dir.join("plain.img");
    run(Command::new("mkfs.fat")
        .args(["-C", "-F", "16", "-n", "PLAIN"])
        .arg(&img)
        .arg("16384"));
    let f = dir.join("hello.txt");
    std::fs::write(&f, b"hello from inside LUKS\n").unwrap();
    let big = dir.join("big.bin");
    std::fs::write(
        &big,
        (0..300_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    run(Command::new("mmd").arg("-i").arg(&img).arg("::/sub"));
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&f)
        .arg("::/hello.txt"));
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&big)
        .arg("::/sub/big.bin"));
    img
}

/// The plaintext FAT image and its qemu-made LUKS1 (aes-256-xts-plain64) copy, made once per
/// test run: qemu-img spends seconds benchmarking its PBKDF on every encryption.
fn shared_luks1() -> Option<&'static (PathBuf, PathBuf)> {
    static SHARED: std::sync::OnceLock<Option<(PathBuf, PathBuf)>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            if !have_all(&["qemu-img", "mkfs.fat", "mcopy"]) {
                return None;
            }
            let dir = TempDir(Path::new(env!("CARGO_TARGET_TMPDIR")).join("luks1-shared"));
            let _ = std::fs::remove_dir_all(&dir.0);
            std::fs::create_dir_all(&dir.0).unwrap();
            let plain = fat_plain(&dir);
            let enc = dir.join("xts.luks");
            qemu_encrypt(&plain, &enc, PASS, "cipher-alg=aes-256,cipher-mode=xts");
            // Kept for the whole run (a static is never dropped); one fixed directory in cargo's
            // scratch space, replaced by the next run.
            let keep = (plain, enc);
            std::mem::forget(dir);
            Some(keep)
        })
        .as_ref()
}

/// A private copy of the shared LUKS1 image, for a test that changes it.
fn luks1_copy(dir: &TempDir) -> Option<PathBuf> {
    let (_, enc) = shared_luks1()?;
    let copy = dir.join("copy.luks");
    std::fs::copy(enc, &copy).unwrap();
    Some(copy)
}

fn qemu_encrypt(plain: &Path, out: &Path, pass: &[u8], cipher: &str) {
    let secret = format!("secret,id=sec0,data={}", String::from_utf8_lossy(pass));
    run(Command::new("qemu-img")
        .args([
            "convert", "-f", "raw", "-O", "luks", "--object", &secret, "-o",
        ])
        .arg(format!("key-secret=sec0,iter-time=10,{cipher}"))
        .arg(plain)
        .arg(out));
}

fn qemu_decrypt(enc: &Path, out: &Path, pass: &[u8]) {
    let secret = format!("secret,id=sec0,data={}", String::from_utf8_lossy(pass));
    run(Command::new("qemu-img")
        .args(["convert", "--object", &secret, "--image-opts"])
        .arg(format!(
            "driver=luks,key-secret=sec0,file.filename={}",
            enc.display()
        ))
        .args(["-O", "raw"])
        .arg(out));
}

fn read_file(fs: &dyn FileSystem, path: &str) -> Vec<u8> {
    let mut ino = fs.root();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(ino, part.as_bytes()).unwrap().ino;
    }
    let size = fs.getattr(ino).unwrap().size as usize;
    let mut buf = vec![0u8; size];
    let mut done = 0;
    while done < size {
        let n = fs.read(ino, done as u64, &mut buf[done..]).unwrap();
        assert!(n > 0);
        done += n;
    }
    buf
}

#[test]
fn luks1_from_qemu_reads_as_the_plaintext() {
    let Some((plain, xts)) = shared_luks1() else {
        return;
    };
    let dir = TempDir::new("q1");
    let want = std::fs::read(plain).unwrap();
    let more = [
        ("essiv", "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1"),
        ("cbc-plain", "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain,hash-alg=sha512"),
    ];
    // qemu-img benchmarks its PBKDF for seconds: both encryptions at once.
    std::thread::scope(|s| {
        for (name, cipher) in more {
            let enc = dir.join(&format!("{name}.luks"));
            s.spawn(move || qemu_encrypt(plain, &enc, PASS, cipher));
        }
    });
    let cases = std::iter::once(("xts", xts.clone())).chain(
        more.iter()
            .map(|(name, _)| (*name, dir.join(&format!("{name}.luks")))),
    );
    for (name, enc) in cases {
        let img = open(&enc, false, PASS).unwrap();
        assert_eq!(img.layers().len(), 1, "{name}");
        assert!(img.layers()[0].format == "LUKS1", "{:?}", img.layers());
        assert!(
            device_bytes(img.device()) == want,
            "{name}: decrypted bytes differ"
        );
        let fs = img.open_fs(None, &FsOptions::default()).unwrap();
        assert_eq!(
            read_file(fs.as_ref(), "/hello.txt"),
            b"hello from inside LUKS\n"
        );
        assert_eq!(read_file(fs.as_ref(), "/sub/big.bin").len(), 300_000);
    }
}

#[test]
fn luks1_fat_written_by_us_decrypts_with_qemu() {
    if !have_all(&["fsck.fat", "mtype"]) {
        return;
    }
    let dir = TempDir::new("q1rw");
    let Some(enc) = luks1_copy(&dir) else {
        return;
    };
    let header_before = {
        let h = luks::read_header(&FileDevice::open(&enc, false).unwrap())
            .unwrap()
            .unwrap();
        let b = std::fs::read(&enc).unwrap();
        b[..h.payload_offset as usize].to_vec()
    };
    let payload: Vec<u8> = (0..123_457u32).map(|i| (i % 253) as u8 ^ 0x5a).collect();
    {
        let img = open(&enc, true, PASS).unwrap();
        let opts = FsOptions {
            writable: true,
            ..FsOptions::default()
        };
        let fs = img.open_fs(None, &opts).unwrap();
        let root = fs.root();
        let a = fs.create(root, b"written.bin", 0o644).unwrap();
        fs.open(a.ino, true).unwrap();
        // Odd sizes and offsets: partial encryption sectors at both ends.
        assert_eq!(fs.write(a.ino, 0, &payload[..1000]).unwrap(), 1000);
        assert_eq!(
            fs.write(a.ino, 1000, &payload[1000..]).unwrap(),
            payload.len() - 1000
        );
        fs.release(a.ino).unwrap();
        let d = fs.mkdir(root, b"newdir", 0o755).unwrap();
        let b = fs.create(d.ino, b"note.txt", 0o644).unwrap();
        fs.open(b.ino, true).unwrap();
        fs.write(b.ino, 0, b"note\n").unwrap();
        fs.release(b.ino).unwrap();
        fs.unlink(root, b"hello.txt").unwrap();
        fs.sync().unwrap();
    }
    let after = std::fs::read(&enc).unwrap();
    assert!(
        after[..header_before.len()] == header_before[..],
        "the LUKS header changed"
    );
    let out = dir.join("decrypted.img");
    qemu_decrypt(&enc, &out, PASS);
    run(Command::new("fsck.fat").arg("-n").arg(&out));
    let got = run(Command::new("mtype")
        .arg("-i")
        .arg(&out)
        .arg("::/written.bin"));
    assert!(
        got == payload,
        "written.bin differs after qemu-img decryption"
    );
    let got = run(Command::new("mtype")
        .arg("-i")
        .arg(&out)
        .arg("::/newdir/note.txt"));
    assert_eq!(got, b"note\n");
    let listing = String::from_utf8(run(Command::new("mdir")
        .args(["-b", "-i"])
        .arg(&out)
        .arg("::/")))
    .unwrap();
    assert!(
        !listing.contains("hello.txt") && listing.contains("written.bin"),
        "{listing}"
    );
}

#[test]
fn luks1_wrong_key_and_corrupt_keyslot_are_one_line_errors() {
    let dir = TempDir::new("q1bad");
    let Some(enc) = luks1_copy(&dir) else {
        return;
    };
    let e = err_of(open(&enc, false, b"not the key"));
    assert!(e.contains("wrong passphrase"), "{e}");
    assert!(!e.contains('\n'));
    // The key material of the only keyslot overwritten: the right key opens nothing now.
    let h = luks::read_header(&FileDevice::open(&enc, false).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(h.keyslots_in_use(), [0]);
    let mut b = std::fs::read(&enc).unwrap();
    for x in &mut b[4096..8192] {
        *x ^= 0xff;
    }
    std::fs::write(&enc, &b).unwrap();
    let e = err_of(open(&enc, false, PASS));
    assert!(e.contains("wrong passphrase"), "{e}");
    // A keyslot state that is neither active nor disabled, and stripes past the file's end.
    let mut c = b.clone();
    c[208..212].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    std::fs::write(&enc, &c).unwrap();
    let e = err_of(open(&enc, false, PASS));
    assert!(e.contains("keyslot 0 has state"), "{e}");
    let mut c = b.clone();
    c[208 + 44..208 + 48].copy_from_slice(&0x000f_ffffu32.to_be_bytes());
    std::fs::write(&enc, &c).unwrap();
    let e = err_of(open(&enc, false, PASS));
    assert!(e.contains("keyslot 0 lies outside the image"), "{e}");
}

/// The XTS helper: `python3 - enc|dec KEYHEX SECTOR FIRST_IV` over stdin, the IV counted in
/// 512-byte units as dm-crypt does for LUKS2.
const PY_XTS: &str = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
mode, key, sector, first = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = sys.stdin.buffer.read()
out = bytearray()
for i in range(0, len(data), sector):
    iv = (first + i // 512).to_bytes(16, "little")
    c = Cipher(algorithms.AES(key), modes.XTS(iv))
    op = c.encryptor() if mode == "enc" else c.decryptor()
    out += op.update(data[i:i + sector]) + op.finalize()
sys.stdout.buffer.write(bytes(out))
"#;

fn py_xts(mode: &str, key: &[u8], sector: u32, first_iv: u64, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new("python3")
        .args([
            "-c",
            PY_XTS,
            mode,
            &hex,
            &sector.to_string(),
            &first_iv.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// `cryptsetup luksFormat --type luks2` on a plain file; returns the volume key luksDump shows.
fn luks2_format(dir: &TempDir, name: &str, extra: &[&str]) -> (PathBuf, Vec<u8>) {
    let img = dir.join(name);
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(6 << 20).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, PASS).unwrap();
    run(Command::new("cryptsetup")
        .args([
            "luksFormat",
            "-q",
            "--type",
            "luks2",
            "--luks2-metadata-size",
            "16k",
            "--luks2-keyslots-size",
            "1m",
            "--key-file",
        ])
        .arg(&pw)
        .args(extra)
        .arg(&img));
    let dump = run(Command::new("cryptsetup")
        .args(["luksDump", "-q", "--dump-volume-key", "--key-file"])
        .arg(&pw)
        .arg(&img));
    let text = String::from_utf8(dump).unwrap();
    let start = text.find("MK dump:").expect("MK dump in luksDump output") + 8;
    let key: Vec<u8> = text[start..]
        .split_whitespace()
        .map_while(|w| u8::from_str_radix(w, 16).ok().filter(|_| w.len() == 2))
        .collect();
    assert_eq!(key.len(), 64, "{text}");
    (img, key)
}

fn luks2_case(name: &str, extra: &[&str], sector: u32) {
    if !have_all(&["cryptsetup"]) || !have_python_xts() {
        return;
    }
    let dir = TempDir::new(name);
    let (img, vk) = luks2_format(&dir, "l2.img", extra);
    let h = luks::read_header(&FileDevice::open(&img, false).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((h.version, h.sector_size), (2, sector));
    let off = h.payload_offset;
    let data_len = (6 << 20) - off as usize;
    // Data encrypted by the independent implementation, read by ours.
    let plain: Vec<u8> = (0..data_len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cipher = py_xts("enc", &vk, sector, 0, &plain);
    let mut file = std::fs::read(&img).unwrap();
    file[off as usize..].copy_from_slice(&cipher);
    std::fs::write(&img, &file).unwrap();
    {
        let image = open(&img, false, PASS);
        // No filesystem inside: the image opens, but holds nothing recognised.
        let image = image.unwrap();
        assert_eq!(image.layers()[0].format, "LUKS2");
        assert!(
            device_bytes(image.device()) == plain,
            "{name}: our decryption differs"
        );
    }
    // Our writes, at offsets not aligned to the sector at either end, decrypted by Python.
    let mut expect = plain.clone();
    {
        let dev: DeviceRef = Arc::new(FileDevice::open(&img, true).unwrap());
        let h = luks::read_header(dev.as_ref()).unwrap().unwrap();
        let luks_dev = luks::open_with(&dev, &h, &KeySource::fixed(PASS)).unwrap();
        for (pos, len) in [
            (1usize, 10usize),
            (511, 2),
            (4095, 4098),
            (12_345, 70_001),
            (data_len - 3, 3),
            (8192, 8192),
        ] {
            let chunk: Vec<u8> = (0..len).map(|i| (i * 31 + pos) as u8 ^ 0xa5).collect();
            luks_dev.write_at(pos as u64, &chunk).unwrap();
            expect[pos..pos + len].copy_from_slice(&chunk);
        }
        luks_dev.flush().unwrap();
    }
    let file = std::fs::read(&img).unwrap();
    let got = py_xts("dec", &vk, sector, 0, &file[off as usize..]);
    assert!(
        got == expect,
        "{name}: Python's decryption of our writes differs"
    );
}

#[test]
fn luks2_pbkdf2_512_byte_sectors() {
    luks2_case(
        "p512",
        &[
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--sector-size",
            "512",
        ],
        512,
    );
}

#[test]
fn luks2_argon2id_4096_byte_sectors() {
    luks2_case(
        "a4096",
        &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "1024",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
            "--sector-size",
            "4096",
        ],
        4096,
    );
}

#[test]
fn luks2_damaged_primary_falls_back_and_wrong_key_fails() {
    if !have_all(&["cryptsetup"]) {
        return;
    }
    let dir = TempDir::new("l2dmg");
    let (img, _) = luks2_format(
        &dir,
        "d.img",
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
    );
    let e = err_of(open(&img, false, b"wrong"));
    assert!(e.contains("wrong passphrase"), "{e}");
    let mut b = std::fs::read(&img).unwrap();
    // A byte of the primary's JSON: its checksum fails, the secondary at 16 KiB takes over.
    b[4096 + 10] ^= 0x20;
    std::fs::write(&img, &b).unwrap();
    let dev = FileDevice::open(&img, false).unwrap();
    let h = luks::read_header(&dev).unwrap().unwrap();
    assert!(
        h.summary().contains("primary header damaged"),
        "{}",
        h.summary()
    );
    let dev: DeviceRef = Arc::new(dev);
    luks::open_with(&dev, &h, &KeySource::fixed(PASS)).unwrap();
    // Both copies damaged: one line, no panic.
    b[16384 + 4096 + 10] ^= 0x20;
    std::fs::write(&img, &b).unwrap();
    let e = err_of(luks::read_header(&FileDevice::open(&img, false).unwrap()));
    assert!(e.contains("checksum mismatch"), "{e}");
    assert!(!e.contains('\n'));
}
