#!/usr/bin/env bash
# Kills Kurier with SIGKILL at random moments while clients send, restarts it each time, and
# checks that every message that got a 250 is in a Maildir (0 lost; duplicates reported).
# Phases: local delivery, and outbound delivery to a second Kurier.
# Usage: bench/crashtest.sh [KILLS (default 20)] [local|outbound|both]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
exec python3 bench/crashtest.py "$(pwd)/target/release/kurier" "${1:-20}" "${2:-both}"
