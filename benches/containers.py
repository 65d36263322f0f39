#!/usr/bin/env python3
"""Virtual-disk containers side by side (issue 13's Performance section).

One ext4 disk (a random file, a compressible text file, a small-file tree and a file deep
inside it) as a raw image and converted into qcow2 (plain, deflate, zstd), VMDK
(monolithicSparse, streamOptimized), VHD, VHDX, VDI and Android sparse. Three parts:

1. `reads`: cold sequential reads, cold 4 KiB random reads, find and walk through
   `imgmount IMG MNT` for every format (and the kernel's loop mount of the raw image, for
   scale), interleaved, medians, ratios to imgmount over the raw image.
2. `qemu`: compressed sequential reads against QEMU's own reader: `qemu-img convert` of the
   text file alone, as that compressed container, to a null target (single process, cold),
   against reading the same text through the mount.
3. `alternatives`: what a user has today against imgmount: time from nothing (cold cache, no
   mount) to the bytes of the deep file, and the disk space each way uses: qemu-img convert to
   raw then a kernel loop mount or imgmount; qemu-nbd behind nbdfuse then a loop mount or
   imgmount of the FUSE file; imgmount of the container; `imgmount cat` without a mount.

A benchmark, not a test: it exits 0 whatever the numbers are. Needs root (loop mounts,
drop_caches); nbdfuse is optional (Debian package libnbd-bin).
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (shared helpers: mkfs, cache dropping, mount waiting)

MiB = compare.MiB
SEED = 20261206
SIZES = {
    "quick": dict(big=64 * MiB, text=64 * MiB, files=5000, dirs=50, preads=300),
    "full": dict(big=compare.GiB, text=compare.GiB, files=100_000, dirs=1000, preads=2000),
}
DEEP = "deep/" + "/".join(f"level{i}" for i in range(12)) + "/needle.txt"

# name: (converter command with SRC/DST, file suffix). "raw" is the ext4 image itself.
FORMATS = {
    "raw": (None, "img"),
    "qcow2": (["qemu-img", "convert", "-O", "qcow2", "SRC", "DST"], "qcow2"),
    "qcow2-zlib": (["qemu-img", "convert", "-c", "-O", "qcow2", "SRC", "DST"], "zlib.qcow2"),
    "qcow2-zstd": (["qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "SRC", "DST"],
                   "zstd.qcow2"),
    "vmdk": (["qemu-img", "convert", "-O", "vmdk", "SRC", "DST"], "vmdk"),
    "vmdk-stream": (["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "SRC", "DST"],
                    "stream.vmdk"),
    "vhd": (["qemu-img", "convert", "-O", "vpc", "-o", "subformat=dynamic", "SRC", "DST"], "vhd"),
    "vhdx": (["qemu-img", "convert", "-O", "vhdx", "SRC", "DST"], "vhdx"),
    "vdi": (["qemu-img", "convert", "-O", "vdi", "SRC", "DST"], "vdi"),
    "simg": (["img2simg", "SRC", "DST"], "simg"),
}
COMPRESSED = ["qcow2-zlib", "qcow2-zstd", "vmdk-stream"]
QEMU_FMT = {"qcow2": "qcow2", "qcow2-zlib": "qcow2", "qcow2-zstd": "qcow2"}
ROWS = [
    ("seq-big", "sequential read of big.bin (random bytes: stored uncompressed everywhere)"),
    ("seq-text", "sequential read of text.bin (compressible: compressed clusters in the compressed formats)"),
    ("pread-big", "4 KiB preads at distinct random places in big.bin"),
    ("pread-text", "4 KiB preads at distinct random places in text.bin"),
    ("find", "find tree -type f"),
    ("walk", "os.walk + lstat of tree"),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def text_block(rng, words, size):
    """Word salad: deflate compresses it about 1.7:1 (zstd 2.4:1), so every cluster is stored compressed."""
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choices(words, k=2048)) + "\n").encode()
    return bytes(out[:size])


def build(wd, sz):
    img_dir = os.path.join(wd, "images")
    stamp = os.path.join(img_dir, "stamp")
    key = repr(sorted(sz.items())) + DEEP
    if os.path.exists(stamp) and open(stamp).read() == key:
        return img_dir
    shutil.rmtree(img_dir, ignore_errors=True)
    os.makedirs(img_dir)
    src = os.path.join(wd, "src")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    t0 = time.perf_counter()
    compare.write_big_file(os.path.join(src, "big.bin"), sz["big"])
    rng = random.Random(SEED)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 11))) for _ in range(3000)]
    with open(os.path.join(src, "text.bin"), "wb") as f:
        for _ in range(sz["text"] // MiB):
            f.write(text_block(rng, words, MiB))
    # The text alone as a disk, for the qemu-img reference (part 2).
    shutil.copyfile(os.path.join(src, "text.bin"), os.path.join(img_dir, "text.img"))
    compare.write_tree(os.path.join(src, "tree"), sz["files"], sz["dirs"])
    deep = os.path.join(src, DEEP)
    os.makedirs(os.path.dirname(deep))
    with open(deep, "wb") as f:
        f.write(b"the needle\n" * 100)
    data = sz["big"] + sz["text"] + sz["files"] * 4096
    size = compare.round_up(int(data * 1.25) + 256 * MiB, MiB)
    compare.mkfs_ext4(os.path.join(img_dir, "ext.img"), size, src=src)
    shutil.rmtree(src)
    log(f"  ext.img ({compare.human_bytes(size)}) built in {time.perf_counter() - t0:.1f} s")
    with open(stamp, "w") as f:
        f.write(key)
    return img_dir


def image(img_dir, fmt, base="ext"):
    return os.path.join(img_dir, f"{base}.{FORMATS[fmt][1]}")


def convert(img_dir, formats):
    """The containers asked for, made once from ext.img (and text.img for the compressed ones):
    at full size each is about as large as the data, so only those a run needs."""
    for name in formats:
        cmd = FORMATS[name][0]
        if cmd is None:
            continue
        if not shutil.which(cmd[0]):
            raise SystemExit(f"{name}: {cmd[0]} is not installed")
        t0 = time.perf_counter()
        for base in ("ext", "text") if name in COMPRESSED else ("ext",):
            dst = image(img_dir, name, base)
            if not os.path.exists(dst):
                run([{"SRC": os.path.join(img_dir, base + ".img"), "DST": dst + ".tmp"}.get(a, a) for a in cmd],
                    capture_output=True)
                os.rename(dst + ".tmp", dst)
        log(f"  {name}: ready in {time.perf_counter() - t0:.1f} s")


def mount(imgmount, tool, img, mnt):
    os.makedirs(mnt, exist_ok=True)
    parent = os.stat(os.path.dirname(mnt)).st_dev
    cmd = ["mount", "-o", "loop,ro", img, mnt] if tool == "kernel" else [imgmount, img, mnt]
    run(cmd, capture_output=True, timeout=120)
    compare.wait_mounted(mnt, parent, 5)


def umount(imgmount, tool, mnt):
    if tool == "kernel":
        run(["umount", mnt], capture_output=True)
    else:
        pid = compare.find_daemon(mnt)
        run([imgmount, "umount", mnt], capture_output=True)
        while pid and compare.pid_alive(pid):
            time.sleep(0.002)


def read_all(path, bufsize=MiB):
    fd = os.open(path, os.O_RDONLY)
    buf = bytearray(bufsize)
    total = 0
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    return total


def preads(path, n):
    """n 4 KiB reads at distinct 64 KiB-aligned places (each one a different qcow2 cluster), each
    at a random 4 KiB offset within its 64 KiB."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = os.fstat(fd).st_size // (64 * 1024)
        rng = random.Random(SEED + 7)
        for c in rng.sample(range(chunks), min(n, chunks)):
            off = c * 64 * 1024 + rng.randrange(16) * 4096
            if len(os.pread(fd, 4096, off)) != 4096:
                raise RuntimeError("short pread")
    finally:
        os.close(fd)
    return min(n, chunks)


