"""Crash-safety test for Kurier: no acknowledged message is ever lost.

Several clients send messages continuously, each with a unique id in its Subject, and log
the id only once the server's 250 has arrived. Meanwhile the server is killed with SIGKILL at
random moments and restarted. At the end every logged id must be in a Maildir: 0 lost.
"delivered" may exceed "acknowledged": a message made durable just before a kill never got
its 250. Duplicates come from kills between a delivery and the record of it (at-least-once
delivery); they are counted and reported, not failures.

Phase "outbound": the server under test relays to a second Kurier (a route to its port),
and is killed during outbound delivery; every acknowledged id must arrive at the peer.

Usage: python3 bench/crashtest.py KURIER_BINARY [KILLS] [PHASE: local|outbound|both]
"""
import os, random, signal, smtplib, socket, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
KILLS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
PHASE = sys.argv[3] if len(sys.argv) > 3 else "both"
CLIENTS = 4
DEADLINE = time.time() + 600  # every loop below is bounded by this


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, seconds=20):
    end = time.time() + seconds
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not listen on %d" % port)


class Server:
    def __init__(self, name, domains, tables=""):
        self.dir = tempfile.mkdtemp(prefix="kurier-crash-%s-" % name)
        self.port = free_port()
        self.submission = free_port()
        with open(os.path.join(self.dir, "k.toml"), "w") as f:
            f.write('hostname = "%s.crash.test"\ndomains = %s\n'
                    '[[listeners]]\naddress = "127.0.0.1:%d"\nrole = "smtp"\n'
                    '[[listeners]]\naddress = "127.0.0.1:%d"\nrole = "submission"\n'
                    '[limits]\nconnections_per_ip = 1000\n[dns]\nservers = ["127.0.0.1:9"]\n[authentication]\nverify = false\n'
                    '[log]\nlevel = "warn"\n%s' % (name, domains, self.port, self.submission, tables))
        self.proc = None

    def add_user(self, address, password):
        subprocess.run([BIN, "user", "add", address, "--config", os.path.join(self.dir, "k.toml"),
                        "--data-dir", os.path.join(self.dir, "data")], input=(password + "\n").encode(),
                       check=True, stdout=subprocess.DEVNULL)

    def start(self):
        self.proc = subprocess.Popen([BIN, "serve", "--config", os.path.join(self.dir, "k.toml"),
                                      "--data-dir", os.path.join(self.dir, "data")],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "a"))
        wait_port(self.port)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def maildir_ids(self, domain, user):
        ids = []
        new = os.path.join(self.dir, "data", "mail", domain, user, "new")
        for name in os.listdir(new) if os.path.isdir(new) else []:
            with open(os.path.join(new, name), "rb") as f:
                for line in f:
                    if line.startswith(b"Subject: crash-"):
                        ids.append(line.split(b"crash-")[1].strip().decode())
                        break
        return ids

    def queued(self):
        q = os.path.join(self.dir, "data", "spool", "queue")
        return len(os.listdir(q)) if os.path.isdir(q) else 0


def sender(server, rcpt, stop, acked, lock, n, auth):
    mail_from = auth[0] if auth else "sender@src.test"
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    seq = 0
    while not stop.is_set() and time.time() < DEADLINE:
        try:
            with smtplib.SMTP("127.0.0.1", server.submission if auth else server.port, timeout=10) as c:
                if auth:
                    c.starttls(context=ctx)
                    c.login(*auth)
                while not stop.is_set():
                    seq += 1
                    mid = "%d-%d" % (n, seq)
                    c.sendmail(mail_from, [rcpt], ("Subject: crash-%s\r\n\r\nbody %s\r\n" % (mid, mid)).encode())
                    with lock:
                        acked.append(mid)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.02)  # killed mid-session: reconnect (the unacknowledged one is not counted)


def run_phase(name, server, rcpt, check, auth=None):
    stop, lock, acked = threading.Event(), threading.Lock(), []
    threads = [threading.Thread(target=sender, args=(server, rcpt, stop, acked, lock, i, auth)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for k in range(KILLS):
        time.sleep(random.uniform(0.05, 0.4))
        server.kill9()
        time.sleep(random.uniform(0.0, 0.1))
        server.start()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    # Let everything queued be delivered (bounded).
    end = time.time() + 120
    while time.time() < end:
        delivered = check()
        if set(acked) <= set(delivered):
            break
        time.sleep(0.2)
    delivered = check()
    lost = sorted(set(acked) - set(delivered), key=lambda s: tuple(map(int, s.split("-"))))
    dups = len(delivered) - len(set(delivered))
    print("%-8s kills=%d acknowledged=%d delivered=%d lost=%d duplicates=%d" %
          (name, KILLS, len(acked), len(set(delivered)), len(lost), dups))
    if lost:
        print("LOST:", lost[:20])
    return not lost


ok = True
if PHASE in ("local", "both"):
    s = Server("local", '["crash.test"]')
    s.start()
    ok &= run_phase("local", s, "postmaster@crash.test", lambda: s.maildir_ids("crash.test", "postmaster"))
    s.stop()
if PHASE in ("outbound", "both"):
    # The server under test relays for an authenticated user to a second Kurier (a route to
    # its port) and is killed while it delivers: every acknowledged id must reach the peer.
    peer = Server("peer", '["peer.test"]')
    peer.start()
    route = '[[routes]]\ndomains = ["peer.test"]\nhost = "127.0.0.1"\nport = %d\ntls = "none"\n' \
            '[delivery]\nretry = ["1s"]\n' % peer.port
    s = Server("relay", '["crash.test"]', route)
    s.add_user("alice@crash.test", "crash test password")
    s.start()
    ok &= run_phase("outbound", s, "postmaster@peer.test", lambda: peer.maildir_ids("peer.test", "postmaster"),
                    auth=("alice@crash.test", "crash test password"))
    s.stop()
    peer.stop()
sys.exit(0 if ok else 1)
