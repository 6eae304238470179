"""tests/e2e/test_long_lines.py - Lines longer than RFC 5322 allows (issue
8 §2: at most 998 octets before CRLF). With long_lines = wrap (the
default) header lines are folded at a blank (else CRLF SP goes in) and
body lines get a CRLF every 998 octets before the message is stored; the
stored bytes, and the bytes a real smarthost (aiosmtpd, which refuses a
line over 1001 octets) receives, are exactly the expected ones, whether
the message came in one DATA or in BDAT chunks cut inside the long lines
and between CR and LF. With long_lines = reject the end of DATA / BDAT LAST
gets 554 5.6.0 and nothing is queued; the session goes on."""
import email
import email.policy
import os
import re
import smtplib

from conftest import smtp_connect
from conftest_upstream import (SENDER, assert_same_bytes, queue_list, submit,
                               wait_gone)

SRC = "127.3.%d.41" % (os.getpid() % 200 + 20)

SUBJECT = b"x" * 600 + b" " + b"y" * 600
HEAD = (b"From: " + SENDER.encode() + b"\r\n"
        b"To: rcpt@dest.test\r\n"
        b"Subject: " + SUBJECT + b"\r\n"
        b"X-Long: " + b"a" * 1500 + b"\r\n"
        b"Message-ID: <long-lines@client.test>\r\n"
        b"Date: Sat, 01 Jun 2024 12:00:00 +0000\r\n")
BODY = (b"b" * 2500 + b"\r\n" +
        b"c" * 998 + b".dot after the break\r\n" +
        b"e" * 998 + b"\r\n" +
        b"f" * 1996 + b"\r\n" +
        b".\r\n" +
        b"last line\r\n")
MESSAGE = HEAD + b"\r\n" + BODY

# What relayd must make of it: the Subject folded at its one blank; X-Long
# folded at the blank after the colon, then (no blank left) CRLF SP after
# every 998 octets; body lines broken after every 998 octets.
WANT = (b"From: " + SENDER.encode() + b"\r\n"
        b"To: rcpt@dest.test\r\n"
        b"Subject: " + b"x" * 600 + b"\r\n " + b"y" * 600 + b"\r\n"
        b"X-Long:\r\n " + b"a" * 997 + b"\r\n " + b"a" * 503 + b"\r\n"
        b"Message-ID: <long-lines@client.test>\r\n"
        b"Date: Sat, 01 Jun 2024 12:00:00 +0000\r\n"
        b"\r\n" +
        b"b" * 998 + b"\r\n" + b"b" * 998 + b"\r\n" + b"b" * 504 + b"\r\n" +
        b"c" * 998 + b"\r\n.dot after the break\r\n" +
        b"e" * 998 + b"\r\n" +
        b"f" * 998 + b"\r\n" + b"f" * 998 + b"\r\n" +
        b".\r\n" +
        b"last line\r\n")

TRACE = rb"Received: by relay\.test \(relayd\) with ESMTP id \w{16}\r\n" \
        rb"\tfor <rcpt@dest\.test>; [^\r]+\r\n"


def longest_line(data):
    return max(len(x) for x in data.split(b"\r\n"))


def bdat_cuts(data):
    """Chunk ends inside the long lines, right after a CR, at 998 and 999
    octets into a line."""
    cuts = set()
    for m in re.finditer(rb"\r\n", data):
        cuts.add(m.start() + 1)            # between CR and LF
    for start in [0] + [m.end() for m in re.finditer(rb"\r\n", data)]:
        for k in (1, 997, 998, 999, 1000, 1500):
            cuts.add(start + k)
    return sorted(c for c in cuts if 0 < c < len(data))


def submit_bdat(r, content, rcpt="rcpt@dest.test"):
    cuts = bdat_cuts(content)
    chunks = [content[a:b] for a, b in zip([0] + cuts, cuts + [len(content)])]
    with smtp_connect(r, source=SRC) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<%s>" % SENDER).pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<%s>" % rcpt).pair == (250, "2.1.5")
        for i, ch in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            c.send(b"BDAT %d%s\r\n" % (len(ch), last.encode()) + ch)
        reps = c.replies(len(chunks), timeout=30)
        assert all(x.pair == (250, "2.0.0") for x in reps[:-1]), reps[:3]
        return reps[-1], c


