#!/usr/bin/env bash
# Peak memory of Kurier (release build, default limits) with 50 clients sending a 20 MB
# message each at the same time, and with 1,000 clients stalled in DATA (100 kB each).
# The target: both under 300 MiB (limits.message_memory is 256 MiB).
# Usage: bench/memory.sh     (loopback only; uses 127.0.1.0/24 .. 127.0.26.0/24 as sources)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d /tmp/kurier-memory.XXXXXX)
cleanup() { [ -n "${KPID:-}" ] && kill "$KPID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
run() {
  extra=$1; shift
  rm -rf "$WORK/data"
  cat > "$WORK/kurier.toml" <<CF
hostname = "mx.bench.test"
domains = ["localhost"]
[[listeners]]
address = "127.0.0.1:0"
role = "smtp"
[authentication]
verify = false
[dns]
servers = ["127.0.0.1:9"]
[limits]
$extra
CF
  target/release/kurier serve --config "$WORK/kurier.toml" --data-dir "$WORK/data" >"$WORK/log" 2>&1 &
  KPID=$!
  for _ in $(seq 100); do [ -s "$WORK/data/listening" ] && break; sleep 0.1; done
  port=$(sed -n 's/^smtp .*://p' "$WORK/data/listening")
  python3 bench/memory.py "$port" "$KPID" "$@"
  kill "$KPID"; wait "$KPID" 2>/dev/null || true; KPID=
}
run "" parallel 50 20000000 "$WORK/data/mail/localhost/postmaster/new"
# A connection limit above 1,000 so that stress mode (80% of it) does not cut the stalled
# clients off while they are counted: this row measures the memory budget alone.
run "connections = 2000" stalled 1000 100000
