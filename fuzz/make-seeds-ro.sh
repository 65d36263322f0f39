#!/bin/bash
# Builds the committed seeds for erofs_walk and iso9660_walk (fixed UUID, times and volume
# dates, so reruns give the same bytes). Re-run only to change them; the outputs are
# committed so the replay test needs no tools. Separate from make-seeds.sh so branches adding
# other drivers' seeds do not edit the same file.
set -euo pipefail
cd "$(dirname "$0")"
export SOURCE_DATE_EPOCH=1700000000 PATH="$PATH:/sbin:/usr/sbin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p corpus/{erofs_walk,iso9660_walk} regressions/{erofs_walk,iso9660_walk}
touch regressions/erofs_walk/.keep regressions/iso9660_walk/.keep

src=$tmp/src
mkdir -p "$src/dir/sub"
printf 'hello\n' > "$src/a.txt"
head -c 6000 /dev/zero | tr '\0' 'b' > "$src/dir/b.bin"
seq 1 3000 > "$src/dir/sub/numbers"
printf 'x' > "$src/A long file name with spaces.txt"
ln -s a.txt "$src/link"
for i in $(seq 1 8); do printf '%s' "$i" > "$src/dir/entry-$i"; done
setfattr -n user.seed -v one "$src/a.txt" 2>/dev/null || true
find "$src" -exec touch -h -d @1700000000 {} +

mk_erofs() { # name mkfs-args...
  local name=$1; shift
  mkfs.erofs --quiet -T1700000000 -U 12345678-1234-1234-1234-123456789abc --all-root "$@" \
    "corpus/erofs_walk/$name" "$src"
}
mk_erofs plain.img
mk_erofs lz4.img -zlz4hc
mk_erofs lz4-legacy.img -zlz4 -Elegacy-compress
mk_erofs lz4-tail.img -zlz4 -Eztailpacking
mk_erofs chunked.img --chunksize=4096
# lzma.img, deflate.img, zstd.img are copies of fs-drivers/tests/erofs_fixtures/ (made with a
# newer mkfs.erofs than Debian's 1.5, which offers only LZ4): this script leaves them alone.

mk_iso() { # name xorriso-args...
  local name=$1; shift
  rm -f "corpus/iso9660_walk/$name"
  xorriso -abort_on FAILURE "$@" -padding 0 -volume_date uuid 2023111422132000 \
    -outdev "corpus/iso9660_walk/$name" -map "$src" / >/dev/null 2>&1
}
mk_iso rr-joliet.iso -joliet on
mk_iso joliet.iso -rockridge off -joliet on
mk_iso plain.iso -rockridge off -joliet off
# Trailing zero blocks (xorriso's minimum volume size, chunk padding) carry nothing a walk
# reads; cut them so the committed seeds stay small (the drivers cope with the shortfall).
python3 - corpus/erofs_walk/*.img corpus/iso9660_walk/*.iso <<'PY'
import sys
for p in sys.argv[1:]:
    d = open(p, 'rb').read()
    end = len(d.rstrip(b'\0'))
    end = -(-end // 4096) * 4096
    open(p, 'wb').write(d[:end])
PY
ls -l corpus/erofs_walk corpus/iso9660_walk
