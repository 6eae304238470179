"""tests/e2e/test_scrub.py - Header scrubbing: the client's trace and
address headers are removed (with their continuation lines, any case),
relayd's own Received is the only one naming a host and names no client
(each scrubbed Received is replaced where it stood by a line naming only
relayd, so the hop still counts: issue 9 §3, tests/e2e/test_hops.py),
Received-SPF and body text stay, Message-ID and Date are added only when
missing; a custom scrub_headers list and received_client=yes."""
import email
import email.policy
import os
import re

from conftest import smtp_connect

SRC = "127.2.%d.33" % (os.getpid() % 200 + 20)

DIRTY_HEADERS = (
    b"Received: from internal.corp (internal.corp [10.1.2.3])\r\n"
    b"\tby mx.corp (Postfix) with ESMTP id HIDDENID1\r\n"
    b"\tfor <c@dest.test>; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"X-Originating-IP: [10.9.9.9]\r\n"
    b"Subject: scrub me\r\n"
    b"x-remote-ip: 10.9.9.8\r\n"
    b"X-REAL-IP: 10.9.9.7\r\n"
    b"X-Forwarded-For: 10.9.9.6,\r\n 10.9.9.66\r\n"
    b"X-Sender-Ip: 10.9.9.5\r\n"
    b"x-source-IP: 10.9.9.4\r\n"
    b"Received-SPF: pass (dest.test: domain of client.test designates "
    b"192.0.2.1 as permitted sender)\r\n"
    b"RECEIVED: from second.corp by third.corp; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
    b"Received : from obsolete.corp\r\n"
    b"From: a@client.test\r\n"
    b"To: c@dest.test\r\n"
)
# What a scrubbed Received becomes (issue 9 §3): relayd's name and the
# date relayd took the message (the same as in its own Received), nothing
# of the original.
HOP = rb"Received: by relay\.test \(relayd: earlier hop, details removed\); "


def kept_re(date):
    """DIRTY_HEADERS as stored: the kept fields, with a hop line where each
    of its three Received fields stood; date: the regex of their date."""
    hop = HOP + date + rb"\r\n"
    return (hop + rb"Subject: scrub me\r\n"
            rb"Received-SPF: pass \(dest\.test: domain of client\.test "
            rb"designates 192\.0\.2\.1 as permitted sender\)\r\n" +
            hop + hop + rb"From: a@client\.test\r\nTo: c@dest\.test\r\n")


BODY = (b"Body line one\r\n"
        b"Received: from body.text (this line is content)\r\n"
        b"X-Originating-IP: also content\r\n")

DATE_RE = rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000"


def _send(r, content, helo="helo-name.client.test", source=SRC, rcpts=1):
    with smtp_connect(r, source=source) as c:
        assert c.cmd("EHLO %s" % helo).code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        for i in range(rcpts):
            rc = "c@dest.test" if i == 0 else "c%d@dest.test" % i
            assert c.cmd("RCPT TO:<%s>" % rc).pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(content + b".\r\n")
        qid = c.reply().queued_id()
    stored = r.stored()
    assert qid in stored
    return qid, stored[qid]


def _headers(msg):
    head = msg.split(b"\r\n\r\n", 1)[0]
    return re.findall(rb"^([^\s:]+)\s*:", head, re.M)


def test_default_scrub(relayd):
    qid, msg = _send(relayd, DIRTY_HEADERS + b"\r\n" + BODY)
    m = re.fullmatch(
        rb"Received: by relay\.test \(relayd\) with ESMTP id (\w{16})\r\n"
        rb"\tfor <c@dest\.test>; (?P<d>" + DATE_RE + rb")\r\n" +
        kept_re(rb"(?P=d)") +
        rb"Message-ID: <(\w{16})@relay\.test>\r\n"
        rb"Date: (?P=d)\r\n"
        rb"\r\n" + re.escape(BODY), msg)
    assert m, msg.decode("utf-8", "replace")
    assert m.group(1) == m.group(3) == qid.encode()
    names = [n.lower() for n in _headers(msg)]
    # relayd's own and the three that replace the client's: the hops
    # still count (issue 9 §3).
    assert names.count(b"received") == 4
    assert names.count(b"received-spf") == 1
    for gone in (b"10.1.2.3", b"10.9.9", b"internal.corp", b"mx.corp",
                 b"HIDDENID1", b"second.corp", b"obsolete.corp",
                 b"2024"):
        assert gone not in msg, gone
    # Nothing names the client: no address, no HELO name.
    assert b"127." not in msg
    assert b"helo-name" not in msg
    assert re.search(r"%s: from=<a@client\.test>, .*scrubbed=9, hops=3 "
                     % qid, relayd.log_text()), relayd.log_text()[-2000:]


