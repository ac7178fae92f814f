#!/usr/bin/env bash
# The main job on the bundled example corpus, no downloads: generate the corpus, pack it into
# shards, verify every checksum and show the first block decoded.
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/quickstart
cargo build --release --quiet --bin example-corpus -p ingot
cargo build --release --quiet -p ingot-prep
target/release/example-corpus "$work/corpus"
target/release/prep --input "$work/corpus" --txt-unit paragraph --block-size 256 --out "$work/shards" --force
target/release/prep verify "$work/shards"
target/release/prep inspect "$work/shards" --blocks 1 --decode
