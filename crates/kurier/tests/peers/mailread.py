"""Reads a mailbox the six ways a mail client does, with Python's imaplib and poplib:
IMAP and POP3 in plain text, after STARTTLS/STLS, and over implicit TLS. Prints JSON:
each way's messages (base64 of the octets fetched) and the IMAP mailboxes listed.
With "login" as the mode, only tries an IMAP login and prints {"login": true|false}.
Usage: mailread.py HOST IMAP IMAPS POP3 POP3S USER PASSWORD [login]
"""
import base64, imaplib, json, poplib, ssl, sys

host = sys.argv[1]
imap, imaps, pop3, pop3s = (int(p) for p in sys.argv[2:6])
user, password = sys.argv[6], sys.argv[7]
# The test certificate is self-signed: these tests are about the mailbox, not the chain.
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
b64 = lambda b: base64.b64encode(b).decode()

if sys.argv[8:] == ["login"]:
    m = imaplib.IMAP4(host, imap, timeout=10)
    try:
        m.login(user, password)
        ok = True
    except imaplib.IMAP4.error:
        ok = False
    print(json.dumps({"login": ok}))
    sys.exit(0)

def read_imap(m, starttls=False):
    if starttls:
        m.starttls(ssl_context=ctx)
    m.login(user, password)
    _, boxes = m.list()
    m.select("INBOX", readonly=True)
    _, ids = m.search(None, "ALL")
    out = []
    for i in ids[0].split():
        _, data = m.fetch(i, "(BODY.PEEK[])")
        out.append(b64(data[0][1]))
    m.logout()
    return out, [b.decode() for b in boxes]

def read_pop(p, stls=False):
    if stls:
        p.stls(context=ctx)
    p.user(user)
    p.pass_(password)
    out = []
    for n in range(1, len(p.list()[1]) + 1):
        lines = p.retr(n)[1]
        out.append(b64(b"".join(l + b"\r\n" for l in lines)))
    p.quit()
    return out

result = {}
result["imap"], result["mailboxes"] = read_imap(imaplib.IMAP4(host, imap, timeout=10))
result["imap_starttls"], _ = read_imap(imaplib.IMAP4(host, imap, timeout=10), starttls=True)
result["imaps"], _ = read_imap(imaplib.IMAP4_SSL(host, imaps, ssl_context=ctx, timeout=10))
result["pop3"] = read_pop(poplib.POP3(host, pop3, timeout=10))
result["pop3_stls"] = read_pop(poplib.POP3(host, pop3, timeout=10), stls=True)
result["pop3s"] = read_pop(poplib.POP3_SSL(host, pop3s, context=ctx, timeout=10))
print(json.dumps(result))
