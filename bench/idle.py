"""10,000 simultaneous idle sessions against Kurier.

Opens N connections (each greeted and past EHLO), then reports the server's resident memory
per session and how long a new client waits for its greeting and EHLO reply meanwhile.
Usage: python3 bench/idle.py KURIER_BINARY [N]   (run by bench/idle.sh)
"""
import asyncio, os, resource, socket, subprocess, sys, tempfile, time

BIN = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10000


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def session(port, sessions, sem):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        await asyncio.wait_for(r.readline(), 30)
        w.write(b"EHLO idle.test\r\n")
        while True:
            line = await asyncio.wait_for(r.readline(), 30)
            if line[3:4] == b" ":
                break
        sessions.append((r, w))


async def probe(port):
    t = time.monotonic()
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    await asyncio.wait_for(r.readline(), 30)
    w.write(b"EHLO probe.test\r\n")
    while (await asyncio.wait_for(r.readline(), 30))[3:4] != b" ":
        pass
    w.write(b"QUIT\r\n")
    await asyncio.wait_for(r.readline(), 30)
    w.close()
    return time.monotonic() - t


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = tempfile.mkdtemp(prefix="kurier-idle-")
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    with open(os.path.join(d, "k.toml"), "w") as f:
        f.write('[[listeners]]\naddress = "127.0.0.1:%d"\nrole = "smtp"\n[limits]\nconnections = %d\n'
                'connections_per_ip = %d\ncommand_timeout = "10m"\n[dns]\nservers = ["127.0.0.1:9"]\n[authentication]\nverify = false\n'
                '[log]\nlevel = "warn"\n' % (port, N + 100, N + 100))
    proc = subprocess.Popen(["sh", "-c", 'ulimit -n $(ulimit -Hn); exec "$0" "$@"', BIN, "serve",
                             "--config", os.path.join(d, "k.toml"), "--data-dir", os.path.join(d, "data")],
                            stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    base = rss_kb(proc.pid)
    sessions, sem = [], asyncio.Semaphore(500)
    t = time.monotonic()
    await asyncio.gather(*(session(port, sessions, sem) for _ in range(N)))
    opened = time.monotonic() - t
    await asyncio.sleep(1)
    full = rss_kb(proc.pid)
    latency = await probe(port)
    print("idle sessions: %d opened in %.1f s" % (len(sessions), opened))
    print("server RSS: %d kB before, %d kB with the sessions: %.1f KiB per session" %
          (base, full, (full - base) / len(sessions)))
    print("new client while they wait: greeting + EHLO + QUIT in %.1f ms" % (latency * 1000))
    for r, w in sessions:
        w.close()
    proc.terminate()
    proc.wait(timeout=60)


asyncio.run(main())
