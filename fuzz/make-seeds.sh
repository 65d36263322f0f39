#!/bin/bash
# Builds the committed seed inputs under fuzz/corpus/<target>/ (deterministic: fixed UUIDs,
# hash seeds, volume ids, fake time). Re-run only to change the seeds; the outputs are
# committed so the replay test needs no tools.
set -euo pipefail
cd "$(dirname "$0")"
export E2FSPROGS_FAKE_TIME=1700000000 SOURCE_DATE_EPOCH=1700000000 PATH="$PATH:/sbin:/usr/sbin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p corpus/{partition,probe,ext_walk,fat_walk,fat_write,squashfs_walk}

# A tiny tree: files of a few sizes, a subdirectory, a symlink, a long name.
src=$tmp/src
mkdir -p "$src/dir/sub"
printf 'hello\n' > "$src/a.txt"
head -c 3000 /dev/zero | tr '\0' 'b' > "$src/dir/b.bin"
head -c 12000 /dev/zero | tr '\0' 'c' > "$src/dir/sub/c.dat"
printf 'x' > "$src/A long file name with spaces.txt"
ln -s a.txt "$src/link"

mk_ext() { # name size-KiB mkfs-args...
  local name=$1 size=$2; shift 2
  rm -f "$tmp/$name"
  truncate -s "${size}K" "$tmp/$name"
  mke2fs -q -F -b 1024 -N 32 -U 12345678-1234-1234-1234-123456789abc \
    -E hash_seed=87654321-4321-4321-4321-cba987654321,root_owner=0:0 "$@" -d "$src" "$tmp/$name"
  cp "$tmp/$name" "corpus/ext_walk/$name"
}
mk_ext ext2.img 64 -t ext2 -O ^resize_inode,^dir_index
mk_ext ext4.img 128 -t ext4 -O ^resize_inode,^has_journal -I 256
mk_ext ext4-csum.img 128 -t ext4 -O ^resize_inode,^has_journal,metadata_csum,inline_data -I 256

mk_fat() { # name size-KiB mkfs-args...
  local name=$1 size=$2; shift 2
  rm -f "$tmp/$name"
  mkfs.fat -C -i 1234abcd --invariant "$@" "$tmp/$name" "$size" >/dev/null
  MTOOLS_SKIP_CHECK=1 mcopy -s -i "$tmp/$name" "$src/a.txt" "$src/dir" "$src/A long file name with spaces.txt" ::/
  cp "$tmp/$name" "corpus/fat_walk/$name"
}
mk_fat fat12.img 64 -F 12 -s 1 -r 32
mk_fat fat12-2k.img 96 -F 12 -s 4 -r 16 -n LABEL

# squashfs: the tree plus an xattr, a device, a FIFO and a directory with an index (names
# longer than a metadata block), one seed per compressor, 4 KiB blocks.
sq=$tmp/sqsrc
cp -a "$src" "$sq"
mkdir "$sq/many"
for i in $(seq -w 1 200); do printf "$i" > "$sq/many/entry-with-a-long-name-number-$i"; done
setfattr -n user.k -v value "$sq/a.txt" 2>/dev/null || true
mk_sqfs() { # name mksquashfs-args...
  local name=$1; shift
  mksquashfs "$sq" "corpus/squashfs_walk/$name" -noappend -quiet -no-progress -all-root \
    -b 4K -p "cdev c 644 0 0 1 3" -p "fifo i 644 0 0 f" "$@" >/dev/null
}
if command -v mksquashfs >/dev/null; then
  for c in gzip xz zstd lzo lz4 lzma; do mk_sqfs "$c.sqfs" -comp "$c"; done
  mk_sqfs raw-noexport.sqfs -noI -noD -noF -noX -no-exports -no-fragments
fi

# The probe sees the start of each volume (the first 8 KiB hold every field it reads on
# these), plus a truncated FAT16 and FAT32 boot area (those need MiBs as whole volumes).
for f in corpus/ext_walk/ext2.img corpus/ext_walk/ext4.img corpus/fat_walk/fat12.img; do
  head -c 8192 "$f" > "corpus/probe/$(basename "$f")"
done
truncate -s 16M "$tmp/fat16.img"; mkfs.fat -i 1234abcd --invariant -F 16 "$tmp/fat16.img" >/dev/null
head -c 8192 "$tmp/fat16.img" > corpus/probe/fat16-head.img
truncate -s 40M "$tmp/fat32.img"; mkfs.fat -i 1234abcd --invariant -F 32 "$tmp/fat32.img" >/dev/null
head -c 8192 "$tmp/fat32.img" > corpus/probe/fat32-head.img

# Partition tables: MBR with an extended chain (EBRs packed close together), and GPT.
# Sector-granular starts keep the whole chain in the first 16 KiB.
truncate -s 1M "$tmp/mbr.img"
sfdisk -q --no-reread -X dos "$tmp/mbr.img" >/dev/null 2>&1 <<'T'
label-id: 0x12345678
start=4, size=8, type=83, bootable
start=12, size=20, type=5
start=14, size=4, type=83
start=20, size=4, type=c
start=26, size=4, type=82
start=40, size=8, type=ef
T
head -c 16384 "$tmp/mbr.img" > corpus/partition/mbr-ext.img
# A whole small GPT disk, so the backup header and table at the end are there too.
truncate -s 64K "$tmp/gptsmall.img"
sfdisk -q --no-reread -X gpt "$tmp/gptsmall.img" >/dev/null 2>&1 <<'T' || true
label-id: 01234567-89AB-CDEF-0123-456789ABCDEF
first-lba: 34
start=34, size=60, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="p", uuid=11111111-2222-3333-4444-777777777777
T
cp "$tmp/gptsmall.img" corpus/partition/gpt-whole.img
head -c 512 "$tmp/mbr.img" > corpus/partition/mbr-sector.img

# FAT writes: byte 0 = script length, the script, then the image.
seed_write() { # name script-hex image
  { printf "\\x$(printf %02x $(( ${#2} / 2 )))"; printf "$(echo -n "$2" | sed 's/../\\x&/g')"; cat "$3"; } > "corpus/fat_write/$1"
}
# create f1 in root; write to it; mkdir; create in new dir; write; rename; sync
seed_write w1.img 0000010300001080ff0200020000010001031001555500090700010203090905 corpus/fat_walk/fat12.img
# truncate, unlink, long names, fsync
seed_write w2.img 0000ff050100400801000008000600000100fe030000207709 corpus/fat_walk/fat12-2k.img
ls -l corpus/*
