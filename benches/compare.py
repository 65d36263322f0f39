#!/usr/bin/env python3
"""Side-by-side benchmark: imgmount against the kernel's loop mount, fuse2fs, fusefat, mtools,
squashfuse_ll and fuseiso.

Builds its images once (cached in the work directory), runs every workload interleaved across
the tools (A/B/A/B), and prints a markdown table of medians, ratios to the kernel and the peak
RSS of each serving process. Also writes the results as JSON. See benches/README.md.

This is a benchmark, not a test: it exits 0 whatever the numbers are.
"""

import argparse
import hashlib
import inspect
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
GiB = 1 << 30

SIZES = {
    "full": dict(
        big=GiB, ext_files=100_000, ext_dirs=1000, fat_files=20_000, fat_dirs=200,
        bigdir=100_000, stats=1000, preads=20_000, write=GiB, create=5000,
        lat_small=GiB, lat_big=64 * GiB, timeout=600, untar_files=10_000, untar_dirs=100,
        fsyncs=1000,
    ),
    "quick": dict(
        big=64 * MiB, ext_files=5000, ext_dirs=50, fat_files=1000, fat_dirs=10,
        bigdir=5000, stats=500, preads=5000, write=64 * MiB, create=1000,
        lat_small=GiB, lat_big=64 * GiB, timeout=15, untar_files=1000, untar_dirs=10,
        fsyncs=200,
    ),
}

# The entries of SIZES that the images depend on (the rest only steer the runs).
IMAGE_SIZES = ("big", "ext_files", "ext_dirs", "fat_files", "fat_dirs", "bigdir", "write",
               "lat_small", "lat_big")

SEED = 20261122
FAKE_TIME = "1700000000"
EXT_UUID = "6b1f6f1e-5d0e-4b43-9a55-0c1d2e3f4a5b"
FAT_SERIAL = "1234ABCD"

# Workload rows, in the order printed. kind: "read" rows run cold and warm; "write" rows time
# the writes plus unmount plus fsync of the image; "latency" rows time the mount itself.
WORKLOADS = [
    ("seqread", "read", "sequential read of big.bin"),
    ("pread", "read", "random 4 KiB preads in big.bin"),
    ("find", "read", "find -type f over the tree"),
    ("walk", "read", "os.walk + lstat of every entry"),
    ("tar", "read", "tar cf - . | wc -c over the tree"),
    ("bigdir", "read", "stat() of random names in one big directory"),
    ("write", "write", "write big file, unmount, fsync image"),
    ("create", "write", "create small files, unmount, fsync image"),
    ("untar", "write", "tar x of a small-file tree, unmount, fsync image"),
    ("rmrf", "write", "rm -rf of that tree, unmount, fsync image"),
    ("fsyncs", "write", "write 4 KiB + fsync, many times, unmount, fsync image"),
    ("latency", "latency", "mount latency (command start to mounted root)"),
    ("run", "cycle", "mount, run `true` inside, unmount (imgmount: `imgmount run IMG -- true`)"),
]
# imgmount over ext.img converted once into a container (issues 13/14): opt-in columns
# (--tools imgmount,qcow2,imgmount-vhd,...), ext4 read rows only. The value is the converter's
# command line, with SRC and DST; CONTAINER_EXT names the converted file.
CONTAINER_TOOLS = {
    "qcow2": ["qemu-img", "convert", "-O", "qcow2", "SRC", "DST"],
    "qcow2-zlib": ["qemu-img", "convert", "-c", "-O", "qcow2", "SRC", "DST"],
    "qcow2-zstd": ["qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", "SRC", "DST"],
    "vmdk-stream": ["qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "SRC", "DST"],
    "imgmount-vmdk": ["qemu-img", "convert", "-O", "vmdk", "SRC", "DST"],
    "imgmount-vhd": ["qemu-img", "convert", "-O", "vpc", "-o", "subformat=dynamic", "SRC", "DST"],
    "imgmount-vhdx": ["qemu-img", "convert", "-O", "vhdx", "SRC", "DST"],
    "imgmount-vdi": ["qemu-img", "convert", "-O", "vdi", "SRC", "DST"],
    "imgmount-simg": ["img2simg", "SRC", "DST"],
}
CONTAINER_EXT = {
    "qcow2": "qcow2", "qcow2-zlib": "zlib.qcow2", "qcow2-zstd": "zstd.qcow2", "vmdk-stream": "stream.vmdk",
    "imgmount-vmdk": "vmdk", "imgmount-vhd": "vhd", "imgmount-vhdx": "vhdx", "imgmount-vdi": "vdi", "imgmount-simg": "simg",
}
DEFAULT_TOOLS = ["kernel", "imgmount", "fuse2fs", "fusefat", "mtools", "squashfuse_ll", "fuseiso"]
ALL_TOOLS = DEFAULT_TOOLS + list(CONTAINER_TOOLS)
SERVING = ["imgmount", "fuse2fs", "fusefat", "squashfuse_ll", "fuseiso"] + list(CONTAINER_TOOLS)

# Which tools serve which filesystem. FAT rows compare with the kernel reading an ext4 twin of
# the same content: this kernel has no vfat module.
TOOLS_FOR = {"ext": ["kernel", "imgmount", "fuse2fs"] + list(CONTAINER_TOOLS), "fat": ["kernel", "imgmount", "fusefat", "mtools"]}
# squashfs images of the ext tree and big.bin (read rows only): the kernel mounts them too.
SQUASHFS = {"sqzstd": "zstd", "sqxz": "xz"}
TOOLS_FOR.update({fs: ["kernel", "imgmount", "squashfuse_ll"] for fs in SQUASHFS})
SQUASHFS_WORKLOADS = {"seqread", "pread", "find", "walk", "tar"}
TOOLS_FOR["erofs"] = ["kernel", "imgmount"]
# An ISO 9660 image (Rock Ridge + Joliet) of the squashfs images' content. The kernel here has no
# iso9660 module, so, as in the FAT rows, its column reads a twin of the same content: an
# uncompressed EROFS image (read-only, files contiguous, like the ISO). Both are built by
# build_iso_group, outside build_image_group (see ensure_images).
ISO_IMAGE, ISO_TWIN = "tree.iso", "iso-twin-erofs.img"  # mount_cmd: "erofs.img" means EROFS
TOOLS_FOR["iso"] = ["kernel", "imgmount", "fuseiso"]
# The read-only filesystems: read rows, and latency rows (issue 15) on a small image built by
# build_ro_latency_image and on the filesystem's read-row image.
RO_FS = ("erofs", *SQUASHFS, "iso")
# The read-only images that hold only big.bin and tree/: the SQUASHFS_WORKLOADS read rows.
TREE_ONLY_FS = (*SQUASHFS, "iso")
# The small read-only latency image's tree: a few directories of small files and one file.
RO_LAT_FILES, RO_LAT_DIRS, RO_LAT_BIG = 100, 4, MiB
WRITE_TOOLS_FOR = {"ext": ["kernel", "imgmount", "fuse2fs"], "fat": ["kernel", "imgmount", "fusefat"]}
# The write rows of issue 12 that only ext has (their images come from write_fixtures).
EXT_ONLY_WRITES = {"untar", "rmrf", "fsyncs"}
MTOOLS_WORKLOADS = {"seqread", "find"}


# The workload process running now: an interrupt kills it first so that it holds no files
# open on the mounts that the cleanup is about to unmount.
CHILD = None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, **kw)


def is_root():
    return os.geteuid() == 0


# --------------------------------------------------------------------------------------------
# Content generation (deterministic from SEED, shared by the builder and the workers)
# --------------------------------------------------------------------------------------------


def tree_layout(n_files, n_dirs):
    """(dir name, file name, size) of every small file, spread evenly over the directories."""
    rng = random.Random(SEED + n_files)
    out = []
    for i in range(n_files):
        d = f"d{i % n_dirs:04d}"
        out.append((d, f"f{i:06d}.dat", rng.randint(64, 4096)))
    return out


