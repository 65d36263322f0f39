//! The CPU's AES-XTS speed, the `cryptsetup benchmark -c aes-xts-plain64` figure (that needs
//! the kernel's AF_ALG, which not every machine has): MB/s of the LUKS sector cipher
//! (`SectorCipher`, batched so AES-NI pipelines) and, for comparison, of the `xts-mode`
//! crate's block-at-a-time `decrypt_area`, on one thread and on two. Not a test: it prints
//! numbers and exits 0. `cargo bench -p fs-drivers --bench luks_cipher`.

use aes::cipher::KeyInit;
use aes::Aes256;
use fs_drivers::container::luks::SectorCipher;
use std::time::Instant;
use xts_mode::{get_tweak_default, Xts128};

const LEN: usize = 64 << 20;

fn mbps(bytes: usize, f: impl Fn()) -> f64 {
    f(); // warm-up
    let t = Instant::now();
    let mut runs = 0;
    while t.elapsed().as_secs_f64() < 1.0 {
        f();
        runs += 1;
    }
    (bytes * runs) as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn on_threads(buf: &mut [u8], threads: usize, f: impl Fn(u64, &mut [u8]) + Sync) {
    let per = buf.len() / threads;
    std::thread::scope(|s| {
        for (k, piece) in buf.chunks_mut(per).enumerate() {
            let f = &f;
            s.spawn(move || f((k * per) as u64, piece));
        }
    });
}

fn main() {
    let key: Vec<u8> = (0..64u8).collect();
    let c = SectorCipher::new("aes-xts-plain64", &key).expect("aes-xts-plain64 with 512 bits");
    let cell = std::sync::Mutex::new(vec![0x5au8; LEN]);
    println!("aes-xts-plain64, 512-bit key, {} MiB buffer", LEN >> 20);
    for sector in [512usize, 4096] {
        for threads in [1, 2] {
            for (what, enc) in [("encrypt", true), ("decrypt", false)] {
                let r = mbps(LEN, || {
                    let mut b = cell.lock().unwrap();
                    on_threads(&mut b, threads, |pos, piece| {
                        c.crypt_sectors(enc, pos / 512, sector as u64 / 512, sector, piece);
                    });
                });
                println!(
                    "  SectorCipher {what} sector {sector:>4}, {threads} thread(s): {r:>7.0} MB/s"
                );
            }
        }
    }
    let x = Xts128::new(
        Aes256::new_from_slice(&key[..32]).unwrap(),
        Aes256::new_from_slice(&key[32..]).unwrap(),
    );
    let r = mbps(LEN, || {
        let mut b = cell.lock().unwrap();
        x.decrypt_area(&mut b, 512, 0, get_tweak_default);
    });
    println!("  xts-mode decrypt_area sector  512, 1 thread(s): {r:>7.0} MB/s (block at a time)");
}
