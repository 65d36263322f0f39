#!/bin/bash
# Builds the committed seeds of the `compressed` target (fuzz/corpus/compressed/): a 320 KiB
# input (text, zeros, text) written by each codec's CLI in each way that indexes differently,
# behind the mode byte 0x01, and one cached index behind 0x00. Outputs are committed.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=corpus/compressed
mkdir -p "$out"
# No `| head` here: with pipefail its SIGPIPE to the writer would fail the script.
python3 -c '
import sys
text = "".join("seed %d\n" % i for i in range(40000)).encode()
sys.stdout.buffer.write(text[:96 << 10] + bytes(128 << 10) + text[-(96 << 10):])
' >"$tmp/in"
seed() { # seed NAME: the mode byte for a compressed file, then the file
    { printf '\001'; cat "$tmp/$1"; } >"$out/$1"
}
gzip -n -c "$tmp/in" >"$tmp/one.gz" && seed one.gz
# Past one checkpoint span (4 MiB), with text across the span's end: a piece that starts
# mid-stream from a window of text. zlib with memLevel 1 ends a deflate block every 128
# symbols, so runs of zeros still leave block boundaries (gzip's blocks of zeros span MiBs).
python3 -c '
import sys, zlib
text = "".join("seed %d\n" % i for i in range(40000)).encode()
data = text[:96 << 10] + bytes((4 << 20) - (160 << 10)) + text[:160 << 10] + bytes(1 << 20) + text[-(96 << 10):]
z = zlib.compressobj(9, zlib.DEFLATED, 31, 1)
sys.stdout.buffer.write(z.compress(data) + z.flush())
' >"$tmp/spans.gz" && seed spans.gz
bgzip -c "$tmp/in" >"$tmp/bgzf.gz" && seed bgzf.gz
xz -T1 -c "$tmp/in" >"$tmp/one.xz" && seed one.xz
xz -T2 --block-size=64KiB -c "$tmp/in" >"$tmp/blocks.xz" && seed blocks.xz
# Random bytes in place of the zeros: LZMA2 stores them as they are, so the blocks are split
# into stored chunks and LZMA runs.
python3 -c '
import random, sys
text = "".join("seed %d\n" % i for i in range(40000)).encode()
sys.stdout.buffer.write(text[:96 << 10] + random.Random(14).randbytes(128 << 10) + text[-(96 << 10):])
' >"$tmp/in-random"
xz -T2 --block-size=128KiB -c "$tmp/in-random" >"$tmp/stored.xz" && seed stored.xz
zstd -q -c "$tmp/in" >"$tmp/one.zst" && seed one.zst
split -b 65536 "$tmp/in" "$tmp/part."
for p in "$tmp"/part.*; do zstd -q -c "$p"; done >"$tmp/concat.zst" && seed concat.zst
bzip2 -1 -c "$tmp/in" >"$tmp/one.bz2" && seed one.bz2
pbzip2 -1 -b1 -p2 -c "$tmp/in" >"$tmp/streams.bz2" && seed streams.bz2
# A cached index, as imgmount writes it (the file is no disk image, so info fails after).
cargo build -q --manifest-path ../Cargo.toml --bin imgmount
../target/debug/imgmount info --cache-dir "$tmp/cache" "$tmp/blocks.xz" >/dev/null 2>&1 || true
{ printf '\000'; cat "$tmp"/cache/*.idx; } >"$out/blocks.xz.idx"
../target/debug/imgmount info --cache-dir "$tmp/cache-stored" "$tmp/stored.xz" >/dev/null 2>&1 || true
{ printf '\000'; cat "$tmp"/cache-stored/*.idx; } >"$out/stored.xz.idx"
# And a gzip checkpoint index (its windows file is not part of the seed).
../target/debug/imgmount info --cache-dir "$tmp/cache-gz" "$tmp/spans.gz" >/dev/null 2>&1 || true
{ printf '\000'; cat "$tmp"/cache-gz/*.idx; } >"$out/spans.gz.idx"