def bigdir_name(i):
    return f"entry-{i:06d}"


def write_big_file(path, size):
    rng = random.Random(SEED)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def write_tree(root, n_files, n_dirs):
    rng = random.Random(SEED + 1)
    made = set()
    for d, name, size in tree_layout(n_files, n_dirs):
        if d not in made:
            os.makedirs(os.path.join(root, d), exist_ok=True)
            made.add(d)
        with open(os.path.join(root, d, name), "wb") as f:
            f.write(rng.randbytes(size))


def write_bigdir(root, n):
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        # Empty files: the workload is about name lookup, not data.
        os.close(os.open(os.path.join(root, bigdir_name(i)), os.O_CREAT | os.O_WRONLY, 0o644))


# --------------------------------------------------------------------------------------------
# Image building (cached: the key covers the sizes and the code that builds them)
# --------------------------------------------------------------------------------------------


def mkfs_ext4(img, size, src=None, inodes=None, lazy=False):
    if os.path.exists(img):
        os.unlink(img)
    with open(img, "wb") as f:
        f.truncate(size)
    ext_opts = f"hash_seed={EXT_UUID},root_owner=0:0"
    if not lazy:
        # Zeroed inode tables now, so a rw kernel mount starts no ext4lazyinit thread that
        # would write in the background of the measurements.
        ext_opts += ",lazy_itable_init=0,lazy_journal_init=0"
    cmd = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-U", EXT_UUID, "-E", ext_opts]
    if inodes:
        cmd += ["-N", str(inodes)]
    if src:
        cmd += ["-d", src]
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=FAKE_TIME)
    run(cmd + [img], env=env, stdout=subprocess.DEVNULL)
    if src:
        # mkfs -d leaves every directory linear; a directory the kernel filled would be
        # hash-indexed, so index them (-D) as it would. Exit status 1 means "fixed things".
        r = run(["e2fsck", "-fyD", img], env=env, check=False, capture_output=True, text=True)
        if r.returncode not in (0, 1):
            raise RuntimeError(f"e2fsck -fyD {img} exited with {r.returncode}: {tail(r.stdout + r.stderr)}")


def mkfs_fat32(img, size):
    if os.path.exists(img):
        os.unlink(img)
    with open(img, "wb") as f:
        f.truncate(size)
    run(["mkfs.vfat", "-F", "32", "-S", "512", "-s", "8", "-i", FAT_SERIAL, "-n", "BENCH",
         "--invariant", img], stdout=subprocess.DEVNULL)


def round_up(n, to):
    return (n + to - 1) // to * to


def ext_image_geometry(sz):
    """Size and inode count of ext.img, which holds every source-tree file."""
    n_small = sz["ext_files"] + sz["fat_files"]
    data = sz["big"] + n_small * 4096 + sz["bigdir"] * 64
    inodes = round_up(int((n_small + sz["bigdir"] + sz["ext_dirs"] + sz["fat_dirs"]) * 1.2) + 4096, 4096)
    return round_up(int(data * 1.25) + inodes * 256 + 256 * MiB, MiB), inodes


def write_source_tree(src, sz):
    """big.bin, tree/ (ext tree), treefat/ (the FAT tree's ext4 twin), bigdir/: what the
    read-row images hold."""
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    t0 = time.perf_counter()
    write_big_file(os.path.join(src, "big.bin"), sz["big"])
    write_tree(os.path.join(src, "tree"), sz["ext_files"], sz["ext_dirs"])
    write_tree(os.path.join(src, "treefat"), sz["fat_files"], sz["fat_dirs"])
    write_bigdir(os.path.join(src, "bigdir"), sz["bigdir"])
    log(f"  generated the source tree in {time.perf_counter() - t0:.1f} s")