def test_message_id_and_date_not_duplicated(relayd):
    content = (b"Subject: has both\r\n"
               b"message-id: <own@client.test>\r\n"
               b"DATE: Tue, 2 Jan 2024 03:04:05 +0100\r\n"
               b"\r\nbody\r\n")
    qid, msg = _send(relayd, content, rcpts=2)
    # Two recipients: no "for" clause in the trace line.
    assert re.fullmatch(
        rb"Received: by relay\.test \(relayd\) with ESMTP id " + qid.encode() +
        rb"; " + DATE_RE + rb"\r\n" + re.escape(content), msg), msg
    # Only one of each: the client's.
    names = [n.lower() for n in _headers(msg)]
    assert names.count(b"message-id") == 1 and names.count(b"date") == 1
    # A message with no header section at all gets them before its body,
    # and the empty line that separates the two (issue 8 §7).
    qid2, msg2 = _send(relayd, b"just a body line\r\n")
    assert re.search(rb"\r\nMessage-ID: <%s@relay\.test>\r\nDate: " % qid2.encode()
                     + DATE_RE + rb"\r\n\r\njust a body line\r\n$", msg2), msg2


def test_custom_scrub_list(relayd_factory):
    r = relayd_factory(scrub_headers="X-Secret, message-id")
    content = (b"Received: from inside.corp\r\n"
               b"X-Secret: s3cr3t\r\n\tcontinued s3cr3t\r\n"
               b"X-Originating-IP: [10.9.9.9]\r\n"
               b"Message-ID: <own@client.test>\r\n"
               b"X-Secretive: stays\r\n"
               b"\r\nbody\r\n")
    qid, msg = _send(r, content)
    assert b"s3cr3t" not in msg
    assert b"<own@client.test>" not in msg
    # Not on the list any more: kept.
    assert b"\r\nReceived: from inside.corp\r\n" in msg
    assert b"\r\nX-Originating-IP: [10.9.9.9]\r\n" in msg
    assert b"\r\nX-Secretive: stays\r\n" in msg
    # The scrubbed Message-ID is replaced by relayd's.
    assert b"\r\nMessage-ID: <%s@relay.test>\r\n" % qid.encode() in msg
    names = [n.lower() for n in _headers(msg)]
    assert names.count(b"message-id") == 1 and names.count(b"received") == 2

    # An empty list removes nothing.
    r2 = relayd_factory(scrub_headers="")
    qid2, msg2 = _send(r2, DIRTY_HEADERS + b"\r\n" + BODY)
    assert re.fullmatch(
        rb"Received: by relay\.test \(relayd\) [^\r]*\r\n\t[^\r]*\r\n" +
        re.escape(DIRTY_HEADERS) +
        rb"Message-ID: <%s@relay\.test>\r\nDate: " % qid2.encode() + DATE_RE +
        rb"\r\n\r\n" + re.escape(BODY), msg2), msg2
    assert msg2.startswith(b"Received: by relay.test")


def test_received_client_yes(relayd_factory):
    r = relayd_factory(received_client="yes")
    qid, msg = _send(r, b"Subject: x\r\n\r\nbody\r\n", helo="helo(odd)name")
    first = msg.split(b"\r\n")[0:2]
    # The client's address, and its HELO name made inert.
    assert first[0] == b"Received: from helo?odd?name ([%s])" % SRC.encode(), first
    assert first[1] == b"\tby relay.test (relayd) with ESMTP id %s" % qid.encode()
    assert msg.count(SRC.encode()) == 1


def test_first_line_starting_with_blank_stays_body(relayd):
    # No header section, and the first line starts with a blank: after
    # relayd's added Date it would read as Date's continuation line, so an
    # empty line must separate them.
    qid, msg = _send(relayd, b" indented first line\r\nsecond\r\n")
    m = re.fullmatch(
        rb"Received: [^\r]*\r\n\t[^\r]*\r\n"
        rb"Message-ID: <\w{16}@relay\.test>\r\n"
        rb"Date: " + DATE_RE + rb"\r\n"
        rb"\r\n indented first line\r\nsecond\r\n", msg)
    assert m, msg


def test_long_header_name_does_not_stop_scrubbing(relayd):
    # RFC 5322 field names have no length limit below the 998-octet line;
    # a long (but valid) one must not end the header section, or the
    # fields after it escape the scrubber and Message-ID is doubled.
    long_field = b"X-" + b"Long" * 20 + b": some value\r\n"     # 82-char name
    content = (b"Subject: long names\r\n" + long_field +
               b"Received: from internal.corp ([10.1.1.1])\r\n"
               b"X-Originating-IP: [10.2.2.2]\r\n"
               b"Message-ID: <own@client.test>\r\n"
               b"Date: Tue, 2 Jan 2024 03:04:05 +0100\r\n"
               b"\r\nbody\r\n")
    qid, msg = _send(relayd, content)
    assert b"10.1.1.1" not in msg and b"10.2.2.2" not in msg, msg
    names = [n.lower() for n in _headers(msg)]
    # relayd's own, and the line that replaces the client's (issue 9 §3).
    assert names.count(b"received") == 2, msg
    assert re.search(re.escape(long_field) + HOP + DATE_RE +
                     rb"\r\nMessage-ID: <own@client\.test>\r\n", msg), msg
    assert names.count(b"message-id") == 1 and names.count(b"date") == 1, msg
    assert long_field in msg
    assert b"<own@client.test>" in msg


