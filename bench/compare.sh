#!/usr/bin/env bash
# Kurier vs Postfix, side by side in one run, same machine, same load generator.
#
# Both servers accept mail for bench.test on a loopback port and deliver it into a Maildir,
# with their normal durability (Postfix fsyncs its queue file and the Maildir file; Kurier
# fsyncs before every 250). Postfix's own smtp-source drives each in turn; after each run we
# wait until every message is in the Maildir and count them. A row with a missing message
# is a failure, not a number.
#
# Usage: bench/compare.sh [quick]     (run as root: installs postfix, starts a private instance;
#                                      ends with the outbound rows of bench/outbound.sh)
#        BENCH_CASES="20:4096:2000 100:4096:2000" bench/compare.sh   (chosen rows)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ ! -x /usr/sbin/smtp-source ] || [ ! -x /usr/sbin/postfix ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix
fi
cargo build --release --locked -q
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d /tmp/kurier-bench.XXXXXX)
chmod 755 "$WORK"
# Keep each server's files apart on disk. Postfix deletes a queue file for every message; on
# ext4 without a journal (as on the development machine) a new inode is not taken from the
# recently deleted ones of its block group for 60 s or more, and skipping them costs every
# later file creation in that group CPU time. With the "T" flag the two trees below are
# spread over block groups like top-level directories, so one server's deletions do not tax
# the other's creations. Each still pays for its own. (No effect where chattr cannot set it.)
chattr +T "$WORK" 2>/dev/null || true
KPORT=3525
PPORT=3526
cleanup() {
  [ -n "${KPID:-}" ] && kill "$KPID" 2>/dev/null || true
  /usr/sbin/postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- Postfix: private instance, virtual Maildir delivery for bob@bench.test -------------
P="$WORK/postfix"
mkdir -p "$P/etc" "$P/queue" "$P/data" "$P/mail"
chown postfix "$P/data"
chown 65534:65534 "$P/mail"
cat > "$P/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $P/queue
data_directory = $P/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.bench.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = bench.test
virtual_mailbox_base = $P/mail
virtual_mailbox_maps = inline:{ bob@bench.test=bob/ }
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
smtpd_client_connection_count_limit = 0
default_process_limit = 200
maillog_file = $P/maillog
maillog_file_prefixes = $P
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
CF
# Written whole, from nothing in /etc/postfix: only the services this instance uses.
cat > "$P/etc/master.cf" <<CF
127.0.0.1:$PPORT inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
CF
/usr/sbin/postfix -c "$P/etc" start >/dev/null

# --- Kurier: bob@bench.test with a Maildir -----------------------------------------------
K="$WORK/kurier"
mkdir -p "$K"
cat > "$K/kurier.toml" <<CF
hostname = "mx.bench.test"
domains = ["bench.test"]
[[listeners]]
address = "127.0.0.1:$KPORT"
role = "smtp"
[aliases]
"bob@bench.test" = "postmaster@bench.test"
[limits]
connections_per_ip = 1000
[dns]
servers = ["127.0.0.1:9"]
[authentication]
verify = false
[log]
level = "warn"
CF
"$ROOT/target/release/kurier" serve --config "$K/kurier.toml" --data-dir "$K/data" >/dev/null 2>"$K/log" &
KPID=$!
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$KPORT) 2>/dev/null && break
  sleep 0.1
done
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$PPORT) 2>/dev/null && break
  sleep 0.1
done

count() { find "$1" -type f 2>/dev/null | wc -l; }
now() { date +%s.%N; }

# Peak RSS: Kurier's one process (VmHWM); Postfix's processes summed at the end of a run.
postfix_rss_kb() {
  local total=0 master
  master=$(tr -d ' ' < "$P/queue/pid/master.pid")
  for pid in "$master" $(ps -o pid= --ppid "$master"); do
    local rss
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${rss:-0}))
  done
  echo "$total"
}

run() { # name port maildir conns size count
  local name=$1 port=$2 maildir=$3 conns=$4 size=$5 n=$6
  local before start accepted_at done_at after
  before=$(count "$maildir")
  start=$(now)
  /usr/sbin/smtp-source -s "$conns" -m "$n" -l "$size" -f sender@src.test -t bob@bench.test "127.0.0.1:$port" >/dev/null
  accepted_at=$(now)
  local deadline=$((SECONDS + 300))
  while [ "$(count "$maildir")" -lt $((before + n)) ] && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  done_at=$(now)
  after=$(count "$maildir")
  if [ $((after - before)) -ne "$n" ]; then
    echo "FAIL $name conns=$conns size=$size: $((after - before)) of $n messages delivered" >&2
    exit 1
  fi
  awk -v a="$start" -v b="$accepted_at" -v c="$done_at" -v n="$n" \
    'BEGIN { printf "%.0f %.0f", n / (b - a), n / (c - a) }'
}

if [ -n "${BENCH_CASES:-}" ]; then # e.g. BENCH_CASES="20:4096:2000" (conns:size:messages)
  CASES=$BENCH_CASES
elif [ "${1:-}" = "quick" ]; then
  CASES="1:4096:300 20:4096:1000 100:4096:1000 20:102400:200"
else
  CASES="1:4096:1000 20:4096:4000 100:4096:4000 20:102400:1000"
fi

printf "%-6s %-7s %-6s | %-22s | %-22s | %-15s\n" conns size msgs "Kurier acc/s  e2e/s" "Postfix acc/s  e2e/s" "ratio acc  e2e"
for c in $CASES; do
  IFS=: read -r conns size n <<<"$c"
  read -r ka ke <<<"$(run kurier $KPORT "$K/data/mail/bench.test/postmaster/new" "$conns" "$size" "$n")"
  read -r pa pe <<<"$(run postfix $PPORT "$P/mail/bob/new" "$conns" "$size" "$n")"
  awk -v c="$conns" -v s="$size" -v n="$n" -v ka="$ka" -v ke="$ke" -v pa="$pa" -v pe="$pe" \
    'BEGIN { printf "%-6s %-7s %-6s | %8s %10s   | %8s %10s    | %5.2f %6.2f\n", c, s, n, ka, ke, pa, pe, ka / pa, ke / pe }'

done
echo
echo "peak RSS: kurier $(awk '/VmHWM/ {print $2}' /proc/$KPID/status) kB (one process, peak); postfix $(postfix_rss_kb) kB (RSS of master and children summed at the end; shared pages count once per process)"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r); postfix $(/usr/sbin/postconf -c "$P/etc" -h mail_version)"

# The outbound rows: each server relays to a sink on loopback, and a row sends a tenth more
# to a blackholed host (bench/outbound.sh, started once this run's servers are stopped, so
# that the two never share the machine). BENCH_OUTBOUND=0 leaves them out.
if [ "${BENCH_OUTBOUND:-1}" != 0 ] && [ -z "${BENCH_CASES:-}" ]; then
  cleanup
  trap - EXIT
  echo
  echo "outbound, relayed to a sink (bench/outbound.sh):"
  if [ "${1:-}" = "quick" ]; then
    OUT_CASES="20:4096:1000 100:4096:1000 20:102400:200" OUT_DEAD=1000 "$ROOT/bench/outbound.sh"
  else
    "$ROOT/bench/outbound.sh"
  fi
fi
