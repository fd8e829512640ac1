#!/usr/bin/env python3
"""An independent SMTP client for smtpw's listener: Python's smtplib, as Mailman 3 and
listmonk-like senders use it. Runs a fixed scenario against 127.0.0.1:PORT and prints one JSON
object: the messages accepted (their job id from the 250 and where they should go) and the
replies to everything that must be refused.

usage: smtplib_client.py PORT MAX_RECIPIENTS MAX_BYTES MAX_CONNECTIONS
"""
import json
import smtplib
import sys

port, max_rcpts, max_bytes, max_conns = (int(a) for a in sys.argv[1:5])
out = {"accepted": [], "codes": {}}


def connect(source=None):
    return smtplib.SMTP("127.0.0.1", port, timeout=30,
                        source_address=(source, 0) if source else None)


def message(i, header=""):
    return (f"From: sender{i}@lists.example.org\r\nTo: list@lists.example.org\r\n"
            f"{header}Subject: message {i}\r\n\r\nBody of message {i}.\r\n.a line with a dot\r\n")


s = connect()
s.ehlo("client.example")
assert s.has_extn("pipelining") and s.has_extn("xpool") and s.has_extn("chunking"), s.esmtp_features
# Ten messages on one connection, 40 recipients each; the pool by turns: XPOOL (over a sender
# the map would put in B), a Delivery-Pool: header, the sender map, the default.
for i in range(10):
    kind = i % 4
    sender = f"owner-bulk-{i}@lists.example.org" if kind in (0, 2) else f"owner-{i}@lists.example.org"
    opts = ["XPOOL=A"] if kind == 0 else []
    header = "Delivery-Pool: C\r\n" if kind == 1 else ""
    pool = "ABCD"[[0, 2, 1, 3][kind]]
    rcpts = [f"m{i}-{k}@dest{k % 3}.example" for k in range(40)]
    code, _ = s.mail(sender, opts)
    assert code == 250, code
    for r in rcpts:
        code, _ = s.rcpt(r)
        assert code == 250, (r, code)
    code, msg = s.data(message(i, header).encode())
    assert code == 250, (code, msg)
    job = int(msg.decode().rsplit(" ", 1)[1])
    out["accepted"].append({"job": job, "pool": pool, "rcpts": rcpts})

# SIZE declared over the limit: refused at MAIL (552).
code, _ = s.mail("a@lists.example.org", [f"SIZE={max_bytes + 1}"])
out["codes"]["size_declared"] = code
s.rset()
# Over the limit without declaring it: read to the end, then 552.
s.mail("a@lists.example.org")
s.rcpt("too-big@dest.example")
code, _ = s.docmd("DATA")
assert code == 354
s.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (max_bytes // 1000 + 1) + b".\r\n")
out["codes"]["size_data"] = s.getreply()[0]
# One recipient past the limit: 452 for it, the rest stored.
s.mail("a@lists.example.org")
rcpts = [f"limit-{k}@dest.example" for k in range(max_rcpts + 1)]
codes = [s.rcpt(r)[0] for r in rcpts]
out["codes"]["rcpt_over_limit"] = codes[-1]
code, msg = s.data(message(100).encode())
assert code == 250, (code, msg)
out["accepted"].append({"job": int(msg.decode().rsplit(" ", 1)[1]), "pool": "D", "rcpts": rcpts[:-1]})
out["never"] = [rcpts[-1]]
# A malformed address: 501; no valid recipient: DATA gets 554.
s.mail("a@lists.example.org")
out["codes"]["malformed_rcpt"] = s.docmd("RCPT TO:<not an address>")[0]
out["codes"]["malformed_sender"] = 0
out["codes"]["no_rcpts_data"] = s.docmd("DATA")[0]
s.rset()
out["codes"]["malformed_sender"] = s.docmd("MAIL FROM:<a b@c>")[0]

# The connection cap: this one and max-1 more are served; the next is told 421.
extra = [connect() for _ in range(max_conns - 1)]
try:
    connect()
    out["codes"]["over_cap"] = 220
except smtplib.SMTPConnectError as e:
    out["codes"]["over_cap"] = e.smtp_code
for c in extra:
    c.quit()
s.quit()

# A client outside allow (127.0.0.2; allow is 127.0.0.1/32): 554 5.7.1.
try:
    connect("127.0.0.2")
    out["codes"]["outside_allow"] = 220
except smtplib.SMTPConnectError as e:
    out["codes"]["outside_allow"] = e.smtp_code
    out["outside_allow_text"] = e.smtp_error.decode()

print(json.dumps(out))