def build_image_group(group, img_dir, src, sz):
    """Builds one group of images (see IMAGE_GROUPS); `src` is the source tree for the groups
    that copy it."""
    t0 = time.perf_counter()
    if group == "ext":
        ext_size, inodes = ext_image_geometry(sz)
        mkfs_ext4(os.path.join(img_dir, "ext.img"), ext_size, src=src, inodes=inodes)
        log(f"  mkfs.ext4 -d: {time.perf_counter() - t0:.1f} s")
    elif group == "erofs":
        # The same content as ext.img in EROFS (LZ4HC; big.bin is random, so it is stored in
        # uncompressed clusters), read by the kernel and by imgmount: read-only rows only.
        run(["mkfs.erofs", "--quiet", "-zlz4hc", f"-T{FAKE_TIME}", os.path.join(img_dir, "erofs.img"), src])
        log(f"  mkfs.erofs: {time.perf_counter() - t0:.1f} s")
    elif group == "fat":
        fat_data = sz["big"] + sz["fat_files"] * 4096
        fat_size = max(512 * MiB, round_up(int(fat_data * 1.25) + 64 * MiB, MiB))
        fat = os.path.join(img_dir, "fat.img")
        mkfs_fat32(fat, fat_size)
        run(["mcopy", "-s", "-i", fat, os.path.join(src, "big.bin"), os.path.join(src, "treefat"), "::/"],
            env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
        log(f"  mkfs.vfat + mcopy -s: {time.perf_counter() - t0:.1f} s")
    elif group in SQUASHFS:
        comp = SQUASHFS[group]
        run(["mksquashfs", src, os.path.join(img_dir, f"{comp}.sqfs"), "-comp", comp, "-noappend",
             "-quiet", "-no-progress", "-e", "treefat", "bigdir"], stdout=subprocess.DEVNULL,
            env=dict(os.environ, SOURCE_DATE_EPOCH=FAKE_TIME))
        log(f"  mksquashfs -comp {comp}: {time.perf_counter() - t0:.1f} s")
    elif group == "wr":
        wr_size = max(512 * MiB, round_up(sz["write"] * 2, MiB))
        mkfs_ext4(os.path.join(img_dir, "wr-ext.img"), wr_size)
        mkfs_fat32(os.path.join(img_dir, "wr-fat.img"), wr_size)
    elif group == "lat":
        for label, size in (("small", sz["lat_small"]), ("big", sz["lat_big"])):
            # Latency images are only mounted read-only, so lazy init is fine and keeps them sparse.
            mkfs_ext4(os.path.join(img_dir, f"lat-ext-{label}.img"), size, lazy=True)
            mkfs_fat32(os.path.join(img_dir, f"lat-fat-{label}.img"), size)
    else:
        raise ValueError(group)


def write_fixtures(img_dir, sz):
    """For the untar and rmrf rows: a tarball of a small-file tree and an empty-enough ext4
    image holding that tree in tree/ (mkfs -d, directories indexed). Built once per size."""
    n, dirs = sz["untar_files"], sz["untar_dirs"]
    tarball = os.path.join(img_dir, f"untar-{n}.tar")
    tree_img = os.path.join(img_dir, f"wr-ext-tree-{n}.img")
    if os.path.exists(tarball) and os.path.exists(tree_img):
        return tarball, tree_img
    t0 = time.perf_counter()
    src = os.path.join(img_dir, "untar-src")
    shutil.rmtree(src, ignore_errors=True)
    write_tree(os.path.join(src, "tree"), n, dirs)
    run(["tar", "cf", tarball + ".tmp", "--sort=name", f"--mtime=@{FAKE_TIME}", "--owner=0", "--group=0",
         "-C", os.path.join(src, "tree"), "."])
    os.rename(tarball + ".tmp", tarball)
    wr_size = max(512 * MiB, round_up(sz["write"] * 2, MiB))
    mkfs_ext4(tree_img + ".tmp", wr_size, src=src)
    os.rename(tree_img + ".tmp", tree_img)
    shutil.rmtree(src)
    log(f"  write fixtures ({n:,}-file tree): {time.perf_counter() - t0:.1f} s")
    return tarball, tree_img


def container_image(img_dir, tool):
    """ext.img converted for a container column, built once (and again when ext.img is newer)."""
    src = os.path.join(img_dir, "ext.img")
    dst = os.path.join(img_dir, "ext." + CONTAINER_EXT[tool])
    if not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
        tmp = dst + ".tmp"
        t0 = time.perf_counter()
        run([{"SRC": src, "DST": tmp}.get(a, a) for a in CONTAINER_TOOLS[tool]], capture_output=True)
        os.rename(tmp, dst)
        log(f"  {os.path.basename(dst)}: converted in {time.perf_counter() - t0:.1f} s")
    return dst


def mkisofs(img, src, exclude=()):
    """An ISO 9660 image of src with Rock Ridge and Joliet (xorriso's mkisofs emulation), every
    date FAKE_TIME so that the image is the same at every build; `exclude`: top-level names."""
    cmd = ["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "--set_all_file_dates", f"={FAKE_TIME}"]
    for name in exclude:
        cmd += ["-m", os.path.join(src, name)]  # with a "/", matched as a path, not any leaf
    r = run(cmd + ["-o", img, src], check=False, capture_output=True, text=True,
            env=dict(os.environ, SOURCE_DATE_EPOCH=FAKE_TIME))
    if r.returncode != 0:
        raise RuntimeError(f"xorriso exited with {r.returncode}: {tail(r.stderr)}")


def mkfs_erofs_plain(img, src, exclude=()):
    """An uncompressed EROFS image of src (no -z): the kernel's twin of an ISO."""
    run(["mkfs.erofs", "--quiet", f"-T{FAKE_TIME}"] + [f"--exclude-path={e}" for e in exclude] + [img, src])


# The source tree's parts that the squashfs images leave out, and so the ISO and its twin.
ISO_EXCLUDE = ("treefat", "bigdir")


def build_iso_group(img_dir, src):
    """The "iso" image group: the ISO of big.bin and tree/ and its uncompressed EROFS twin."""
    for name, build in ((ISO_IMAGE, mkisofs), (ISO_TWIN, mkfs_erofs_plain)):
        t0 = time.perf_counter()
        build(os.path.join(img_dir, name), src, ISO_EXCLUDE)
        log(f"  {name}: built in {time.perf_counter() - t0:.1f} s")


# Image groups built by a function of their own instead of build_image_group: their stamps
# carry the common key plus a hash of that function's code (ensure_images), so that adding
# one leaves the key, and the cached images, of the others as they were.
OWN_BUILDERS = {"iso": (build_iso_group, (mkisofs, mkfs_erofs_plain))}


def build_ro_latency_image(img_dir, kind):
    """The "small" image of a read-only filesystem's latency row: RO_LAT_FILES files and a
    RO_LAT_BIG file, made like the read-row image. kind: an RO_FS, or "iso-twin" for the ISO
    rows' kernel column. Built on first use and cached by its existence (not by the stamps of
    ensure_images: it is the same at both sizes and takes a second; delete it after changing
    RO_LAT_* or how it is built)."""
    if kind == "erofs":
        img = os.path.join(img_dir, "lat-small-erofs.img")  # mount_cmd: "erofs.img" means EROFS
    elif kind == "iso":
        img = os.path.join(img_dir, "lat-small.iso")
    elif kind == "iso-twin":
        img = os.path.join(img_dir, "lat-small-twin-erofs.img")
    else:
        img = os.path.join(img_dir, f"lat-small-{SQUASHFS[kind]}.sqfs")
    if os.path.exists(img):
        return img
    t0 = time.perf_counter()
    src = os.path.join(img_dir, "lat-ro-src")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    write_big_file(os.path.join(src, "big.bin"), RO_LAT_BIG)
    write_tree(os.path.join(src, "tree"), RO_LAT_FILES, RO_LAT_DIRS)
    tmp = img + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    if kind == "erofs":
        run(["mkfs.erofs", "--quiet", "-zlz4hc", f"-T{FAKE_TIME}", tmp, src])
    elif kind == "iso":
        mkisofs(tmp, src)
    elif kind == "iso-twin":
        mkfs_erofs_plain(tmp, src)
    else:
        run(["mksquashfs", src, tmp, "-comp", SQUASHFS[kind], "-noappend", "-quiet", "-no-progress"],
            stdout=subprocess.DEVNULL, env=dict(os.environ, SOURCE_DATE_EPOCH=FAKE_TIME))
    os.rename(tmp, img)
    shutil.rmtree(src)
    log(f"  {os.path.basename(img)}: built in {time.perf_counter() - t0:.1f} s")
    return img


def qemu_convert_notes(img_dir, tools, runs):
    """The reference for compressed containers: QEMU's own reader decoding the whole disk to
    nowhere (qemu-img convert to a null-co target), cold, median of `runs`. Not the same work as
    the seqread row: big.bin is random, so qemu-img keeps its clusters uncompressed; the like for
    like ratio is benches/containers.py's `qemu` part (a compressible file)."""
    notes = ["- compressed columns: big.bin is random, so its clusters are stored uncompressed; "
             "benches/containers.py measures compressed clusters against qemu-img."] if tools else []
    for t in tools:
        img = container_image(img_dir, t)
        size = os.path.getsize(os.path.join(img_dir, "ext.img"))
        times = []
        for _ in range(runs):
            drop_caches([img])
            t0 = time.perf_counter()
            r = run(["qemu-img", "convert", "-n", "--target-image-opts", img,
                     f"driver=null-co,size={size}"], check=False, capture_output=True, text=True)
            if r.returncode != 0:
                notes.append(f"- qemu-img convert {t}: failed: {tail(r.stderr)}")
                break
            times.append(time.perf_counter() - t0)
        if times:
            med = statistics.median(times)
            notes.append(f"- qemu-img convert of ext.{CONTAINER_EXT[t]} ({human_bytes(size)} disk) "
                         f"to null-co, cold: {fmt_secs(med)} s = {size / med / 1e6:.0f} MB/s of disk")
    return notes


# Image groups: each is built, and cached under its own stamp, only when a selected row reads
# it, so that `--fs ext --only create` does not wait for mkfs.ext4 -d of the whole read tree.
# The groups in SOURCE_GROUPS copy the generated source tree.
IMAGE_GROUPS = ("ext", "erofs", "fat", *SQUASHFS, "iso", "wr", "lat")
SOURCE_GROUPS = {"ext", "erofs", "fat", *SQUASHFS, "iso"}


def selected_rows(a):
    """(workload, kind, fs) of every row the arguments select, in the order they run."""
    for name, kind, _ in WORKLOADS:
        if a.only and name not in a.only:
            continue
        for fs in ("ext", "fat", "erofs", *SQUASHFS, "iso"):
            if (name == "bigdir" or name in EXT_ONLY_WRITES) and fs == "fat":
                continue  # a 100,000-entry directory does not fit FAT's 65,536-entry limit
            if fs not in a.fs:
                continue
            if fs in RO_FS and kind != "latency":
                if kind != "read" or (fs in TREE_ONLY_FS and name not in SQUASHFS_WORKLOADS):
                    continue  # read-only; the squashfs and ISO images hold only big.bin and tree/
            yield name, kind, fs


def needed_groups(a):
    """The image groups the selected rows read (Bench.image, write_row, latency_row)."""
    groups = set()
    for name, kind, fs in selected_rows(a):
        if kind == "read":
            # FAT rows compare with the kernel reading ext.img, the FAT tree's ext4 twin.
            groups |= {"ext", "fat"} if fs == "fat" else {fs}
        elif kind == "write":
            groups.add("wr")  # untar and rmrf build theirs in write_fixtures
        elif fs in RO_FS:
            # The big image is the read-row one; latency_row builds the small one itself.
            groups.add(fs)
        else:
            groups.add("lat")
    return groups


def ensure_images(wd, sz, size_name, groups):
    src_code = "".join(inspect.getsource(f) for f in (
        tree_layout, bigdir_name, write_big_file, write_tree, write_bigdir, mkfs_ext4, mkfs_fat32,
        ext_image_geometry, write_source_tree, build_image_group))
    # Only what shapes the images: a different --timeout or number of preads must not
    # rebuild them (the full build takes about 15 minutes).
    shape = {k: sz[k] for k in IMAGE_SIZES}
    key = hashlib.sha256((json.dumps(shape, sort_keys=True) + src_code).encode()).hexdigest()[:16]
    wd_size = os.path.join(wd, size_name)
    img_dir = os.path.join(wd_size, "images")
    os.makedirs(img_dir, exist_ok=True)

    def stamp(group):
        return os.path.join(img_dir, f"stamp-{group}")

    def group_key(group):
        if group not in OWN_BUILDERS:
            return key
        builder, helpers = OWN_BUILDERS[group]
        code = "".join(inspect.getsource(f) for f in (builder, *helpers))
        return hashlib.sha256((key + code).encode()).hexdigest()[:16]

    def current(group):
        try:
            with open(stamp(group)) as f:
                return f.read().strip() == group_key(group)
        except OSError:
            return False

    todo = [g for g in IMAGE_GROUPS if g in groups and not current(g)]
    if not todo:
        return img_dir
    log(f"building {size_name} images ({', '.join(todo)}) in {wd_size} (cached for later runs)")
    t0 = time.perf_counter()
    src = os.path.join(wd_size, "src")
    if SOURCE_GROUPS.intersection(todo):
        write_source_tree(src, sz)
    for g in todo:
        # A group interrupted half-built must not count as built.
        if os.path.exists(stamp(g)):
            os.unlink(stamp(g))
        if g in OWN_BUILDERS:
            OWN_BUILDERS[g][0](img_dir, src)
        else:
            build_image_group(g, img_dir, src, sz)
        with open(stamp(g), "w") as f:
            f.write(group_key(g) + "\n")
    shutil.rmtree(src, ignore_errors=True)
    log(f"images built in {time.perf_counter() - t0:.1f} s")
    return img_dir


# --------------------------------------------------------------------------------------------
# Workers: run in a child process that times itself (so interpreter start-up is not counted)
# and leaves a progress file behind, from which a timeout reports the rate it had reached.
# --------------------------------------------------------------------------------------------


class Progress:
    def __init__(self, path):
        self.path = path
        self.t0 = time.perf_counter()
        self.ops = 0
        self.last = self.t0

    def add(self, n=1):
        self.ops += n
        now = time.perf_counter()
        if now - self.last > 0.2:
            self.last = now
            self.dump(now)

    def dump(self, now=None):
        now = now or time.perf_counter()
        with open(self.path + ".tmp", "w") as f:
            f.write(f"{self.ops} {now - self.t0}\n")
        os.replace(self.path + ".tmp", self.path)


def count_stream(cmd, cwd, prog, unit):
    """Runs cmd, counting its output in bytes or lines; returns the count."""
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    total = 0
    prev = b""
    while True:
        chunk = p.stdout.read1(1 << 16)
        if not chunk:
            break
        if unit == "bytes":
            n = len(chunk)
        elif unit == "lines":
            n = chunk.count(b"\n")
        else:
            # "files": lines not ending in "/" (mdir -b marks directories so); the byte before
            # the chunk is carried over for a "/\n" split across two reads.
            both = prev + chunk
            n = both.count(b"\n") - both.count(b"/\n") - (prev == b"\n")
            prev = chunk[-1:]
        total += n
        prog.add(n)
    if p.wait() != 0:
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode}")
    return total


def worker(a):
    prog = Progress(a.progress)
    w, root = a.worker, a.root
    result = {}
    if w == "seqread":
        fd = os.open(os.path.join(root, "big.bin"), os.O_RDONLY)
        buf = bytearray(MiB)
        total = 0
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                break
            total += n
            prog.add(n)
        os.close(fd)
        result["count"] = total
    elif w == "pread":
        fd = os.open(os.path.join(root, "big.bin"), os.O_RDONLY)
        blocks = os.fstat(fd).st_size // 4096
        rng = random.Random(SEED + 7)
        for _ in range(a.n):
            if len(os.pread(fd, 4096, rng.randrange(blocks) * 4096)) != 4096:
                raise RuntimeError("short pread")
            prog.add()
        os.close(fd)
        result["count"] = a.n
    elif w == "find":
        result["count"] = count_stream(["find", ".", "-type", "f"], os.path.join(root, a.sub), prog, "lines")
    elif w == "walk":
        n = 0
        for d, dirs, files in os.walk(os.path.join(root, a.sub)):
            for name in dirs + files:
                os.lstat(os.path.join(d, name))
                n += 1
                prog.add()
        result["count"] = n
    elif w == "tar":
        result["count"] = count_stream(["tar", "cf", "-", "."], os.path.join(root, a.sub), prog, "bytes")
    elif w == "bigdir":
        rng = random.Random(SEED + 11)
        d = os.path.join(root, "bigdir")
        for i in rng.sample(range(a.total), a.n):
            os.stat(os.path.join(d, bigdir_name(i)))
            prog.add()
        result["count"] = a.n
    elif w == "write":
        buf = random.Random(SEED + 3).randbytes(MiB)
        fd = os.open(os.path.join(root, "written.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        left = a.n
        while left:
            n = os.write(fd, buf[:min(left, MiB)])
            left -= n
            prog.add(n)
        os.close(fd)
        result["count"] = a.n
    elif w == "create":
        buf = random.Random(SEED + 5).randbytes(1024)
        made = set()
        for i in range(a.n):
            d = os.path.join(root, "new", f"c{i % max(1, a.n // 100):03d}")
            if d not in made:
                os.makedirs(d, exist_ok=True)
                made.add(d)
            fd = os.open(os.path.join(d, f"n{i:05d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, buf)
            os.close(fd)
            prog.add()
        result["count"] = a.n
    elif w == "untar":
        dest = os.path.join(root, "untar")
        os.makedirs(dest)
        run(["tar", "xf", a.image, "-C", dest])
        result["count"] = a.n
    elif w == "rmrf":
        run(["rm", "-rf", os.path.join(root, "tree")])
        result["count"] = a.n
    elif w == "fsyncs":
        buf = random.Random(SEED + 9).randbytes(4096)
        fd = os.open(os.path.join(root, "fsynced.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for i in range(a.n):
            os.pwrite(fd, buf, i * 4096)
            os.fsync(fd)
            prog.add()
        os.close(fd)
        result["count"] = a.n
    elif w == "mtools-seqread":
        result["count"] = count_stream(["mcopy", "-n", "-i", a.image, "::big.bin", "-"], None, prog, "bytes")
    elif w == "mtools-find":
        result["count"] = count_stream(["mdir", "-/", "-b", "-i", a.image, "::" + a.sub], None, prog, "files")
    else:
        raise SystemExit(f"unknown worker {w}")
    result["seconds"] = time.perf_counter() - prog.t0
    prog.dump()
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# Mounting
# --------------------------------------------------------------------------------------------


def mountpoints_under(root):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == root or mp.startswith(root + "/"):
                out.append(mp)
    return out


def is_mounted(mnt):
    return mnt in mountpoints_under(mnt)


def fuse_abort(mnt):
    """Aborts the FUSE connection of mnt so that processes stuck on it wake up with ENOTCONN."""
    try:
        dev = os.stat(mnt).st_dev
    except OSError:
        return
    path = f"/sys/fs/fuse/connections/{os.minor(dev)}/abort"
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError:
        pass


def find_daemon(mnt):
    """The process serving mnt: its command line names the mount point and it holds /dev/fuse
    (which the forked imgmount watcher does not)."""
    best = None
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                args = [x.decode(errors="replace").rstrip("/") for x in f.read().split(b"\0")]
            if mnt not in args:
                continue
            holds = any(os.readlink(f"/proc/{p}/fd/{fd}") == "/dev/fuse" for fd in os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
        if holds:
            best = int(p) if best is None else min(best, int(p))
    return best


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            # A zombie has exited and closed its files.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Mount:
    def __init__(self, tool, image, mnt, rw, pid):
        self.tool, self.image, self.mnt, self.rw, self.pid = tool, image, mnt, rw, pid


class Tools:
    def __init__(self, imgmount_bin):
        self.imgmount = imgmount_bin

    def mount_cmd(self, tool, image, mnt, rw):
        if tool == "kernel":
            fstype = "squashfs" if image.endswith(".sqfs") else "erofs" if image.endswith("erofs.img") else "ext4"
            return ["mount", "-t", fstype, "-o", ("loop,rw" if rw else "loop,ro"), image, mnt]
        if tool == "squashfuse_ll":
            return ["squashfuse_ll", image, mnt]
        if tool == "fuseiso":
            return ["fuseiso", "-n", image, mnt]  # -n: no ~/.mtab.fuseiso bookkeeping
        if tool == "imgmount" or tool in CONTAINER_TOOLS:
            return [self.imgmount, image, mnt] + (["-o", "rw"] if rw else [])
        if tool == "fuse2fs":
            return ["fuse2fs", image, mnt, "-o", ("rw,fakeroot" if rw else "ro,fakeroot")]
        if tool == "fusefat":
            return ["fusefat", "-o", ("rw+" if rw else "ro"), image, mnt]
        raise ValueError(tool)

    def mount(self, tool, image, mnt, rw=False):
        os.makedirs(mnt, exist_ok=True)
        parent = os.stat(os.path.dirname(mnt)).st_dev
        r = run(self.mount_cmd(tool, image, mnt, rw), check=False, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{tool} mount failed ({r.returncode}): {tail(r.stderr)}")
        wait_mounted(mnt, parent, 3)  # the command has returned: the mount must be there
        pid = None if tool == "kernel" else find_daemon(mnt)
        return Mount(tool, image, mnt, rw, pid)

    def umount_noting(self, m):
        """Unmounts; on failure forces the mount away and returns the failure as a note."""
        try:
            self.umount(m)
            return None
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            if is_mounted(m.mnt):
                force_umount(m.mnt)
            return f"failed: {e}"

    def umount(self, m):
        if m.tool == "imgmount" or m.tool in CONTAINER_TOOLS:
            r = run([self.imgmount, "umount", m.mnt], check=False, capture_output=True, text=True, timeout=300)
        else:
            r = run(["umount", m.mnt] if is_root() else ["fusermount3", "-u", m.mnt], check=False,
                    capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{m.tool} unmount failed: {tail(r.stderr)}")
        # The daemon writes back and closes the image after the unmount returns.
        deadline = time.monotonic() + 300
        while m.pid and pid_alive(m.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{m.tool} daemon {m.pid} did not exit after unmount")
            time.sleep(0.002)


def wait_mounted(mnt, parent_dev, timeout, proc=None):
    """Polls until mnt is a mount. Gives up early when proc (the mount command) has failed, or
    a few seconds after it has exited: every tool here has mounted by the time its command
    returns (fuse2fs exits 0 even when it could not mount)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.stat(mnt).st_dev != parent_dev:
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            if proc.returncode != 0:
                raise RuntimeError(f"mount command failed ({proc.returncode}): {tail(proc.stderr.read())}")
            if deadline > time.monotonic() + 3:
                deadline = time.monotonic() + 3
                timeout = "3 s after the mount command returned"
        if time.monotonic() > deadline:
            if isinstance(timeout, str):
                raise RuntimeError(f"{mnt} did not become a mount {timeout}")
            raise RuntimeError(f"{mnt} did not become a mount within {timeout} s")
        time.sleep(0.0005)


def tail(text, lines=2, width=300):
    """The last lines of a tool's error output on one line (fusefat prints debug chatter first)."""
    kept = [x.strip() for x in text.strip().splitlines() if x.strip()][-lines:]
    return " / ".join(kept)[-width:]


def force_umount(mp):
    fuse_abort(mp)
    run(["umount", "-l", mp] if is_root() else ["fusermount3", "-u", "-z", mp], check=False,
        capture_output=True)


def cleanup_mounts(root, imgmount_bin):
    for mp in reversed(mountpoints_under(root)):
        if mp == root:
            continue
        log(f"cleanup: unmounting {mp}")
        cmds = [["umount", mp]] if is_root() else [[imgmount_bin or "true", "umount", mp], ["fusermount3", "-u", mp]]
        for cmd in cmds:
            try:
                if run(cmd, check=False, capture_output=True, timeout=30).returncode == 0:
                    break
            except (OSError, subprocess.TimeoutExpired):
                pass
        if is_mounted(mp):
            force_umount(mp)


def drop_caches(images):
    """Cold start: the host page cache (and with it the kernel mount's cache) is emptied."""
    run(["sync"])
    if is_root():
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    else:
        # Without root only the image files' own cached pages can be dropped.
        for img in images:
            fd = os.open(img, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def fsync_file(path):
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, sz, img_dir, tools, available):
        self.a, self.sz, self.img, self.t, self.available = args, sz, img_dir, tools, available
        self.mnt_root = os.path.join(args.workdir, "mnt")
        self.results = []
        self.progress = os.path.join(args.workdir, "progress")

    def image(self, tool, fs):
        if fs == "erofs":
            return os.path.join(self.img, "erofs.img")
        if fs in SQUASHFS:
            return os.path.join(self.img, f"{SQUASHFS[fs]}.sqfs")
        if fs == "iso":
            return os.path.join(self.img, ISO_TWIN if tool == "kernel" else ISO_IMAGE)
        if tool in CONTAINER_TOOLS:
            return container_image(self.img, tool)
        if tool == "kernel" or fs == "ext":
            return os.path.join(self.img, "ext.img")
        return os.path.join(self.img, "fat.img")

    def mnt(self, tool):
        return os.path.join(self.mnt_root, tool)

    def worker_args(self, name, fs, tool, root):
        sub = "treefat" if fs == "fat" else "tree"
        n = {"pread": self.sz["preads"], "bigdir": self.sz["stats"], "write": self.sz["write"],
             "create": self.sz["create"], "untar": self.sz["untar_files"], "rmrf": self.sz["untar_files"],
             "fsyncs": self.sz["fsyncs"]}.get(name, 0)
        w = name
        if tool == "mtools":
            w = "mtools-" + name
            sub = "/treefat"
        image = write_fixtures(self.img, self.sz)[0] if name == "untar" else self.image(tool, fs)
        return ["--worker", w, "--root", root or "", "--sub", sub, "--n", str(n),
                "--total", str(self.sz["bigdir"]), "--image", image, "--progress", self.progress]

    def expected_count(self, name, fs):
        files = self.sz["fat_files"] if fs == "fat" else self.sz["ext_files"]
        dirs = self.sz["fat_dirs"] if fs == "fat" else self.sz["ext_dirs"]
        return {"seqread": self.sz["big"], "pread": self.sz["preads"], "find": files,
                "walk": files + dirs, "bigdir": self.sz["stats"], "write": self.sz["write"],
                "create": self.sz["create"], "untar": self.sz["untar_files"],
                "rmrf": self.sz["untar_files"], "fsyncs": self.sz["fsyncs"]}.get(name)

    def run_worker(self, name, fs, tool, root):
        """Returns (seconds, None) or (None, note) for a timeout or failure."""
        try:
            os.unlink(self.progress)
        except OSError:
            pass
        cmd = [sys.executable, os.path.abspath(__file__)] + self.worker_args(name, fs, tool, root)
        global CHILD
        p = CHILD = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=self.sz["timeout"])
        except subprocess.TimeoutExpired:
            p.kill()
            try:
                p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                # Stuck in a FUSE request: aborting the connection wakes it.
                if root:
                    fuse_abort(self.mnt(tool))
                p.communicate()
            return None, self.gave_up(name)
        if p.returncode != 0:
            return None, "failed: " + (tail(err, 1) or f"exit status {p.returncode}")
        res = json.loads(out.strip().splitlines()[-1])
        exp = self.expected_count(name, fs)
        if name == "tar":
            exp = None  # the archive size differs by tool only in header details; counted anyway
        if exp is not None and res["count"] != exp:
            return None, f"wrong result: {res['count']} instead of {exp}"
        return res["seconds"], None

    def gave_up(self, name):
        unit = {"seqread": ("MB/s", 1e-6), "tar": ("MB/s", 1e-6), "write": ("MB/s", 1e-6),
                "pread": ("reads/s", 1), "find": ("files/s", 1), "walk": ("entries/s", 1),
                "bigdir": ("stats/s", 1), "create": ("files/s", 1), "untar": ("files/s", 1),
                "rmrf": ("files/s", 1), "fsyncs": ("fsyncs/s", 1)}[name]
        try:
            with open(self.progress) as f:
                ops, secs = f.read().split()
            rate = float(ops) * unit[1] / max(float(secs), 1e-9)
            return f"gave up after {self.sz['timeout']} s at ~{rate:.3g} {unit[0]}"
        except (OSError, ValueError):
            return f"gave up after {self.sz['timeout']} s (no progress)"

    def row_tools(self, kind, name, fs):
        base = WRITE_TOOLS_FOR[fs] if kind == "write" else TOOLS_FOR[fs]
        if kind in ("latency", "cycle"):
            base = [t for t in base if t != "mtools" and t not in CONTAINER_TOOLS]
        if name not in MTOOLS_WORKLOADS:
            base = [t for t in base if t != "mtools"]
        return [t for t in base if t in self.a.tools]

    def record(self, row, tool, secs, note, rss):
        cell = row["tools"].setdefault(tool, {"times": [], "notes": [], "rss_kib": None})
        if secs is not None:
            cell["times"].append(secs)
        if note:
            cell["notes"].append(note)
        if rss is not None:
            cell["rss_kib"] = max(cell["rss_kib"] or 0, rss)

    def new_row(self, name, fs, cache, label):
        row = {"workload": name, "fs": fs, "cache": cache, "label": label, "tools": {}}
        self.results.append(row)
        return row

    def skip_unavailable(self, row, tools):
        ok = []
        for t in tools:
            if t in self.available:
                ok.append(t)
            else:
                row["tools"][t] = {"times": [], "notes": ["n/a"], "rss_kib": None}
        return ok

    def read_row(self, name, fs, cache):
        row = self.new_row(name, fs, cache, None)
        tools = self.skip_unavailable(row, self.row_tools("read", name, fs))
        if not tools:
            return
        dead = set()
        images = sorted({self.image(t, fs) for t in tools})
        if cache == "cold":
            for r in range(self.a.runs):
                for t in tools:
                    if t in dead:
                        continue
                    m = None
                    try:
                        if t != "mtools":
                            m = self.t.mount(t, self.image(t, fs), self.mnt(t))
                        drop_caches(images)
                        secs, note = self.run_worker(name, fs, t, m and m.mnt)
                        rss = vm_hwm_kib(m.pid) if m and m.pid else None
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        secs, note, rss = None, f"failed: {e}", None
                    finally:
                        if m:
                            note = self.t.umount_noting(m) or note
                    self.record(row, t, secs if note is None else None, note, rss)
                    if note:
                        dead.add(t)
        else:
            mounts = {}
            try:
                for t in tools:
                    try:
                        if t != "mtools":
                            mounts[t] = self.t.mount(t, self.image(t, fs), self.mnt(t))
                        # An untimed pass fills every cache first.
                        secs, note = self.run_worker(name, fs, t, mounts.get(t) and mounts[t].mnt)
                    except RuntimeError as e:
                        note = f"failed: {e}"
                    if note:
                        self.record(row, t, None, note, None)
                        dead.add(t)
                for r in range(self.a.runs):
                    for t in tools:
                        if t in dead:
                            continue
                        secs, note = self.run_worker(name, fs, t, mounts.get(t) and mounts[t].mnt)
                        self.record(row, t, secs, note, None)
                        if note:
                            dead.add(t)
                for t, m in mounts.items():
                    if m.pid:
                        self.record(row, t, None, None, vm_hwm_kib(m.pid))
            finally:
                for t, m in mounts.items():
                    note = self.t.umount_noting(m)
                    if note:
                        self.record(row, t, None, note, None)
        self.print_progress(row)

    def write_row(self, name, fs):
        row = self.new_row(name, fs, "-", None)
        tools = self.skip_unavailable(row, self.row_tools("write", name, fs))
        dead = set()
        work = os.path.join(self.a.workdir, "wr-run.img")
        for r in range(self.a.runs):
            for t in tools:
                if t in dead:
                    continue
                if name == "rmrf":
                    template = write_fixtures(self.img, self.sz)[1]
                elif fs == "ext" or t in ("kernel", "fuse2fs"):
                    template = os.path.join(self.img, "wr-ext.img")
                else:
                    template = os.path.join(self.img, "wr-fat.img")
                run(["cp", "--sparse=always", template, work])
                m = None
                rss = None
                try:
                    m = self.t.mount(t, work, self.mnt(t), rw=True)
                    drop_caches([work])
                    secs, note = self.run_worker(name, fs, t, m.mnt)
                    if note is None:
                        rss = vm_hwm_kib(m.pid) if m.pid else None
                        t0 = time.perf_counter()
                        self.t.umount(m)
                        m = None
                        fsync_file(work)
                        secs += time.perf_counter() - t0
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    secs, note = None, f"failed: {e}"
                    if "read-only in imgmount" in str(e):
                        note = "refused"  # ext rw not there yet (issue 12)
                finally:
                    if m:
                        note = self.t.umount_noting(m) or note
                self.record(row, t, secs if note is None else None, note, rss)
                if note:
                    dead.add(t)
        os.path.exists(work) and os.unlink(work)
        self.print_progress(row)

    def latency_image(self, tool, fs, label):
        if fs in RO_FS:
            if label == "big":
                return self.image(tool, fs)
            return build_ro_latency_image(self.img, "iso-twin" if fs == "iso" and tool == "kernel" else fs)
        kind = "ext" if (fs == "ext" or tool == "kernel") else "fat"
        return os.path.join(self.img, f"lat-{kind}-{label}.img")

    def latency_row(self, fs, label):
        row = self.new_row("latency", fs, "cold", label)
        tools = self.skip_unavailable(row, self.row_tools("latency", "latency", fs))
        if fs in RO_FS:
            # Every tool mounts the same file (the ISO rows' kernel a twin), whose size goes in
            # the row label.
            row["image_bytes"] = os.path.getsize(self.latency_image("imgmount", fs, label))
        dead = set()
        for r in range(self.a.runs):
            for t in tools:
                if t in dead:
                    continue
                img = self.latency_image(t, fs, label)
                mnt = self.mnt(t)
                os.makedirs(mnt, exist_ok=True)
                parent = os.stat(self.mnt_root).st_dev
                drop_caches([img])
                note = None
                secs = None
                t0 = time.perf_counter()
                p = subprocess.Popen(self.t.mount_cmd(t, img, mnt, False), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
                try:
                    wait_mounted(mnt, parent, self.sz["timeout"], p)
                    secs = time.perf_counter() - t0
                except RuntimeError as e:
                    note = f"failed: {e}"
                try:
                    if p.wait(timeout=60) != 0:
                        note = note or f"failed: {tail(p.stderr.read())}"
                except subprocess.TimeoutExpired:
                    p.kill()
                    note = note or "mount command did not return"
                if is_mounted(mnt):
                    pid = None if t == "kernel" else find_daemon(mnt)
                    note = self.t.umount_noting(Mount(t, img, mnt, False, pid)) or note
                self.record(row, t, secs if note is None else None, note, None)
                if note:
                    dead.add(t)
        self.print_progress(row)

    def cycle_row(self, fs):
        """A script's whole mount life cycle: mount, one command inside, unmount until the image
        is closed. imgmount does it in one command (`imgmount run`); the others are mounted,
        `true` runs with the mount as its working directory, then they are unmounted."""
        row = self.new_row("run", fs, "warm", "small")
        tools = self.skip_unavailable(row, self.row_tools("cycle", "run", fs))
        dead = set()
        for r in range(self.a.runs):
            for t in tools:
                if t in dead:
                    continue
                kind = "ext" if (fs == "ext" or t == "kernel") else "fat"
                img = os.path.join(self.img, f"lat-{kind}-small.img")
                mnt = self.mnt(t)
                os.makedirs(mnt, exist_ok=True)
                note = None
                t0 = time.perf_counter()
                try:
                    if t == "imgmount":
                        p = run([self.t.imgmount, "run", "--mountpoint", mnt, img, "--", "true"],
                                check=False, capture_output=True, text=True, timeout=self.sz["timeout"])
                        if p.returncode != 0:
                            note = f"failed: {tail(p.stderr)}"
                    else:
                        m = self.t.mount(t, img, mnt)
                        run(["true"], cwd=mnt)
                        note = self.t.umount_noting(m)
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    note = f"failed: {e}"
                secs = time.perf_counter() - t0
                if is_mounted(mnt):
                    force_umount(mnt)
                    note = note or "left mounted"
                self.record(row, t, secs if note is None else None, note, None)
                if note:
                    dead.add(t)
        self.print_progress(row)

    def print_progress(self, row):
        parts = []
        for t, c in row["tools"].items():
            med = f"{statistics.median(c['times']):.4g}s" if c["times"] else (c["notes"] or ["-"])[0]
            parts.append(f"{t}={med[:150]}")
        log(f"  {row_label(row, self.sz)}: " + ", ".join(parts))

    def run_all(self):
        for name, kind, fs in selected_rows(self.a):
            if kind == "read":
                for cache in ("cold", "warm"):
                    self.read_row(name, fs, cache)
            elif kind == "write":
                self.write_row(name, fs)
            elif kind == "cycle":
                self.cycle_row(fs)
            else:
                for label in ("small", "big"):
                    self.latency_row(fs, label)


def human_bytes(n):
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def row_label(row, sz):
    name, fs = row["workload"], row["fs"]
    fsname = ({"ext": "ext4", "fat": "FAT32", "erofs": "EROFS lz4hc", "iso": "ISO 9660 RR+Joliet"}.get(fs)
              or f"squashfs {SQUASHFS[fs]}")
    files = sz["fat_files"] if fs == "fat" else sz["ext_files"]
    dirs = sz["fat_dirs"] if fs == "fat" else sz["ext_dirs"]
    desc = {
        "seqread": f"seq read {human_bytes(sz['big'])}",
        "pread": f"{sz['preads']:,} random 4 KiB preads",
        "find": f"find -type f, {files:,} files / {dirs:,} dirs",
        "walk": f"os.walk + lstat, {files:,} files / {dirs:,} dirs",
        "tar": f"tar cf - . \\| wc -c, {files:,} files",
        "bigdir": f"{sz['stats']:,} stat() in a {sz['bigdir']:,}-entry dir",
        "write": f"write {human_bytes(sz['write'])}, unmount, fsync",
        "create": f"create {sz['create']:,} files, unmount, fsync",
        "untar": f"tar x of {sz['untar_files']:,} files / {sz['untar_dirs']:,} dirs, unmount, fsync",
        "rmrf": f"rm -rf of {sz['untar_files']:,} files / {sz['untar_dirs']:,} dirs, unmount, fsync",
        "fsyncs": f"{sz['fsyncs']:,} × (write 4 KiB + fsync), unmount, fsync",
        "latency": "mount latency, {} image".format(human_bytes(
            row.get("image_bytes") or (sz["lat_small"] if row["label"] == "small" else sz["lat_big"]))),
        "run": "mount + `true` inside + unmount, {} image".format(human_bytes(sz["lat_small"])),
    }[name]
    cache = f", {row['cache']}" if row["cache"] in ("cold", "warm") and name not in ("latency", "run") else ""
    return f"{desc} ({fsname}){cache}"


def fmt_secs(s):
    if s >= 100:
        return f"{s:.0f}"
    if s >= 0.01:
        return f"{s:.3f}"
    return f"{s:.2g}"


def render(results, sz, args, base_tool, notes):
    tools = [t for t in ALL_TOOLS if t in args.tools]
    footnotes = []

    def short(note, tool):
        # Long failure messages go below the table, numbered, once per distinct message.
        if note.startswith("failed") or note.startswith("wrong"):
            key = f"{tool}: {note}"
            if key not in footnotes:
                footnotes.append(key)
            return f"{note.split(':')[0]} [{footnotes.index(key) + 1}]"
        return note

    # A container column is also compared with imgmount over the raw image when both ran: the
    # containers' targets (issue 13) are ratios to that, not to the kernel.
    raw_ratio = {t for t in tools if t in CONTAINER_TOOLS and "imgmount" in tools and base_tool != "imgmount"}
    cols = []
    for t in tools:
        cols.append(f"{t} s")
        if t != base_tool:
            cols.append(f"{t} ×{base_tool}")
        if t in raw_ratio:
            cols.append(f"{t} ×imgmount")
    lines = ["| workload | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in results:
        base_med = median_of(row["tools"].get(base_tool))
        raw_med = median_of(row["tools"].get("imgmount"))
        cells = []
        for t in tools:
            n_ratios = (t != base_tool) + (t in raw_ratio)
            c = row["tools"].get(t)
            if c is None:
                cells += ["–"] * (1 + n_ratios)
                continue
            if c["times"] and not c["notes"]:
                med = statistics.median(c["times"])
                cells.append(fmt_secs(med))
                if t != base_tool:
                    cells.append(f"{med / base_med:.2f}" if base_med else "–")
                if t in raw_ratio:
                    cells.append(f"{med / raw_med:.2f}" if raw_med else "–")
            else:
                cells.append(short((c["notes"] or ["–"])[0], t))
                cells += ["–"] * n_ratios
        lines.append(f"| {row_label(row, sz)} | " + " | ".join(cells) + " |")

    serving = [t for t in SERVING if t in args.tools]
    rss = ["", "Peak RSS of each serving process (VmHWM at the end of the workload, MiB):", "",
           "| workload | " + " | ".join(serving) + " |", "|---|" + "---|" * len(serving)]
    for row in results:
        if row["workload"] == "latency":
            continue
        cells = []
        for t in serving:
            c = row["tools"].get(t)
            if c is None:
                cells.append("–")
            elif c["rss_kib"]:
                cells.append(f"{c['rss_kib'] / 1024:.1f}")
            else:
                cells.append("n/a" if c["notes"] == ["n/a"] else "–")
        rss.append(f"| {row_label(row, sz)} | " + " | ".join(cells) + " |")
    if footnotes:
        lines += [""] + [f"[{i + 1}] {f}" for i, f in enumerate(footnotes)]
    if len(rss) == 5 or not serving:
        rss = []  # only latency rows, or no serving process asked for
    return "\n".join(notes + [""] + lines + rss)


def row_key(row):
    return f"{row['workload']}/{row['fs']}/{row['cache']}/{row['label']}"


def median_of(cell):
    return statistics.median(cell["times"]) if cell and cell["times"] and not cell["notes"] else None


def render_comparison(old_path, old, new, sz, size_name):
    """new median / old median for every row and tool measured in both runs."""
    old_rows = {row_key(r): r for r in old["results"]}
    lines = ["", f"Compared with {old_path} (new / old median; below 1.00 is faster now):", "",
             "| workload | " + " | ".join(ALL_TOOLS) + " |", "|---|" + "---|" * len(ALL_TOOLS)]
    for row in new:
        o = old_rows.get(row_key(row))
        if not o:
            continue
        cells = []
        for t in ALL_TOOLS:
            a, b = median_of(o["tools"].get(t)), median_of(row["tools"].get(t))
            cells.append(f"{b / a:.2f}" if a and b else "–")
        lines.append(f"| {row_label(row, sz)} | " + " | ".join(cells) + " |")
    if old.get("size") != size_name:
        lines.append("")
        lines.append(f"(the earlier run used the {old.get('size')} size)")
    return "\n".join(lines)


def build_imgmount(args):
    if args.imgmount:
        return os.path.abspath(args.imgmount)
    log("building imgmount: cargo build --release")
    r = run(["cargo", "build", "--release", "--bin", "imgmount"], cwd=REPO, check=False)
    if r.returncode != 0:
        log("cargo build failed: imgmount columns will show n/a")
        return None
    return os.path.join(REPO, "target", "release", "imgmount")


def default_workdir():
    if os.access(os.path.join(REPO, "target"), os.W_OK) or os.access(REPO, os.W_OK):
        return os.path.join(REPO, "target", "bench")
    return "/var/tmp/imgmount-bench"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small images and short timeouts (a few minutes)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per tool and workload (default 3)")
    p.add_argument("--only", help="comma-separated workloads: " + ",".join(w[0] for w in WORKLOADS))
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                   help="comma-separated, default: " + ",".join(DEFAULT_TOOLS) + "; also "
                   + ",".join(CONTAINER_TOOLS) + " (imgmount over ext.img as that container)")
    p.add_argument("--fs", default="ext,fat,erofs," + ",".join(SQUASHFS) + ",iso",
                   help="comma-separated filesystems: ext,fat,erofs," + ",".join(SQUASHFS) + ",iso (default: all)")
    p.add_argument("--workdir", help="images and mount points (default: target/bench in the repo)")
    p.add_argument("--imgmount", help="imgmount binary to use instead of building the repo's")
    p.add_argument("--json", help="results file (default: WORKDIR/results-<size>-<time>.json)")
    p.add_argument("--compare", help="an earlier results JSON: also print new/old median per row and tool")
    p.add_argument("--timeout", type=int, help="seconds before a run gives up (default 15 quick, 600 full)")
    # Internal: the workload child process.
    for opt in ("--worker", "--root", "--sub", "--image", "--progress"):
        p.add_argument(opt, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--total", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return a
    a.tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    bad = [t for t in a.tools if t not in ALL_TOOLS]
    if bad:
        p.error(f"unknown tools {bad}; known: {ALL_TOOLS}")
    if a.only:
        a.only = [w.strip() for w in a.only.split(",")]
        bad = [w for w in a.only if w not in [x[0] for x in WORKLOADS]]
        if bad:
            p.error(f"unknown workloads {bad}")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    a.fs = set(a.fs.split(","))
    a.workdir = os.path.abspath(a.workdir or default_workdir())
    return a


def available_tools(a, imgmount_bin):
    avail, notes = set(), []
    for t in a.tools:
        if t == "kernel":
            if is_root():
                avail.add(t)
            else:
                notes.append("- kernel: not root, so no loop mount; ratios are to imgmount instead.")
        elif t == "imgmount" or t in CONTAINER_TOOLS:
            conv = CONTAINER_TOOLS.get(t, [None])[0]
            if not (imgmount_bin and os.access(imgmount_bin, os.X_OK)):
                notes.append(f"- {t}: no imgmount binary (build failed or --imgmount path missing).")
            elif conv and not shutil.which(conv):
                notes.append(f"- {t}: {conv} not installed, so no image to read.")
            else:
                avail.add(t)
        else:
            exe = {"fuse2fs": "fuse2fs", "fusefat": "fusefat", "mtools": "mcopy",
                   "squashfuse_ll": "squashfuse_ll", "fuseiso": "fuseiso"}[t]
            if shutil.which(exe):
                avail.add(t)
            else:
                notes.append(f"- {t}: not installed ({exe} not on PATH).")
    return avail, notes


def main(argv):
    a = parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    size_name = "quick" if a.quick else "full"
    sz = dict(SIZES[size_name])
    if a.timeout:
        sz["timeout"] = a.timeout
    os.makedirs(a.workdir, exist_ok=True)
    wants_imgmount = "imgmount" in a.tools or any(t in CONTAINER_TOOLS for t in a.tools)
    imgmount_bin = build_imgmount(a) if wants_imgmount else None
    avail, notes = available_tools(a, imgmount_bin)
    base_tool = "kernel" if "kernel" in avail else "imgmount"

    mnt_root = os.path.join(a.workdir, "mnt")
    os.makedirs(mnt_root, exist_ok=True)
    cleanup_mounts(mnt_root, imgmount_bin)  # leftovers of a killed earlier run

    def on_signal(signum, frame):
        if CHILD and CHILD.poll() is None:
            CHILD.kill()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.time()
    bench = None
    try:
        groups = needed_groups(a)
        img_dir = ensure_images(a.workdir, sz, size_name, groups)
        bench = Bench(a, sz, img_dir, Tools(imgmount_bin), avail)
        bench.run_all()
        if "ext" in groups:  # the converted containers are copies of ext.img
            notes += qemu_convert_notes(img_dir, [t for t in ("qcow2-zlib", "qcow2-zstd", "vmdk-stream") if t in avail], a.runs)
    except KeyboardInterrupt:
        log("interrupted: unmounting everything")
        return 130
    finally:
        cleanup_mounts(mnt_root, imgmount_bin)

    header = [
        f"imgmount benchmark, {size_name} size, {a.runs} run(s) per tool, interleaved; "
        f"median seconds; ratio = tool / {base_tool} in the same interleaved run.",
        "- cold: host page cache dropped (sync; echo 3 > drop_caches) before each run, FUSE tools "
        "remounted; warm: one untimed pass first, all tools mounted.",
        "- FAT32 rows: the kernel column reads an ext4 twin of the same content (no vfat module here).",
        "- ISO 9660 rows: the kernel column reads an uncompressed EROFS twin of the same content "
        "(no iso9660 module here).",
        "- write rows: time from first write to unmounted and image fsynced; ext4 rows: every tool "
        "writes the same ext4 image (imgmount `-o rw`: \"refused\" until ext rw exists); FAT32 rows: "
        "imgmount and fusefat write FAT32, the kernel an ext4 twin.",
        "- – means not applicable to that tool; n/a means not installed/available.",
    ]
    if not is_root():
        header.append("- not root: cold runs drop only the image files' cached pages (fadvise), "
                      "not the whole host cache.")
    host_note = f"- host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end."
    text = render(bench.results, sz, a, base_tool, header + notes + [host_note])
    for row in bench.results:
        row["title"] = row_label(row, sz)
        for cell in row["tools"].values():
            cell["median"] = median_of(cell)
    if a.compare:
        with open(a.compare) as f:
            text += "\n" + render_comparison(a.compare, json.load(f), bench.results, sz, size_name)
    print(text)
    out = a.json or os.path.join(a.workdir, f"results-{size_name}-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({"size": size_name, "sizes": sz, "runs": a.runs, "base": base_tool,
                   "started": started, "seconds": time.time() - started, "notes": notes,
                   "imgmount": imgmount_bin, "results": bench.results}, f, indent=1)
    log(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
