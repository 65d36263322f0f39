#!/usr/bin/env python3
"""Copy-on-write overlay benchmarks (docs/cow.md), the rows issue 16 asks for, side by side
with their baselines. A benchmark, not a test: it prints a markdown table and exits 0.

    sudo python3 benches/cow.py [--size-mib 256] [--runs 3] [--imgmount target/release/imgmount]
                                [--store-ext .cow|.qcow2] [--chunk SIZE]

Rows (median of --runs):
  read      cat a file of unchanged data: through -o cow=FILE vs the same mount without cow
  write     write a file of --size-mib in 1 MiB writes and unmount: -o cow=FILE vs -o rw (same image), the
            kernel's loop mount of the same image writing it (ext only: this kernel has no vfat),
            and dd of the same bytes into a raw file with conv=fsync (the disk's own pace)
  merge     imgmount merge of --size-mib of changed chunks vs cp --sparse=always of the store
  mount     mount + first stat with a store holding --size-mib of exceptions vs without
The store is dm-snapshot's (--store-ext .cow, the default) or qcow2 (--store-ext .qcow2);
--chunk passes -o chunk=SIZE for the new stores.
--fs picks the filesystem inside the image: fat (FAT32, the default) or ext (ext4).
Needs root (FUSE mounts as the tests do, kernel loop mounts), mkfs.vfat / mkfs.ext4.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def copy_in_mib(src, dst):
    """Writes as compare.py's write row and `dd bs=1M` do. (shutil.copyfile's sendfile reaches a
    FUSE file as 4 KiB requests, each a round trip, and under cow a read-modify-write of the
    origin's chunk.)"""
    with open(src, "rb") as i, open(dst, "wb") as o:
        while True:
            b = i.read(1 << 20)
            if not b:
                return
            o.write(b)


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--imgmount", default=os.path.join(REPO, "target/release/imgmount"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--store-ext", default=".cow")
    ap.add_argument("--chunk", default=None)
    ap.add_argument("--fs", choices=("fat", "ext"), default="fat")
    a = ap.parse_args()
    if not os.path.exists(a.imgmount):
        run(["cargo", "build", "--release"], cwd=REPO)
    im = a.imgmount
    size = a.size_mib << 20
    wd = a.workdir or tempfile.mkdtemp(prefix="imgmount-cow-bench-", dir="/var/tmp")
    os.makedirs(wd, exist_ok=True)
    img = os.path.join(wd, a.fs + ".img")
    mnt = os.path.join(wd, "mnt")
    os.makedirs(mnt, exist_ok=True)
    payload = os.path.join(wd, "payload.bin")
    with open(payload, "wb") as f:
        f.write(os.urandom(size))

    def fresh_image():
        if os.path.exists(img):
            os.unlink(img)
        with open(img, "wb") as f:
            f.truncate(size * 3 + (64 << 20))
        if a.fs == "fat":
            run(["mkfs.vfat", "-F", "32", "-s", "8", img])
        else:
            run(["mkfs.ext4", "-q", "-F", img])

    def cow_opt(store):
        return "cow=" + store + ("" if a.chunk is None else ",chunk=" + a.chunk)

    def mount(*opts):
        run([im, img, mnt] + [x for o in opts for x in ("-o", o)])

    def umount():
        run([im, "umount", mnt])

    rows = []

    # read: unchanged data through the overlay vs without it.
    fresh_image()
    mount("rw")
    shutil.copyfile(payload, os.path.join(mnt, "big.bin"))
    umount()
    store = os.path.join(wd, "s" + a.store_ext)
    plain, cow = [], []
    for _ in range(a.runs):
        for kind, out in (("plain", plain), ("cow", cow)):
            if os.path.exists(store):
                os.unlink(store)
            mount("ro") if kind == "plain" else mount(cow_opt(store))
            drop_caches()
            out.append(timed(lambda: subprocess.run(
                ["cat", os.path.join(mnt, "big.bin")], stdout=subprocess.DEVNULL, check=True)))
            umount()
    rows.append(("read %d MiB unchanged (cold)" % a.size_mib, "cow=FILE", median(cow), "no cow", median(plain)))

    # write: through the overlay vs -o rw, plus dd to a raw file.
    rw, cw, dd, kern = [], [], [], []
    kmnt = os.path.join(wd, "kmnt")
    os.makedirs(kmnt, exist_ok=True)
    for _ in range(a.runs):
        fresh_image()
        mount("rw")
        rw.append(timed(lambda: (copy_in_mib(payload, os.path.join(mnt, "w.bin")), umount())))
        if a.fs == "ext":
            # Before the cow run: the last run's store must belong to the image the mount rows
            # use. The loop device's umount leaves the image's pages dirty in the host cache;
            # the fsync makes it as durable as imgmount's unmount.
            fresh_image()
            run(["mount", "-o", "loop", img, kmnt])
            kern.append(timed(lambda: (copy_in_mib(payload, os.path.join(kmnt, "w.bin")),
                                       run(["umount", kmnt]), fsync_path(img))))
        fresh_image()
        if os.path.exists(store):
            os.unlink(store)
        mount(cow_opt(store))
        cw.append(timed(lambda: (copy_in_mib(payload, os.path.join(mnt, "w.bin")), umount())))
        raw = os.path.join(wd, "raw.bin")
        dd.append(timed(lambda: run(["dd", "if=" + payload, "of=" + raw, "bs=1M", "conv=fsync,notrunc"])))
    rows.append(("write %d MiB + umount" % a.size_mib, "cow=FILE", median(cw), "-o rw", median(rw)))
    if kern:
        rows.append(("write %d MiB + umount" % a.size_mib, "cow=FILE", median(cw), "kernel mount", median(kern)))
    rows.append(("write %d MiB + umount" % a.size_mib, "cow=FILE", median(cw), "dd conv=fsync", median(dd)))

    # mount latency with a store full of exceptions (the store from the last write run).
    lat_cow, lat_plain = [], []
    for _ in range(a.runs):
        drop_caches()
        lat_cow.append(timed(lambda: (mount(cow_opt(store)), os.stat(os.path.join(mnt, "w.bin")))))
        umount()
        drop_caches()
        lat_plain.append(timed(lambda: (mount("ro"), os.listdir(mnt))))
        umount()
    used = os.path.getsize(store)
    rows.append(("mount, store of %d MiB" % (used >> 20), "cow=FILE", median(lat_cow), "no cow", median(lat_plain)))

    # merge of the changed chunks vs cp --sparse=always of the store.
    mg, cp = [], []
    base_img = os.path.join(wd, "base.img")
    base_store = os.path.join(wd, "base" + a.store_ext)
    # copy2 keeps the image's mtime, which the store records.
    shutil.copy2(img, base_img)
    shutil.copyfile(store, base_store)
    for _ in range(a.runs):
        shutil.copy2(base_img, img)
        shutil.copyfile(base_store, store)
        drop_caches()
        mg.append(timed(lambda: run([im, "merge", img, store])))
        drop_caches()
        cp.append(timed(lambda: run(["sh", "-c", "cp --sparse=always %s %s/cp.out && sync -f %s/cp.out" % (base_store, wd, wd)])))
    rows.append(("merge %d MiB of chunks" % (used >> 20), "imgmount merge", median(mg), "cp --sparse=always", median(cp)))

    print("| row | imgmount | s | baseline | s | ratio |")
    print("|---|---|---:|---|---:|---:|")
    for name, t1, s1, t2, s2 in rows:
        print("| %s | %s | %.3f | %s | %.3f | %.2f |" % (name, t1, s1, t2, s2, s1 / s2 if s2 else float("nan")))
    if not a.workdir:
        shutil.rmtree(wd, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
