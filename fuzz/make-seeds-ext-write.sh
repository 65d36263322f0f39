#!/bin/bash
# Builds the committed seeds of the ext_write target (fuzz/corpus/ext_write/): small ext2,
# ext3 and ext4 images made by mke2fs (fixed UUID, hash seed and time, so reruns give the
# same bytes) with a tiny tree, each behind a short operation script, the image stored as
# sparse records (see harness/ext_write.rs) so a journaled image is a few KiB.
set -euo pipefail
cd "$(dirname "$0")"
export E2FSPROGS_FAKE_TIME=1700000000 PATH="$PATH:/sbin:/usr/sbin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p corpus/ext_write regressions/ext_write
touch regressions/ext_write/.keep

src=$tmp/src
mkdir -p "$src/dir/sub"
printf 'hello\n' > "$src/a.txt"
head -c 3000 /dev/zero | tr '\0' 'b' > "$src/dir/b.bin"
head -c 12000 /dev/zero | tr '\0' 'c' > "$src/dir/sub/c.dat"
ln -s a.txt "$src/link"
setfattr -n user.seed -v one "$src/a.txt" 2>/dev/null || true
find "$src" -exec touch -h -d @1700000000 {} +

# script bytes (hex) per seed: creates, writes, mkdir, rename, truncate, unlink, then the
# ext half (symlink, link, mknod, setxattr, fallocate, rename flags).
script=000102030a14210506020a070304080901020304050607080900010203040506070001
mk() { # name size-KiB mke2fs-args...
  local name=$1 size=$2; shift 2
  rm -f "$tmp/$name"
  truncate -s "${size}K" "$tmp/$name"
  mke2fs -q -F -U 12345678-1234-1234-1234-123456789abc \
    -E hash_seed=87654321-4321-4321-4321-cba987654321,root_owner=0:0,lazy_itable_init=0 \
    "$@" -d "$src" "$tmp/$name"
  python3 - "$tmp/$name" "$script" "corpus/ext_write/$name" <<'PY'
import struct, sys
img = open(sys.argv[1], 'rb').read()
script = bytes.fromhex(sys.argv[2])
out = bytearray([len(script)]) + script
sec = 512
n = len(img) // sec
i = 0
while i < n:
    if img[i*sec:(i+1)*sec] == bytes(sec) and i != n - 1:
        i += 1
        continue
    j = i
    # A run of sectors (nonzero ones, or the last), at most 127 per record.
    while j < n and j - i < 127 and (img[j*sec:(j+1)*sec] != bytes(sec) or j == n - 1):
        j += 1
    out += struct.pack('<IH', i, (j - i) * sec) + img[i*sec:j*sec]
    i = j
open(sys.argv[3], 'wb').write(out)
PY
}
mk ext2-1k.img 512 -t ext2 -b 1024 -N 64
mk ext3-1k.img 4096 -t ext3 -b 1024 -N 64 -J size=1
mk ext4-1k.img 4096 -t ext4 -b 1024 -N 64 -J size=1
mk ext4-4k-nocsum.img 12288 -t ext4 -b 4096 -N 64 -O ^metadata_csum,64bit -J size=4
ls -l corpus/ext_write
