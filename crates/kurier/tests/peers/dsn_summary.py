"""Parses a delivery status notification (a Maildir file) with Python's email package and
prints a JSON summary, so Kurier's tests check its DSNs with an independent parser.
Usage: dsn_summary.py FILE"""
import email, email.policy, json, sys

msg = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.compat32)
out = {
    "from": msg["From"], "to": msg["To"], "subject": msg["Subject"],
    "return_path": msg["Return-Path"], "auto_submitted": msg["Auto-Submitted"],
    "content_type": msg.get_content_type(), "report_type": msg.get_param("report-type"),
    "parts": [], "per_message": {}, "recipients": [], "original": None,
}
for part in msg.get_payload():
    out["parts"].append(part.get_content_type())
    if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
        blocks = part.get_payload()
        out["per_message"] = dict(blocks[0].items())
        out["recipients"] = [dict(b.items()) for b in blocks[1:]]
    elif part.get_content_type() == "message/rfc822":
        inner = part.get_payload()[0]
        out["original"] = {"subject": inner["Subject"], "body": inner.get_payload()}
    elif part.get_content_type() == "text/rfc822-headers":
        out["original"] = {"headers": part.get_payload()}
print(json.dumps(out))