def workload(row, root, sz):
    if row == "seq-big":
        return read_all(os.path.join(root, "big.bin"))
    if row == "seq-text":
        return read_all(os.path.join(root, "text.bin"))
    if row == "pread-big":
        return preads(os.path.join(root, "big.bin"), sz["preads"])
    if row == "pread-text":
        return preads(os.path.join(root, "text.bin"), sz["preads"])
    if row == "find":
        out = run(["find", "tree", "-type", "f"], cwd=root, capture_output=True).stdout
        return out.count(b"\n")
    if row == "walk":
        n = 0
        for d, dirs, files in os.walk(os.path.join(root, "tree")):
            for name in dirs + files:
                os.lstat(os.path.join(d, name))
                n += 1
        return n
    raise ValueError(row)


def part_reads(imgmount, img_dir, wd, sz, tools, rows, runs):
    """{row: {tool: [seconds]}}, cold: a fresh mount and dropped caches before each run."""
    res = {r: {t: [] for t in tools} for r in rows}
    counts = {}
    for r in rows:
        for i in range(runs):
            for t in tools:
                img = image(img_dir, "raw" if t == "kernel" else t)
                mnt = os.path.join(wd, "mnt", t)
                mount(imgmount, t, img, mnt)
                try:
                    compare.drop_caches([img])
                    t0 = time.perf_counter()
                    n = workload(r, mnt, sz)
                    res[r][t].append(time.perf_counter() - t0)
                finally:
                    umount(imgmount, t, mnt)
                if counts.setdefault(r, n) != n:
                    raise RuntimeError(f"{t} {r}: counted {n}, others {counts[r]}")
        log(f"  {r}: " + ", ".join(f"{t} {statistics.median(v):.3f}" for t, v in res[r].items()))
    return res, counts