def test_scrub_independent_of_segmentation(relayd):
    """The same message in one DATA and in one-byte BDAT chunks (every
    byte a separate feed of the scrubber) is stored the same."""
    content = DIRTY_HEADERS + b"\r\n" + BODY
    qid1, msg1 = _send(relayd, content)
    with smtp_connect(relayd, source=SRC) as c:
        assert c.cmd("EHLO helo-name.client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<c@dest.test>").pair == (250, "2.1.5")
        c.send(b"".join(b"BDAT 1\r\n" + content[i:i + 1]
                        for i in range(len(content))) + b"BDAT 0 LAST\r\n")
        reps = c.replies(len(content) + 1, timeout=20)
        assert all(r.pair == (250, "2.0.0") for r in reps[:-1])
        qid2 = reps[-1].queued_id()
    msg2 = relayd.stored()[qid2]

    def norm(m, q):
        m = re.sub(DATE_RE, b"DATE", m).replace(q.encode(), b"QID")
        return m
    assert norm(msg1, qid1) == norm(msg2, qid2)


def test_scrub_after_normalizing_bare_lf(relayd_factory):
    """Under bare_newline=normalize a message with LF line ends is turned
    into CRLF first, then scrubbed like any other."""
    r = relayd_factory(bare_newline="normalize")
    # (The last line keeps its CRLF: after a bare LF ".\r\n" is content,
    # not the end of the data.)
    lf = DIRTY_HEADERS.replace(b"\r\n", b"\n") + b"\n" + \
        BODY.replace(b"\r\n", b"\n")[:-1] + b"\r\n"
    qid, msg = _send(r, lf)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", msg) is None, msg
    m = re.fullmatch(
        rb"Received: by relay\.test \(relayd\) [^\r]*\r\n\t[^\r]*\r\n" +
        kept_re(DATE_RE) +
        rb"Message-ID: <\w{16}@relay\.test>\r\nDate: " + DATE_RE +
        rb"\r\n\r\n" + re.escape(BODY), msg)
    assert m, msg


MALFORMED = (b"Subject: malformed\r\n"
             b"From: a@client.test\r\n"
             b"this line has no colon\r\n"
             b"X-Originating-IP: [10.9.9.9]\r\n"
             b"Received: from internal.corp ([10.1.2.3])\r\n"
             b"To: c@dest.test\r\n"
             b"\r\n"
             b"body\r\n")


def test_malformed_line_ends_header_section(relayd):
    """Issue 8 §7: a header-section line without a colon (not a
    continuation) starts the body; relayd inserts the empty line there
    (as Postfix's cleanup does), so the trace lines after it are body for
    a lenient parser too, which reads no header field after that point."""
    # As submitted, the separator is missing (a parser has to guess).
    sub = email.message_from_bytes(MALFORMED, policy=email.policy.default)
    assert [type(d).__name__ for d in sub.defects] == [
        "MissingHeaderBodySeparatorDefect"], sub.defects
    qid, msg = _send(relayd, MALFORMED)
    head, body = msg.split(b"\r\n\r\n", 1)
    assert re.fullmatch(
        rb"Received: by relay\.test \(relayd\) with ESMTP id \w{16}\r\n"
        rb"\tfor <c@dest\.test>; " + DATE_RE + rb"\r\n"
        rb"Subject: malformed\r\nFrom: a@client\.test\r\n"
        rb"Message-ID: <\w{16}@relay\.test>\r\nDate: " + DATE_RE, head), head
    # Everything from the malformed line on is the body, byte for byte.
    assert body == MALFORMED[MALFORMED.index(b"this line"):], body
    m = email.message_from_bytes(msg, policy=email.policy.default)
    assert [k.lower() for k in m.keys()] == [
        "received", "subject", "from", "message-id", "date"], m.keys()
    assert m.defects == [], m.defects
    assert m["To"] is None and m["X-Originating-IP"] is None
    assert len(m.get_all("Received")) == 1
    assert b"X-Originating-IP: [10.9.9.9]" in m.get_payload(decode=True)
    assert re.search(r"%s: header section ends at a line that is not a "
                     r"header field: empty line inserted" % qid,
                     relayd.log_text()), relayd.log_text()[-2000:]


def test_indented_first_line_is_body(relayd):
    """A first line that starts with a blank is not a header field (there
    is nothing for it to continue): the body starts there, behind an
    empty line, so the client's trace and Message-ID lines after it are
    body text to Python's email parser (which would otherwise take the
    first line for a continuation and read on), and relayd adds its own
    Message-ID."""
    content = (b" indented\r\nX-Originating-IP: [10.9.9.9]\r\n"
               b"Message-ID: <own@client.test>\r\n\r\nbody\r\n")
    qid, msg = _send(relayd, content)
    m = email.message_from_bytes(msg, policy=email.policy.default)
    assert m["X-Originating-IP"] is None
    assert m["Message-ID"] == "<%s@relay.test>" % qid
    assert msg.endswith(b"\r\n\r\n" + content), msg
