#!/bin/sh
# Rebuilds the luks_header seeds: a mode byte (1: the harness re-seals LUKS2 checksums) and the
# first bytes of LUKS volumes cryptsetup formats on plain files (headers and JSON only, no key
# material: the harness zero-extends the input to 4 MiB). UUIDs and salts are random, so the
# bytes differ run to run; what matters is that each seed parses.
set -eu
cd "$(dirname "$0")/corpus/luks_header"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'seed' > "$tmp/pw"
seed() { # name size-to-keep mode cryptsetup-args...
    name=$1 keep=$2 mode=$3
    shift 3
    truncate -s 8M "$tmp/img"
    cryptsetup luksFormat -q --key-file "$tmp/pw" "$@" "$tmp/img"
    { printf "\\$mode"; head -c "$keep" "$tmp/img"; } > "$name"
    rm -f "$tmp/img"
}
seed luks1-xts 592 000 --type luks1 --pbkdf-force-iterations 1000 --key-size 256 --align-payload 2048
seed luks1-cbc-essiv 592 000 --type luks1 --pbkdf-force-iterations 1000 --cipher aes-cbc-essiv:sha256 --key-size 128 --hash sha1 --align-payload 2048
seed luks2-pbkdf2 32768 001 --type luks2 --luks2-metadata-size 16k --luks2-keyslots-size 1m --pbkdf pbkdf2 --pbkdf-force-iterations 1000
seed luks2-argon2id-4k 32768 001 --type luks2 --luks2-metadata-size 16k --luks2-keyslots-size 1m --pbkdf argon2id --pbkdf-memory 32 --pbkdf-force-iterations 4 --pbkdf-parallel 1 --sector-size 4096