def test_premise_smarthost_refuses_long_lines(upstream_factory):
    """aiosmtpd, the test smarthost, refuses what relayd used to relay."""
    up = upstream_factory(tls="none")
    with smtplib.SMTP(up.addr, up.port, timeout=30) as s:
        s.ehlo("client.test")
        try:
            s.sendmail(SENDER, ["rcpt@dest.test"], MESSAGE)
            refused = None
        except smtplib.SMTPDataError as e:
            refused = e.smtp_code
    assert refused == 500, refused
    assert up.messages() == []


def test_wrap_through_smarthost(upstream_factory, relay_to):
    up = upstream_factory(tls="none", behaviour={"mail": {SENDER: "451 4.3.2 not yet"}})
    r = relay_to(up)      # long_lines not set: wrap is the default
    assert "long_lines" not in open(r.conf_path).read()
    q1 = submit(r, SENDER, ["rcpt@dest.test"], MESSAGE)
    rep, _ = submit_bdat(r, MESSAGE)
    q2 = rep.queued_id()
    stored = {}
    for qid in (q1, q2):
        cat = r.relayctl("cat", qid).stdout
        m = re.match(TRACE, cat)
        assert m, cat[:300]
        assert_same_bytes(cat[m.end():], WANT, "%s as stored" % qid)
        assert longest_line(cat) <= 998
        stored[qid] = cat
    assert re.search(r"%s: lines longer than 998 octets wrapped: 7 breaks "
                     r"inserted" % q1, r.log_text()), r.log_text()[-2000:]

    up.set_behaviour({})
    got = up.wait_messages(2, match=lambda m: m["mail_from"] == SENDER)
    assert sorted(m["data"] for m in got) == sorted(stored.values())
    for rec in got:
        msg = email.message_from_bytes(rec["data"], policy=email.policy.default)
        # Folding is invisible to a reader: the field unfolds to the
        # original value.
        assert msg["Subject"] == SUBJECT.decode()
        assert msg.defects == []
    for qid in (q1, q2):
        wait_gone(r, qid)


def test_reject(relayd_factory):
    r = relayd_factory(long_lines="reject")
    long_msg = b"Subject: s\r\n\r\nok line\r\n" + b"z" * 999 + b"\r\nafter\r\n"
    with smtp_connect(r, source=SRC) as c:
        assert c.cmd("EHLO client.test").code == 250
        for attempt in range(2):
            assert c.cmd("MAIL FROM:<%s>" % SENDER).pair == (250, "2.1.0")
            assert c.cmd("RCPT TO:<rcpt@dest.test>").pair == (250, "2.1.5")
            assert c.cmd("DATA").code == 354
            c.send(long_msg + b".\r\n")
            rep = c.reply()
            assert rep.lines == ["554 5.6.0 Message contains a line longer "
                                 "than 998 characters (RFC 5322 2.1.1)"], rep
        # The session goes on; 998 octets are fine.
        ok = b"Subject: s\r\n\r\n" + b"z" * 998 + b"\r\n"
        assert c.cmd("MAIL FROM:<%s>" % SENDER).pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<rcpt@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(ok + b".\r\n")
        qid = c.reply().queued_id()
    # BDAT: the chunks are taken, LAST is refused.
    rep, c = submit_bdat(r, long_msg)
    c.close()
    assert rep.pair == (554, "5.6.0"), rep
    stored = r.stored()
    assert list(stored) == [qid], stored
    assert stored[qid].endswith(b"\r\n\r\n" + b"z" * 998 + b"\r\n")
    assert [m["id"] for m in queue_list(r)] == [qid]
    assert len(re.findall(r"reject: .*554 5\.6\.0 Message contains a line "
                          r"longer than 998", r.log_text())) == 3

