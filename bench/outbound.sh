#!/usr/bin/env bash
# Outbound, Kurier vs Postfix in one run: each relays N messages, submitted by Postfix's
# smtp-source on loopback, to remote.test, whose next hop is Postfix's smtp-sink on
# loopback. Messages per second are counted at the sink (end to end: accepted, queued with
# the queue file fsynced before the 250 on both, delivered onward). Both relay for
# 127.0.0.0/8 without checks (Postfix: mynetworks; Kurier: relay_networks), without TLS to
# the sink, with Postfix's default outbound concurrency (up to 100 deliveries at once, 20 per
# destination; Kurier: workers = 100, per_destination = 20).
#
# The last row adds a blackholed destination: 10% of the messages (on 2 of the
# connections) go to dead.test, whose next hop accepts TCP connections and never says a
# word; the healthy messages' rate is compared with the row without it.
#
# Usage: bench/outbound.sh            (run as root: installs postfix, starts a private instance)
#        OUT_CASES="20:4096:2000" OUT_DEAD=2000 bench/outbound.sh
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

WORK=$(mktemp -d /tmp/kurier-outbench.XXXXXX)
chmod 755 "$WORK"
chattr +T "$WORK" 2>/dev/null || true
KPORT=3625
PPORT=3626
SINKPORT=3627
DEADPORT=3628
DEADIP=127.0.0.3
# The sink keeps each message as a file in memory (tmpfs when there is one): counting them
# is how a run knows it is over, and the sink must not be what limits the rate.
SINKDIR=$(mktemp -d /dev/shm/kurier-sink.XXXXXX 2>/dev/null || mktemp -d "$WORK/sink.XXXXXX")
chown nobody "$SINKDIR"
cleanup() {
  [ -n "${KPID:-}" ] && kill "$KPID" 2>/dev/null || true
  [ -n "${SINKPID:-}" ] && kill "$SINKPID" 2>/dev/null || true
  [ -n "${HOLEPID:-}" ] && kill "$HOLEPID" 2>/dev/null || true
  /usr/sbin/postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1 || true
  rm -rf "$WORK" "$SINKDIR"
}
trap cleanup EXIT

/usr/sbin/smtp-sink -u nobody -h sink.test -d "$SINKDIR/m." "127.0.0.1:$SINKPORT" 1024 &
SINKPID=$!
# The blackhole: accepts connections and holds them, silent.
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1024)
held = []
while True:
    held.append(s.accept()[0])
' "$DEADIP" "$DEADPORT" &
HOLEPID=$!

# --- Postfix: private relay instance ------------------------------------------------------
P="$WORK/postfix"
mkdir -p "$P/etc" "$P/queue" "$P/data"
chown postfix "$P/data"
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
smtpd_client_connection_count_limit = 0
default_process_limit = 200
maillog_file = $P/maillog
maillog_file_prefixes = $P
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
transport_maps = inline:{ remote.test=smtp:[127.0.0.1]:$SINKPORT, dead.test=smtp:[$DEADIP]:$DEADPORT }
smtp_tls_security_level = none
smtp_dns_support_level = disabled
CF
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
smtp unix - - n 100 - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
CF
/usr/sbin/postfix -c "$P/etc" start >/dev/null

# --- Kurier: the same relay ---------------------------------------------------------------
K="$WORK/kurier"
mkdir -p "$K"
cat > "$K/kurier.toml" <<CF
hostname = "mx.bench.test"
domains = ["bench.test"]
relay_networks = ["127.0.0.0/8"]
[[listeners]]
address = "127.0.0.1:$KPORT"
role = "smtp"
[limits]
connections_per_ip = 1000
[dns]
servers = ["127.0.0.1:9"]
[authentication]
verify = false
[delivery]
workers = 100
per_destination = 20
[[routes]]
domains = ["remote.test"]
host = "127.0.0.1"
port = $SINKPORT
tls = "none"
[[routes]]
domains = ["dead.test"]
host = "$DEADIP"
port = $DEADPORT
tls = "none"
[log]
level = "warn"
CF
"$ROOT/target/release/kurier" serve --config "$K/kurier.toml" --data-dir "$K/data" >/dev/null 2>"$K/log" &
KPID=$!
for port in $KPORT $PPORT $SINKPORT; do
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done

sunk() { find "$SINKDIR" -type f | wc -l; }
now() { date +%s.%N; }

# Relays n messages to remote.test on conns connections (and, with dead=1, a tenth more
# to dead.test on two more); prints the healthy messages per second at the sink.
run() { # name port conns size n dead
  local name=$1 port=$2 conns=$3 size=$4 n=$5 dead=${6:-0}
  local before start done_at after dpid=
  before=$(sunk)
  start=$(now)
  if [ "$dead" = 1 ]; then
    /usr/sbin/smtp-source -s 2 -m $((n / 9)) -l "$size" -f sender@src.test -t x@dead.test "127.0.0.1:$port" >/dev/null &
    dpid=$!
  fi
  /usr/sbin/smtp-source -s "$conns" -m "$n" -l "$size" -f sender@src.test -t bob@remote.test "127.0.0.1:$port" >/dev/null
  local deadline=$((SECONDS + 300))
  while [ "$(sunk)" -lt $((before + n)) ] && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
  done_at=$(now)
  after=$(sunk)
  [ -n "$dpid" ] && wait "$dpid"
  if [ $((after - before)) -ne "$n" ]; then
    echo "FAIL $name conns=$conns size=$size dead=$dead: $((after - before)) of $n messages at the sink" >&2
    exit 1
  fi
  awk -v a="$start" -v c="$done_at" -v n="$n" 'BEGIN { printf "%.0f", n / (c - a) }'
}

CASES=${OUT_CASES:-"20:4096:4000 100:4096:4000 20:102400:1000"}
DEAD_N=${OUT_DEAD:-4000}

printf "%-6s %-7s %-6s %-5s | %-12s | %-12s | %-6s\n" conns size msgs dead "Kurier e2e/s" "Postfix e2e/s" ratio
for c in $CASES; do
  IFS=: read -r conns size n <<<"$c"
  k=$(run kurier $KPORT "$conns" "$size" "$n")
  p=$(run postfix $PPORT "$conns" "$size" "$n")
  awk -v c="$conns" -v s="$size" -v n="$n" -v k="$k" -v p="$p" \
    'BEGIN { printf "%-6s %-7s %-6s %-5s | %12s | %12s  | %5.2f\n", c, s, n, "no", k, p, k / p }'
done
# The blackhole row: healthy rate with a tenth more to a dead host, against the same row
# without it (run again here, so both come from the same moment of the machine).
k0=$(run kurier $KPORT 18 4096 "$DEAD_N")
p0=$(run postfix $PPORT 18 4096 "$DEAD_N")
k1=$(run kurier $KPORT 18 4096 "$DEAD_N" 1)
p1=$(run postfix $PPORT 18 4096 "$DEAD_N" 1)
awk -v n="$DEAD_N" -v k0="$k0" -v p0="$p0" -v k1="$k1" -v p1="$p1" 'BEGIN {
  printf "%-6s %-7s %-6s %-5s | %12s | %12s  | %5.2f\n", "18+2", 4096, n, "10%", k1, p1, k1 / p1
  printf "healthy rate with the dead host, of the rate without it: kurier %.0f%% (%s of %s/s), postfix %.0f%% (%s of %s/s)\n", 100 * k1 / k0, k1, k0, 100 * p1 / p0, p1, p0
}'
echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r); postfix $(/usr/sbin/postconf -c "$P/etc" -h mail_version)"
