#!/bin/bash
# Builds the committed seeds of the container fuzz targets (fuzz/corpus/qcow2, corpus/vmdk)
# with qemu-img from the tiny ext2 seed of ext_walk; re-run only to change them.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p corpus/qcow2 corpus/vmdk
src=corpus/ext_walk/ext2.img

q() { # name qemu-img-convert-options...
  local name=$1; shift
  qemu-img convert -O qcow2 "$@" "$src" "corpus/qcow2/$name"
}
q deflate-512.qcow2 -c -o cluster_size=512
q v2-4k.qcow2 -o compat=0.10,cluster_size=4k
q zstd-4k.qcow2 -c -o compression_type=zstd,cluster_size=4k
q extl2-16k.qcow2 -o extended_l2=on,cluster_size=16k

v() { # name subformat
  qemu-img convert -O vmdk -o "subformat=$2" "$src" "$tmp/$1"
}
v stream.vmdk streamOptimized
cp "$tmp/stream.vmdk" corpus/vmdk/stream.vmdk
v sparse.vmdk monolithicSparse
cp "$tmp/sparse.vmdk" corpus/vmdk/sparse.vmdk
# A descriptor file alone (its extent file is not there under the fuzzer).
v flat.vmdk monolithicFlat
cp "$tmp/flat.vmdk" corpus/vmdk/flat-descriptor.vmdk
ls -l corpus/qcow2 corpus/vmdk
