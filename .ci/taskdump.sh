#!/usr/bin/env bash
# Task dumps (`tasks`): build tokio_app with tokio's unstable task dumps and run the tests that
# need them. tokio (1.48 and later) enables task dumps with `--cfg tokio_unstable` plus its cargo
# feature `taskdump`, which manhole's `tokio` feature turns on; the old `--cfg tokio_taskdump` flag
# is no longer read. The RUSTFLAGS change rebuilds everything, so it gets a target dir of its own.
# Called from .ci/run; runs as is from the workspace root.
set -euo pipefail
cd "$(dirname "$0")/.."

taskdump_target="${MANHOLE_TASKDUMP_TARGET:-target/taskdump}"
flags="--cfg tokio_unstable"

echo "== taskdump: clippy of manhole with $flags"
RUSTFLAGS="$flags" CARGO_TARGET_DIR="$taskdump_target" \
    cargo clippy -p manhole --features tokio --all-targets -- -D warnings

echo "== taskdump: unit tests of manhole with $flags"
RUSTFLAGS="$flags" CARGO_TARGET_DIR="$taskdump_target" \
    cargo test -p manhole --features tokio --lib runtime

echo "== taskdump: tokio_app built with $flags"
RUSTFLAGS="$flags" CARGO_TARGET_DIR="$taskdump_target" \
    cargo build -p manhole-examples --bin tokio_app

echo "== taskdump: e2e tests against that build"
MANHOLE_TASKDUMP_BIN="$PWD/$taskdump_target/debug/tokio_app" \
    cargo test -p manhole-e2e --test tokio
