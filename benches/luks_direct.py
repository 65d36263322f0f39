#!/usr/bin/env python3
"""Issue 18's rows: LUKS (aes-xts) against plaintext, and `-o direct` against buffered I/O,
through imgmount mounts of one FAT32 image holding one large file.

Rows (medians of --runs interleaved runs; every read starts cold: a fresh mount, so the FUSE
page cache is empty, and POSIX_FADV_DONTNEED on the image file, so the host's is too):
  - sequential read of the file (1 MiB reads) cold and with the image in the host page
    cache, and in-place sequential write (+ fsync), plaintext vs LUKS1 (qemu-img,
    aes-256-xts-plain64);
  - unlocking with qemu-img's default PBKDF2 cost (`imgmount info --key-file`);
  - sequential read, buffered vs `-o direct`, and the image's bytes left in the host page
    cache afterwards (fincore);
  - random 4 KiB preads by 16 threads (POSIX_FADV_RANDOM, so each is one FUSE read).

Usage: python3 benches/luks_direct.py [--size-mib 512] [--runs 3] [--imgmount PATH]
Needs root (or user FUSE), qemu-img, mkfs.vfat, mcopy, fincore. Images live in
target/bench-ld/ and are deleted afterwards unless --keep.
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASS = b"bench pass"
MiB = 1 << 20


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def drop(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_bytes(path):
    out = sh("fincore", "--bytes", "--noheadings", "--output", "RES", path, text=True).stdout
    return int(out.split()[0])


class Mount:
    def __init__(self, tool, image, mnt, opts, key, env=None):
        self.mnt = mnt
        self.tool = tool
        os.makedirs(mnt, exist_ok=True)
        cmd = [tool, image, mnt] + [a for o in opts for a in ("-o", o)]
        if key:
            cmd += ["--key-file", key]
        sh(*cmd, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{image} did not mount")
            time.sleep(0.05)

    def close(self):
        sh(self.tool, "umount", self.mnt)
        # The daemon writes back and exits after the unmount returns.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and daemon_alive(self.mnt):
            time.sleep(0.05)


def daemon_alive(mnt):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if mnt.encode() in f.read().split(b"\0"):
                    return True
        except OSError:
            pass
    return False


def seq_read(path):
    fd = os.open(path, os.O_RDONLY)
    t = time.monotonic()
    n = 0
    while True:
        b = os.read(fd, MiB)
        if not b:
            break
        n += len(b)
    os.close(fd)
    return n / (time.monotonic() - t) / 1e6


def seq_write(path, size):
    buf = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY)
    t = time.monotonic()
    for _ in range(size // MiB):
        os.write(fd, buf)
    os.fsync(fd)
    os.close(fd)
    return size / (time.monotonic() - t) / 1e6


def random_reads(path, size, threads=16, per_thread=400):
    fds = [os.open(path, os.O_RDONLY) for _ in range(threads)]
    for fd in fds:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    blocks = size // 4096

    def work(fd, seed):
        r = random.Random(seed)
        for _ in range(per_thread):
            os.pread(fd, 4096, r.randrange(blocks) * 4096)

    ts = [threading.Thread(target=work, args=(fd, i)) for i, fd in enumerate(fds)]
    t = time.monotonic()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    el = time.monotonic() - t
    for fd in fds:
        os.close(fd)
    return threads * per_thread / el


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--imgmount", default=os.path.join(REPO, "target/release/imgmount"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", choices=["luks", "direct"], default=None)
    a = ap.parse_args()
    size = a.size_mib * MiB
    work = os.path.join(REPO, "target/bench-ld")
    os.makedirs(work, exist_ok=True)
    plain, luks, key = (os.path.join(work, n) for n in ("plain.img", "luks.img", "key"))
    with open(key, "wb") as f:
        f.write(PASS)
    secret = ["--object", f"secret,id=s,file={key}"]
    if not os.path.exists(luks):
        src = os.path.join(work, "big")
        with open(src, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(MiB))
        sh("truncate", "-s", f"{a.size_mib + 80}M", plain)
        sh("mkfs.vfat", "-F", "32", plain)
        sh("mcopy", "-i", plain, src, "::/big")
        os.remove(src)
        # A small iteration count: the unlock row uses its own header with the default.
        sh("qemu-img", "convert", *secret, "-O", "luks", "-o",
           "key-secret=s,cipher-alg=aes-256,cipher-mode=xts,iter-time=10", plain, luks)
    rows = {}

    def add(name, v):
        rows.setdefault(name, []).append(v)
        print(f"{name}: {v:,.2f}", flush=True)

    # The knobs compare the two ways of each mode side by side in one run: LUKS with and
    # without its helper pool (IMGMOUNT_LUKS_HELPERS=0), direct reads through io_uring and
    # through the thread pool (IMGMOUNT_DIRECT_QUEUE).
    cases = []
    if a.only in (None, "luks"):
        cases += [("plaintext", plain, [], None, {}),
                  ("LUKS aes-xts", luks, [], key, {}),
                  ("LUKS aes-xts, no helper pool", luks, [], key, {"IMGMOUNT_LUKS_HELPERS": "0"})]
    if a.only in (None, "direct"):
        cases += [("buffered", plain, [], None, {}),
                  ("direct io_uring", plain, ["direct"], None, {"IMGMOUNT_DIRECT_QUEUE": "uring"}),
                  ("direct pool", plain, ["direct"], None, {"IMGMOUNT_DIRECT_QUEUE": "pool"})]
    print("load average at the start:", open("/proc/loadavg").read().strip(), flush=True)
    mnt = os.path.join(work, "mnt")
    for _ in range(a.runs):
        for name, img, opts, k, env in cases:
            direct_like = name == "buffered" or name.startswith("direct")
            drop(img)
            m = Mount(a.imgmount, img, mnt, opts, k, env)
            try:
                add(f"{name}: sequential read MB/s", seq_read(os.path.join(mnt, "big")))
                if direct_like:
                    add(f"{name}: image bytes cached after the read (fincore)", cached_bytes(img))
            finally:
                m.close()
            if direct_like:
                drop(img)
                m = Mount(a.imgmount, img, mnt, opts, k, env)
                try:
                    add(f"{name}: random 4 KiB preads/s, 16 threads", random_reads(os.path.join(mnt, "big"), size))
                finally:
                    m.close()
            else:
                # Again with the image in the host page cache (a fresh mount: FUSE's is
                # empty): no disk, so the decryption's cost shows.
                m = Mount(a.imgmount, img, mnt, opts, k, env)
                try:
                    add(f"{name}: sequential read MB/s, image in the host cache",
                        seq_read(os.path.join(mnt, "big")))
                finally:
                    m.close()
                m = Mount(a.imgmount, img, mnt, opts + ["rw"], k, env)
                try:
                    add(f"{name}: sequential write MB/s (in place, fsync)", seq_write(os.path.join(mnt, "big"), size))
                finally:
                    m.close()
    if a.only in (None, "luks"):
        hdr = os.path.join(work, "default-cost.luks")
        small = os.path.join(work, "small.img")
        sh("truncate", "-s", "16M", small)
        sh("mkfs.vfat", small)
        sh("qemu-img", "convert", *secret, "-O", "luks", "-o", "key-secret=s", small, hdr)
        for _ in range(a.runs):
            t = time.monotonic()
            sh(a.imgmount, "info", "--key-file", key, hdr)
            add("LUKS unlock, qemu-img default PBKDF2 cost (s)", time.monotonic() - t)
    print("load average at the end:", open("/proc/loadavg").read().strip(), flush=True)
    print(f"| {a.size_mib} MiB file, median of {a.runs} | value | runs |")
    print("|---|---:|---|")
    for k, v in rows.items():
        print(f"| {k} | {statistics.median(v):,.2f} | {', '.join(f'{x:,.1f}' for x in v)} |")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
