"""A scriptable SMTP receiver for Kurier's outbound tests (aiosmtpd, from Debian).

The reply to RCPT depends on the recipient's local part:
  perm*   550 5.1.1 (permanent)
  temp*   451 4.3.0 every time
  flaky*  451 4.3.0 the first time for that address, 250 afterwards
  slow*   accepted; the end of data is answered after SLOW seconds
  other   250
Accepted messages are saved as N.eml with N.json (envelope) in the output directory.
It advertises no DSN, so Kurier must report success as "relayed".
With a fourth argument "refuse-mail", every MAIL FROM gets 550 5.7.1 (a blocklisted client).
Usage: receiver.py HOST PORT OUTDIR [refuse-mail]
"""
import asyncio, json, os, sys, time
from aiosmtpd.controller import Controller

host, port, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
refuse_mail = sys.argv[4:] == ["refuse-mail"]
SLOW = 3
seen = set()
counter = [0]

class Handler:
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if refuse_mail:
            return "550 5.7.1 Client address %s listed (scripted)" % session.peer[0]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local.startswith("perm"):
            return "550 5.1.1 <%s>: no such user here (scripted)" % address
        if local.startswith("temp"):
            return "451 4.3.0 <%s>: try again later (scripted)" % address
        if local.startswith("flaky") and address not in seen:
            seen.add(address)
            return "451 4.3.0 <%s>: come back later (scripted)" % address
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if any(r.split("@")[0].lower().startswith("slow") for r in envelope.rcpt_tos):
            await asyncio.sleep(SLOW)
        counter[0] += 1
        base = os.path.join(outdir, "%d-%d" % (int(time.time() * 1000), counter[0]))
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                       "mail_options": envelope.mail_options, "helo": session.host_name}, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 OK saved as %d" % counter[0]

controller = Controller(Handler(), hostname=host, port=port, enable_SMTPUTF8=True, decode_data=False)
controller.start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()