def part_qemu(imgmount, img_dir, wd, runs):
    """[(format, qemu-img seconds for text.bin's container, imgmount seconds reading text.bin)],
    the two interleaved run by run so that the machine's load hits both alike."""
    size = os.path.getsize(os.path.join(img_dir, "text.img"))
    times = {t: ([], []) for t in COMPRESSED}
    for _ in range(runs):
        for t in COMPRESSED:
            img = image(img_dir, t, "text")
            compare.drop_caches([img])
            t0 = time.perf_counter()
            run(["qemu-img", "convert", "-n", "--target-image-opts", img, f"driver=null-co,size={size}"],
                capture_output=True)
            times[t][0].append(time.perf_counter() - t0)
            img = image(img_dir, t)
            mnt = os.path.join(wd, "mnt", t)
            mount(imgmount, t, img, mnt)
            try:
                compare.drop_caches([img])
                t0 = time.perf_counter()
                read_all(os.path.join(mnt, "text.bin"))
                times[t][1].append(time.perf_counter() - t0)
            finally:
                umount(imgmount, t, mnt)
    out = [(t, statistics.median(q), statistics.median(o)) for t, (q, o) in times.items()]
    log("  qemu: " + ", ".join(f"{t} {q:.3f}/{o:.3f}" for t, q, o in out))
    return out, size


def allocated(path):
    return os.stat(path).st_blocks * 512


