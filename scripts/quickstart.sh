#!/usr/bin/env bash
# The main job on the bundled example corpus, no downloads: generate the corpus, pack it into
# shards, verify every checksum, train the tiny model on the CPU for about a minute, and sample.
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/quickstart
cargo build --release --quiet --bin example-corpus -p ingot
cargo build --release --quiet -p ingot-prep -p ingot-train
target/release/example-corpus "$work/corpus"
target/release/prep --input "$work/corpus" --txt-unit paragraph --block-size 256 --out "$work/shards" --force
target/release/prep verify "$work/shards"
target/release/prep inspect "$work/shards" --blocks 1 --decode
rm -rf "$work/run"
target/release/train --shards "$work/shards" --out "$work/run" --model tiny --steps 400 --lr 3e-3 --eval-every 100 --save-every 200
target/release/train sample --checkpoint "$work/run/checkpoints/best" --prompt "The lantern" --max-new-tokens 200
