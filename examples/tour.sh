#!/usr/bin/env bash
# A guided tour: build everything, start the `demo` app with its manhole, and use it the way an
# operator would, through `manhole-cli`. Run from anywhere: `./examples/tour.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --workspace --bins
bin=target/debug

out=$(mktemp)
"$bin/demo" >"$out" 2>/dev/null &
demo=$!
# SIGTERM removes the demo's socket (the default cleanup_on_signals); the tour still removes the
# path it started, in case the demo died otherwise.
cleanup() {
  kill "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
  rm -f "$out" "/tmp/manhole-$demo"
}
trap cleanup EXIT

for _ in $(seq 1 200); do grep -q "manhole listening on" "$out" && break; sleep 0.05; done
grep "manhole listening on" "$out"

show() { printf '\n$ %s\n' "$*"; "$@"; }

show "$bin/manhole-cli" "$demo" info
show "$bin/manhole-cli" "$demo" locals
show "$bin/manhole-cli" "$demo" get requests
show "$bin/manhole-cli" "$demo" set log_filter debug
show "$bin/manhole-cli" --json "$demo" get log_filter
show "$bin/manhole-cli" "$demo" echo hello from the tour
printf '\n$ echo threads | %s %s   # a whole session, piped: banner, every thread, answers\n' "$bin/manhole-cli" "$demo"
# Cut at a blank line (between two threads) after 30 lines, never in the middle of a stack.
echo threads | "$bin/manhole-cli" "$demo" |
  awk 'NR > 30 && /^$/ { print "... (cut here by the tour: the session goes on with every other thread)"; exit } { print }'
printf '\n(the tour stops its demo now; for an interactive session, start one with "%s &" and run "%s <its pid>")\n' "$bin/demo" "$bin/manhole-cli"
