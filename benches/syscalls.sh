#!/usr/bin/env bash
# Measures the system calls a mount daemon makes after entering its sandbox, for the list in
# src/sandbox/seccomp.rs: strace -f over a full walk (every file read, every xattr listed), a
# FAT read-write workload with sync, `imgmount umount`, then a second mount ended by SIGTERM.
# Run as root with a debug or release imgmount:  bash benches/syscalls.sh [target/debug/imgmount]
# Prints each call with its count, and the calls that the filter refused (EPERM after the
# filter, with IMGMOUNT_TEST_SECCOMP=errno so a test build does not kill instead).
set -euo pipefail
BIN=$(realpath "${1:-target/debug/imgmount}")
command -v strace >/dev/null || { echo "SKIP: strace not installed"; exit 0; }
W=$(mktemp -d)
trap 'umount -l "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir "$W/mnt" "$W/src"
truncate -s 64M "$W/fat.img"
mkfs.vfat -F 32 "$W/fat.img" >/dev/null
for i in $(seq 1 40); do head -c $((i * 5000)) /dev/urandom >"$W/src/f$i"; done
mcopy -s -i "$W/fat.img" "$W/src" ::/tree

workload() {
    local m=$1
    find "$m" -type f -exec cat {} + >/dev/null
    getfattr -R -d "$m" >/dev/null 2>&1 || true
    stat "$m"/tree/* >/dev/null
    mkdir "$m/new"
    head -c 300000 /dev/urandom >"$m/new/big"
    echo x >>"$m/tree/f1"
    mv "$m/tree/f2" "$m/new/f2"
    truncate -s 1000 "$m/tree/f3"
    rm "$m/tree/f4"
    sync "$m/new/big"
    rmdir "$m/new" 2>/dev/null || true
}

export IMGMOUNT_TEST_SECCOMP=errno
strace -f -qq -o "$W/t1" "$BIN" -o rw -f "$W/fat.img" "$W/mnt" &
for _ in $(seq 100); do mountpoint -q "$W/mnt" && break; sleep 0.1; done
workload "$W/mnt"
"$BIN" umount "$W/mnt"
wait
strace -f -qq -o "$W/t2" "$BIN" -f "$W/fat.img" "$W/mnt" &
for _ in $(seq 100); do mountpoint -q "$W/mnt" && break; sleep 0.1; done
find "$W/mnt" -type f -exec cat {} + >/dev/null
pkill -TERM -f "^$BIN -f $W/fat.img" || true
wait
fsck.fat -n "$W/fat.img" >/dev/null
# Only what follows the second seccomp() (the main filter) in the daemon and the threads it
# starts afterwards (the filter forbids any other clone) is the serving daemon's; the
# watcher, forked earlier, is not filtered.
for t in "$W/t1" "$W/t2"; do
    awk '/seccomp\(SECCOMP_SET_MODE_FILTER/ { if (++n == 2) keep[$1] = 1; next }
         n >= 2 && ($1 in keep) { print; if ($0 ~ /clone.*= [0-9]+$/) keep[$NF] = 1 }' "$t"
done >"$W/after"
echo "== calls after the filter (count name)"
sed -E 's/^[0-9]+ +(<\.\.\. )?([a-z0-9_]+).*/\2/' "$W/after" | grep -E '^[a-z]' | sort | uniq -c | sort -rn
echo "== refused"
grep -E '= -1 EPERM' "$W/after" | sed -E 's/^[0-9]+ +([a-z0-9_]+\(.{0,40}).*/\1/' | sort | uniq -c || true
