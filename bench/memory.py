#!/usr/bin/env python3
"""Peak memory of a running Kurier under two loads (bench/memory.sh starts it):

  parallel  N clients each send one message of SIZE octets at the same time
  stalled   N clients each send PART octets of DATA and then stop sending

Prints the server's resident memory before, its peak (VmHWM) during each load, and how many
messages were accepted. Usage: memory.py PORT PID parallel N SIZE [MAILDIR_NEW] | stalled N PART
"""
import os
import socket
import sys
import threading
import time


def rss_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reply(s):
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def client(port, src, body, finish, results):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=600, source_address=(src, 0))
        reply(s)
        for cmd in (b"EHLO bench.test", b"MAIL FROM:<load@bench.test>", b"RCPT TO:<postmaster@localhost>", b"DATA"):
            s.sendall(cmd + b"\r\n")
            reply(s)
        s.sendall(body)
        if finish:
            s.sendall(b".\r\n")
            results.append(reply(s)[:3])
            s.close()
        else:
            results.append(s)
    except Exception as e:  # noqa: BLE001 - reported as a failed client
        results.append(repr(e).encode())


def main():
    port, pid, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    n, size = int(sys.argv[4]), int(sys.argv[5])
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: memory\r\n\r\n" + line * (size // len(line))
    before = rss_kb(pid, "VmRSS")
    results = []
    threads = [
        threading.Thread(target=client, args=(port, f"127.0.{1 + i // 40}.{2 + i % 40}", body, mode == "parallel", results))
        for i in range(n)
    ]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if mode == "stalled":
        time.sleep(2)
    accepted = sum(1 for r in results if r == b"250")
    received = rss_kb(pid, "VmHWM")
    # The peak counts delivery too: wait until every accepted message is in the Maildir.
    delivered = 0
    if len(sys.argv) > 6:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                delivered = len(os.listdir(sys.argv[6]))
            except FileNotFoundError:
                delivered = 0
            if delivered >= accepted:
                break
            time.sleep(0.2)
    held = sum(1 for r in results if isinstance(r, socket.socket))
    peak = rss_kb(pid, "VmHWM")
    print(f"{mode}: {n} clients x {size} octets: RSS before {before // 1024} MiB, peak while receiving "
          f"{received // 1024} MiB, peak with delivery {peak // 1024} MiB, accepted {accepted}, "
          f"delivered {delivered}, holding {held}, {time.time() - started:.1f} s")
    for r in results:
        if isinstance(r, socket.socket):
            r.close()


main()
