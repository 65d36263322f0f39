#!/usr/bin/env python3
"""Compressed images (issue 14): imgmount's first open (index build), second open (cached
index) and random 4 KiB read latency inside a mounted compressed image, beside the codec's own
CLI decompressing the same file to /dev/null (and ratarmount on the .gz when installed).

Builds an ext4 image holding mostly a random-content file (as issue 14 asks), compresses it with
each CLI (cached in the work directory) and prints a markdown table. A benchmark, not a test:
it exits 0 whatever the numbers are. See benches/README.md.

    python3 benches/compressed.py --size-mib 256
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20

# (file suffix, how to write it, the CLI that decodes it)
VARIANTS = [
    ("gz", ["gzip", "-c"], ["gzip", "-dc"]),
    ("bgz", ["bgzip", "-@2", "-c"], ["bgzip", "-dc"]),
    ("mb.xz", ["xz", "-T2", "--block-size=8MiB", "-c"], ["xz", "-dc"]),
    # What `xz -T0` writes by default (blocks of 3x the 8 MiB dictionary) and small blocks.
    ("T0.xz", ["xz", "-T0", "-c"], ["xz", "-dc"]),
    ("1m.xz", ["xz", "-T2", "--block-size=1MiB", "-c"], ["xz", "-dc"]),
    ("xz", ["xz", "-T1", "-c"], ["xz", "-dc"]),
    ("zst", ["zstd", "-q", "-c"], ["zstd", "-dc"]),
    ("pzstd.zst", ["pzstd", "-q", "-p", "2", "-c"], ["zstd", "-dc"]),
    ("bz2", ["bzip2", "-c"], ["bzip2", "-dc"]),
    ("pbzip2.bz2", ["pbzip2", "-p2", "-c"], ["bzip2", "-dc"]),
]


def log(msg):
    print(f"compressed.py: {msg}", file=sys.stderr, flush=True)


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t


def build_image(wd, size_mib):
    img = os.path.join(wd, f"disk-{size_mib}.img")
    if os.path.exists(img):
        return img
    tree = os.path.join(wd, "tree")
    shutil.rmtree(tree, ignore_errors=True)
    os.makedirs(tree)
    rnd = random.Random(14)
    with open(os.path.join(tree, "random.bin"), "wb") as f:
        left = size_mib * MiB * 5 // 8
        while left:
            n = min(left, MiB)
            f.write(rnd.randbytes(n))
            left -= n
    with open(os.path.join(tree, "numbers.txt"), "w") as f:
        f.writelines(f"{i}\n" for i in range(200_000))
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, img + ".tmp", f"{size_mib}M"],
                   check=True)
    os.rename(img + ".tmp", img)
    shutil.rmtree(tree)
    return img


def drop_caches():
    if os.geteuid() == 0:
        subprocess.run(["sync"])
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def random_reads(path, n, seed=1):
    """Median and 90th percentile of n 4 KiB preads at random aligned offsets, in ms."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        rnd = random.Random(seed)
        lat = []
        for _ in range(n):
            off = rnd.randrange(size // 4096) * 4096
            t = time.perf_counter()
            os.pread(fd, 4096, off)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.9)]


