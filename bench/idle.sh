#!/usr/bin/env bash
# 10,000 idle sessions: server memory per session and responsiveness. Usage: bench/idle.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
exec python3 bench/idle.py "$(pwd)/target/release/kurier" "${1:-10000}"