def first_byte(method, imgmount, img, fmt, wd):
    """Seconds from a cold cache to the deep file's bytes, and the bytes of disk that way uses."""
    mnt = os.path.join(wd, "mnt", "alt")
    nbd_dir = os.path.join(wd, "mnt", "nbd")
    raw = os.path.join(wd, "alt-raw.img")
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(nbd_dir, exist_ok=True)
    compare.drop_caches([img])
    space, nbd, mounted = 0, None, None
    t0 = time.perf_counter()
    try:
        if method == "imgmount cat":
            data = run([imgmount, "cat", img, "/" + DEEP], capture_output=True).stdout
        else:
            if method.startswith("convert"):
                run(["qemu-img", "convert", "-f", QEMU_FMT[fmt], "-O", "raw", img, raw], capture_output=True)
                dev = raw
            elif method.startswith("nbdfuse"):
                nbd = subprocess.Popen(["nbdfuse", "-r", nbd_dir, "[", "qemu-nbd", "-r", "-f", QEMU_FMT[fmt],
                                        img, "]"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                dev = os.path.join(nbd_dir, "nbd")
                deadline = time.monotonic() + 30
                while not (os.path.exists(dev) and os.path.getsize(dev) > 0):
                    if nbd.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"nbdfuse did not start: {nbd.stderr.read()[-300:]!r}")
                    time.sleep(0.001)
            else:
                dev = img
            mounted = "kernel" if method.endswith("kernel") else "imgmount"
            mount(imgmount, mounted, dev, mnt)
            with open(os.path.join(mnt, DEEP), "rb") as f:
                data = f.read()
        secs = time.perf_counter() - t0
        if not data.startswith(b"the needle"):
            raise RuntimeError(f"{method}: wrong bytes")
        if os.path.exists(raw):
            space = allocated(raw)
    finally:
        if mounted:
            umount(imgmount, mounted, mnt)
        if nbd:
            run(["fusermount3", "-u", nbd_dir], capture_output=True)
            nbd.wait(timeout=30)
        if os.path.exists(raw):
            os.unlink(raw)
    return secs, space


def part_alternatives(imgmount, img_dir, wd, runs, formats):
    methods = ["convert + kernel", "convert + imgmount"]
    if shutil.which("nbdfuse") and shutil.which("qemu-nbd"):
        methods += ["nbdfuse + kernel", "nbdfuse + imgmount"]
    methods += ["imgmount", "imgmount cat"]
    res = {}
    for fmt in formats:
        img = image(img_dir, fmt)
        for _ in range(runs):
            for m in methods:
                secs, space = first_byte(m, imgmount, img, fmt, wd)
                res.setdefault((fmt, m), []).append((secs, space))
        log(f"  alternatives {fmt} done")
    return methods, res


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 MiB files, 5,000-file tree (a few minutes)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--parts", default="reads,qemu,alternatives")
    p.add_argument("--rows", default=",".join(r for r, _ in ROWS))
    p.add_argument("--formats", default=",".join(FORMATS), help="also: kernel")
    p.add_argument("--alt-formats", default="qcow2,qcow2-zstd", help="containers of the alternatives part")
    p.add_argument("--workdir", default=os.path.join(compare.REPO, "target", "bench-containers"))
    p.add_argument("--imgmount", help="imgmount binary (default: cargo build --release)")
    a = p.parse_args(argv)
    bad = [f for f in a.formats.split(",") if f != "kernel" and f not in FORMATS]
    bad += [r for r in a.rows.split(",") if r not in dict(ROWS)]
    bad += [x for x in a.parts.split(",") if x not in ("reads", "qemu", "alternatives")]
    bad += [f for f in a.alt_formats.split(",") if f not in QEMU_FMT]
    if bad:
        p.error(f"unknown formats, rows or parts: {bad}")
    if os.geteuid() != 0:
        raise SystemExit("needs root (loop mounts, drop_caches)")
    size_name = "quick" if a.quick else "full"
    sz = SIZES[size_name]
    wd = os.path.join(os.path.abspath(a.workdir), size_name)
    os.makedirs(wd, exist_ok=True)
    imgmount = compare.build_imgmount(a)
    compare.cleanup_mounts(os.path.join(wd, "mnt"), imgmount)
    parts = a.parts.split(",")
    load0 = open("/proc/loadavg").read().split()[:3]
    img_dir = build(wd, sz)
    formats = [f for f in a.formats.split(",") if f != "kernel"]
    alt_formats = a.alt_formats.split(",")
    needed = set(formats) & set(FORMATS) if "reads" in parts else set()
    if "qemu" in parts:
        needed |= set(COMPRESSED)
    if "alternatives" in parts:
        needed |= set(alt_formats)
    convert(img_dir, [f for f in FORMATS if f in needed])
    lines = [f"benches/containers.py, {size_name} size, {a.runs} runs, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
             f"load average at start {' '.join(load0)}"]
    ext_size = os.path.getsize(image(img_dir, "raw"))
    lines.append("")
    lines.append("| image | file size |")
    lines.append("|---|---|")
    for f in FORMATS:
        if os.path.exists(image(img_dir, f)):
            lines.append(f"| {f} | {compare.human_bytes(os.path.getsize(image(img_dir, f)))} |")
    try:
        if "reads" in parts:
            tools = [t for t in a.formats.split(",") if t == "kernel" or t in FORMATS]
            rows = a.rows.split(",")
            reads, counts = part_reads(imgmount, img_dir, wd, sz, tools, rows, a.runs)
            lines += ["", "Cold (fresh mount, caches dropped), median seconds; ×raw = / imgmount over the raw image:",
                      "", "| row | " + " | ".join(tools) + " |", "|---|" + "---|" * len(tools)]
            for r in rows:
                raw = statistics.median(reads[r]["raw"]) if "raw" in reads[r] else None
                cells = []
                for t in tools:
                    med = statistics.median(reads[r][t])
                    if r.startswith("pread"):
                        cell = f"{med * 1000 / counts[r]:.3f} ms"
                    else:
                        cell = f"{med:.3f}"
                    if raw and t != "raw":
                        cell += f" (×{med / raw:.2f})"
                    cells.append(cell)
                lines.append(f"| {r} | " + " | ".join(cells) + " |")
            lines.append("")
            lines += [f"- {r}: {d}" + (f" ({counts[r]:,} reads; cells are per read)" if r.startswith("pread") else "")
                      for r, d in ROWS if r in rows]
        if "qemu" in parts:
            q, size = part_qemu(imgmount, img_dir, wd, a.runs)
            lines += ["", f"Compressed sequential read against qemu-img convert of text.bin ({compare.human_bytes(size)}) "
                      "alone, as that container, to null-co (cold, median):", "",
                      "| format | qemu-img convert | MB/s | imgmount read of text.bin | MB/s | imgmount ÷ qemu-img throughput |",
                      "|---|---|---|---|---|---|"]
            for t, qs, ours in q:
                lines.append(f"| {t} | {qs:.3f} s | {size / qs / 1e6:.0f} | {ours:.3f} s | {size / ours / 1e6:.0f} "
                             f"| {qs / ours:.2f} |")
        if "alternatives" in parts:
            methods, res = part_alternatives(imgmount, img_dir, wd, a.runs, alt_formats)
            lines += ["", f"From nothing (cold cache, nothing mounted) to the bytes of /{DEEP} of ext "
                      f"({compare.human_bytes(ext_size)} disk), median seconds, and the extra disk space used:", "",
                      "| way | " + " | ".join(f"{f} s | {f} extra space" for f in alt_formats) + " |",
                      "|---|" + "---|---|" * len(alt_formats)]
            for m in methods:
                cells = []
                for f in alt_formats:
                    v = res[(f, m)]
                    cells.append(f"{statistics.median(s for s, _ in v):.3f}")
                    sp = max(sp for _, sp in v)
                    cells.append(f"{compare.human_bytes(sp)} (of {compare.human_bytes(ext_size)} apparent)" if sp else "0")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
    finally:
        compare.cleanup_mounts(os.path.join(wd, "mnt"), imgmount)
    lines += ["", f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