def bench_variant(imgmount, comp, decode, wd, reads):
    row = {}
    drop_caches()
    with open(os.devnull, "wb") as null:
        row["cli"] = timed(decode + [comp], stdout=null)
    cache = tempfile.mkdtemp(dir=wd, prefix="cache-")
    try:
        drop_caches()
        row["first"] = timed([imgmount, "info", "--cache-dir", cache, comp],
                             stdout=subprocess.DEVNULL)
        drop_caches()
        row["second"] = timed([imgmount, "info", "--cache-dir", cache, comp],
                              stdout=subprocess.DEVNULL)
        mnt = tempfile.mkdtemp(dir=wd, prefix="mnt-")
        try:
            drop_caches()
            subprocess.run([imgmount, "--cache-dir", cache, comp, mnt], check=True)
            try:
                # Each read lands in a piece not decoded yet in this mount (cold for the
                # decoded-piece cache; 'o direct_io' is not used, so the kernel may read ahead).
                row["read_med"], row["read_p90"] = random_reads(os.path.join(mnt, "random.bin"),
                                                                reads)
            finally:
                subprocess.run([imgmount, "umount", mnt], check=True)
            # Sequential: the whole random file through a fresh mount (decode-ahead at work).
            drop_caches()
            subprocess.run([imgmount, "--cache-dir", cache, comp, mnt], check=True)
            try:
                path = os.path.join(mnt, "random.bin")
                with open(os.devnull, "wb") as null:
                    t = timed(["cat", path], stdout=null)
                row["seq_mibs"] = os.path.getsize(path) / MiB / t
            finally:
                subprocess.run([imgmount, "umount", mnt], check=True)
        finally:
            os.rmdir(mnt)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return row


def ratarmount_row(comp_gz, wd, reads):
    rm = shutil.which("ratarmount")
    if not rm:
        return None
    row = {}
    mnt = tempfile.mkdtemp(dir=wd, prefix="mnt-")
    idx = comp_gz + ".index.sqlite"
    if os.path.exists(idx):
        os.remove(idx)
    drop_caches()
    row["first"] = timed([rm, comp_gz, mnt])
    try:
        inner = os.path.join(mnt, os.listdir(mnt)[0])
        row["read_med"], row["read_p90"] = random_reads(inner, reads)
    finally:
        subprocess.run(["fusermount3", "-u", mnt])
    row["second"] = timed([rm, comp_gz, mnt])
    subprocess.run(["fusermount3", "-u", mnt])
    os.rmdir(mnt)
    return row


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--reads", type=int, default=50)
    ap.add_argument("--workdir", default=os.path.join(REPO, "target", "bench-compressed"))
    ap.add_argument("--imgmount", default=os.path.join(REPO, "target", "release", "imgmount"))
    ap.add_argument("--only", help="comma-separated suffixes, e.g. gz,mb.xz")
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    img = build_image(a.workdir, a.size_mib)
    rows = []
    for suffix, enc, dec in VARIANTS:
        if a.only and suffix not in a.only.split(","):
            continue
        if not shutil.which(enc[0]) or not shutil.which(dec[0]):
            log(f"{suffix}: {enc[0]} or {dec[0]} not installed, left out")
            continue
        comp = f"{img}.{suffix}"
        if not os.path.exists(comp):
            log(f"writing {comp}")
            with open(img, "rb") as src, open(comp + ".tmp", "wb") as out:
                subprocess.run(enc, stdin=src, stdout=out, check=True)
            os.rename(comp + ".tmp", comp)
        log(f"{suffix}: timing")
        r = bench_variant(a.imgmount, comp, dec, a.workdir, a.reads)
        r["name"] = suffix
        r["size"] = os.path.getsize(comp)
        log(f"{suffix}: {r}")
        rows.append(r)
        if suffix == "gz":
            rr = ratarmount_row(comp, a.workdir, a.reads)
            if rr:
                rr["name"] = "gz (ratarmount)"
                rr["size"] = r["size"]
                rr["cli"] = r["cli"]
                rows.append(rr)
    print(f"\n{a.size_mib} MiB ext4 image, {a.size_mib * 5 // 8} MiB of it a random file; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}.\n")
    print("| file | compressed | CLI -dc | first open | ×CLI | second open | "
          "4 KiB read median | p90 | sequential |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['size'] / MiB:.0f} MiB | {r['cli']:.2f} s | {r['first']:.2f} s"
              f" | {r['first'] / r['cli']:.2f} | {r['second'] * 1000:.0f} ms"
              f" | {r['read_med']:.2f} ms | {r['read_p90']:.2f} ms"
              f" | {r.get('seq_mibs', 0):.0f} MiB/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
