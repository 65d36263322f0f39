#!/bin/bash
# Builds the seeds of the virtual-disk fuzz targets (vdisk_vhd, vdisk_vdi, vdisk_sparse) under
# fuzz/corpus/: small disks converted by qemu-img and img2simg, plus an Android sparse image
# with every chunk kind, each written in the targets' input encoding (records of
# [u32 LE sector][u16 LE length][bytes] for the non-zero sectors; see harness/vdisk.rs).
# qemu-img stamps times and UUIDs, so a re-run changes the bytes, not the structures.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p corpus/{vdisk_vhd,vdisk_vdi,vdisk_sparse} regressions/{vdisk_vhd,vdisk_vdi,vdisk_sparse}

# A 1 MiB disk: text in sector 0, a repeated pattern, a zero gap, a few scattered sectors.
raw=$tmp/disk.raw
truncate -s 1M "$raw"
printf 'imgmount vdisk seed\n' | dd of="$raw" conv=notrunc status=none
for i in $(seq 1 64); do printf '\xde\xad\xbe\xef'; done | dd of="$raw" bs=512 seek=8 conv=notrunc status=none
printf 'far' | dd of="$raw" bs=512 seek=1500 conv=notrunc status=none
printf 'end' | dd of="$raw" bs=512 seek=2047 conv=notrunc status=none

encode() { # image output
  python3 - "$1" "$2" <<'PY'
import struct, sys
data = open(sys.argv[1], 'rb').read()
out = bytearray()
s, n = 0, (len(data) + 511) // 512
while s < n:
    if not any(data[s * 512:(s + 1) * 512]):
        s += 1
        continue
    e = s
    while e < n and e - s < 64 and any(data[e * 512:(e + 1) * 512]):
        e += 1
    piece = data[s * 512:e * 512]
    out += struct.pack('<IH', s, len(piece)) + piece
    s = e
# The last sector always, so the file keeps its length (a VHD's footer is its last 512 bytes).
last = (len(data) - 1) // 512
out += struct.pack('<IH', last, len(data) - last * 512) + data[last * 512:]
open(sys.argv[2], 'wb').write(out)
PY
}

qemu-img convert -O vpc -o subformat=fixed "$raw" "$tmp/fixed.vhd"
qemu-img convert -O vpc -o subformat=dynamic "$raw" "$tmp/dynamic.vhd"
qemu-img convert -O vhdx -o block_size=1M "$raw" "$tmp/dynamic.vhdx"
qemu-img convert -O vdi "$raw" "$tmp/dynamic.vdi"
qemu-img convert -O vdi -o static=on "$raw" "$tmp/static.vdi"
img2simg "$raw" "$tmp/disk.simg"
# The dynamic VHDX again, with a log entry to replay (block 0 turned into a zero block).
python3 - "$tmp/dynamic.vhdx" "$tmp/dirty-log.vhdx" <<'PY'
import struct, sys
def crc32c(data):
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    c = 0xffffffff
    for b in data:
        c = table[(c ^ b) & 0xff] ^ (c >> 8)
    return c ^ 0xffffffff
def fix(buf, at, n):
    buf[at + 4:at + 8] = b'\0' * 4
    buf[at + 4:at + 8] = struct.pack('<I', crc32c(bytes(buf[at:at + n])))
img = bytearray(open(sys.argv[1], 'rb').read())
h = 64 << 10
log_len, log_at = struct.unpack_from('<IQ', img, h + 68)
r = 192 << 10
bat = next(struct.unpack_from('<Q', img, r + 16 + i * 32 + 16)[0]
           for i in range(struct.unpack_from('<I', img, r + 8)[0])
           if img[r + 16 + i * 32:r + 32 + i * 32] == bytes.fromhex('6677c22d23f600429d64115e9bfd4a08'))
sector = bytearray(img[bat:bat + 4096])
sector[0:8] = struct.pack('<Q', 2)
guid, seq = b'\x4c' * 16, 5
e = bytearray(8192)
struct.pack_into('<4sIIIQII16sQQ', e, 0, b'loge', 0, 8192, 0, seq, 1, 0, guid,
                 len(img) & ~0xfffff, len(img) & ~0xfffff)
struct.pack_into('<4sI8sQQ', e, 64, b'desc', 0, bytes(sector[:8]), bat, seq)
e[64 + 4:64 + 8] = sector[4092:]
struct.pack_into('<4sI', e, 4096, b'data', seq >> 32)
e[4096 + 8:4096 + 4092] = sector[8:4092]
struct.pack_into('<I', e, 8188, seq & 0xffffffff)
fix(e, 0, 8192)
img[log_at:log_at + 8192] = e
for at in (64 << 10, 128 << 10):
    img[at + 48:at + 64] = guid
    fix(img, at, 4096)
open(sys.argv[2], 'wb').write(img)
PY
for f in fixed.vhd dynamic.vhd dynamic.vhdx dirty-log.vhdx; do encode "$tmp/$f" "corpus/vdisk_vhd/$f"; done
for f in dynamic.vdi static.vdi; do encode "$tmp/$f" "corpus/vdisk_vdi/$f"; done
encode "$tmp/disk.simg" corpus/vdisk_sparse/img2simg.simg

# Every chunk kind: raw, fill, crc32, don't-care, raw, zero fill, crc32 (4 KiB blocks).
python3 - "$tmp/kinds.simg" <<'PY'
import struct, sys, zlib
chunks, expanded = b'', b''
def chunk(kind, blocks, data):
    global chunks
    chunks += struct.pack('<HHII', kind, 0, blocks, 12 + len(data)) + data
raw1 = bytes((i * 7) & 0xff for i in range(8192))
chunk(0xcac1, 2, raw1); expanded += raw1
chunk(0xcac2, 3, b'\x01\x02\x03\x04'); expanded += b'\x01\x02\x03\x04' * 3072
chunk(0xcac4, 0, struct.pack('<I', zlib.crc32(expanded)))
chunk(0xcac3, 5, b''); expanded += bytes(5 * 4096)
raw2 = bytes((i * 13) & 0xff for i in range(4096))
chunk(0xcac1, 1, raw2); expanded += raw2
chunk(0xcac2, 1, b'\0\0\0\0'); expanded += bytes(4096)
chunk(0xcac4, 0, struct.pack('<I', zlib.crc32(expanded)))
hdr = struct.pack('<IHHHHIIII', 0xed26ff3a, 1, 0, 28, 12, 4096, len(expanded) // 4096, 7, 0)
open(sys.argv[1], 'wb').write(hdr + chunks)
PY
encode "$tmp/kinds.simg" corpus/vdisk_sparse/kinds.simg
touch regressions/vdisk_vhd/.keep regressions/vdisk_vdi/.keep regressions/vdisk_sparse/.keep
ls -l corpus/vdisk_*
