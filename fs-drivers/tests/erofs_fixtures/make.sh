#!/bin/bash
# Builds the committed EROFS images with the compressors Debian 12's erofs-utils 1.5 lacks
# (lzma, deflate, zstd), so CI exercises those decoders without a newer mkfs.erofs. Needs
# erofs-utils >= 1.8 built with liblzma, zlib and libzstd: MKFS=/path/to/mkfs.erofs bash make.sh
# (these were made with erofs-utils 1.9.3 built from source). manifest.txt lists every regular
# file's path, size and sha256 for the test to check against.
set -euo pipefail
cd "$(dirname "$0")"
MKFS=${MKFS:-mkfs.erofs}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/src
mkdir -p "$src/dir/sub"
python3 - "$src" <<'PY'
import random, sys
root = sys.argv[1]
r = random.Random(20261205)
words = ["alpha ", "beta ", "gamma\n", "delta ", "epsilon "]
open(f"{root}/text", "w").write("".join(r.choice(words) for _ in range(12000)))
open(f"{root}/noise", "wb").write(bytes(r.getrandbits(8) for _ in range(9000)))
open(f"{root}/dir/zeros", "wb").write(bytes(40000))
open(f"{root}/dir/sub/small", "w").write("small file\n")
open(f"{root}/empty", "w").close()
PY
ln -s dir/sub/small "$src/link"
find "$src" -exec touch -h -d @1700000000 {} +
for z in lzma deflate zstd; do
  rm -f "$z.img"
  "$MKFS" --quiet -T1700000000 --all-root -U 12345678-1234-1234-1234-123456789abc \
    "-z$z" -C16384 "$z.img" "$src"
done
(cd "$src" && find . -type f | sort | while read -r f; do
  printf '%s %s %s\n' "${f#./}" "$(stat -c %s "$f")" "$(sha256sum < "$f" | cut -d' ' -f1)"
done) > manifest.txt
ls -l ./*.img
