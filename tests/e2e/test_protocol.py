"""tests/e2e/test_protocol.py - The happy path through real clients
(smtplib, swaks, raw sockets): queued-as ids that relayctl knows, the EHLO
extensions, HELO, DSN parameters kept in the envelope, SMTPUTF8 and the
null sender."""
import os
import re
import smtplib
import subprocess

from conftest import QID_RE, list_json, show_json, smtp_connect

MSG = (b"From: a@client.test\r\nTo: c@dest.test\r\nSubject: hello\r\n"
       b"Message-ID: <m1@client.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
       b"\r\nline one\r\n..dotted line\r\n\r\nlast line\r\n")


def _queued_id(text):
    m = re.fullmatch(r"2\.0\.0 Ok: queued as (\S+)", text)
    assert m, "not a queued reply: %r" % text
    assert QID_RE.match(m.group(1)), m.group(1)
    return m.group(1)


def _check_relayctl(relayd, qid, sender, rcpts):
    # list: one row with the id; show: envelope; cat: the file byte for byte.
    out = relayd.relayctl("list").stdout.decode()
    rows = [l for l in out.splitlines() if l.startswith(qid)]
    assert len(rows) == 1, out
    assert "active" in rows[0] and "<%s>" % sender in rows[0], rows[0]

    show = relayd.relayctl("show", qid).stdout.decode()
    assert re.search(r"^id:\s+%s$" % qid, show, re.M), show
    assert re.search(r"^state:\s+active$", show, re.M), show
    assert re.search(r"^sender:\s+<%s>$" % re.escape(sender), show, re.M), show
    for r in rcpts:
        assert "recipient:    <%s>" % r in show, show

    path = os.path.join(relayd.spool, "msg", qid)
    with open(path, "rb") as f:
        stored = f.read()
    cat = relayd.relayctl("cat", qid).stdout
    assert cat == stored

    j = show_json(relayd, qid)
    assert j["id"] == qid
    assert j["sender"] == sender
    assert j["state"] == "active"
    assert [x["address"] for x in j["recipients"]] == rcpts
    assert all(x["state"] == "pending" and x["attempts"] == 0
               for x in j["recipients"])
    assert j["size"] == len(stored)
    assert j["headers"] is not None and j["headers"].startswith("Received: ")

    lj = list_json(relayd)
    assert [m["id"] for m in lj["messages"]].count(qid) == 1
    m = [m for m in lj["messages"] if m["id"] == qid][0]
    assert m["sender"] == sender and m["state"] == "active"
    assert [x["address"] for x in m["recipients"]] == rcpts
    return stored


def test_smtplib_happy_path(relayd):
    with smtplib.SMTP(relayd.addr, relayd.port, timeout=10) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert s.mail("a@client.test") == (250, b"2.1.0 Sender ok")
        assert s.rcpt("c@dest.test") == (250, b"2.1.5 Recipient ok")
        assert s.rcpt("d@dest.test") == (250, b"2.1.5 Recipient ok")
        code, text = s.data(MSG)
        assert code == 250, text
        qid = _queued_id(text.decode())
    stored = _check_relayctl(relayd, qid, "a@client.test",
                             ["c@dest.test", "d@dest.test"])
    # relayd's Received first, then the client's message as smtplib gave it
    # (smtplib dot-stuffs on the wire, relayd unstuffs).
    assert stored.startswith(b"Received: by relay.test (relayd) with ESMTP id %s"
                             % qid.encode())
    head, _, rest = stored.partition(b"From: ")
    assert re.fullmatch(rb"Received: by relay\.test \(relayd\) with ESMTP id "
                        rb"[0-9A-Z]{16}; [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} "
                        rb"\d\d:\d\d:\d\d \+0000\r\n", head), head
    assert b"From: " + rest == MSG
    assert stored.count(b"Message-ID:") == 1 and stored.count(b"Date:") == 1


def test_swaks_happy_path(relayd):
    r = subprocess.run(
        ["/usr/bin/swaks", "--server", relayd.addr, "--port", str(relayd.port),
         "--ehlo", "client.test", "--from", "sw@client.test",
         "--to", "r1@dest.test,r2@dest.test", "--header", "Subject: swaks",
         "--body", "body from swaks", "--timeout", "10"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    m = re.search(r"<-\s+250 2\.0\.0 Ok: queued as (\S+)", out)
    assert m, out
    qid = m.group(1)
    assert QID_RE.match(qid)
    assert re.search(r"<-\s+221 2\.0\.0 Bye", out), out
    stored = _check_relayctl(relayd, qid, "sw@client.test",
                             ["r1@dest.test", "r2@dest.test"])
    assert b"Subject: swaks\r\n" in stored
    assert b"\r\n\r\nbody from swaks\r\n" in stored


def test_ehlo_advertises_extensions(relayd_factory):
    r = relayd_factory(max_message_size="10M")
    with smtp_connect(r) as c:
        assert c.greeting.lines == ["220 relay.test ESMTP relayd"]
        rep = c.cmd("EHLO client.test")
        assert rep.code == 250
        assert rep.lines == [
            "250-relay.test",
            "250-PIPELINING",
            "250-SIZE %d" % (10 * 1024 * 1024),
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250-SMTPUTF8",
            "250-CHUNKING",
            "250 DSN",
        ]
        assert c.cmd("QUIT").pair == (221, "2.0.0")
        assert c.closed_within(5)


def test_helo_works(relayd):
    with smtp_connect(relayd) as c:
        rep = c.cmd("HELO client.test")
        assert rep.lines == ["250 relay.test"]
        assert c.cmd("MAIL FROM:<h@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<r@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        rep = c.cmd(b"Subject: helo\r\n\r\nx\r\n.")
        qid = rep.queued_id()
    stored = relayd.stored()
    assert list(stored) == [qid]
    # HELO means plain SMTP in the trace header.
    assert b" with SMTP id %s" % qid.encode() in stored[qid]


def test_dsn_parameters_are_stored(relayd):
    with smtp_connect(relayd) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<d@client.test> RET=HDRS ENVID=env+2Bid-42 "
                     "BODY=8BITMIME").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<one@dest.test> NOTIFY=SUCCESS,FAILURE "
                     "ORCPT=rfc822;one+40orig.test").pair == (250, "2.1.5")
        assert c.cmd("RCPT TO:<two@dest.test> NOTIFY=NEVER").pair == \
            (250, "2.1.5")
        assert c.cmd("RCPT TO:<three@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        qid = c.cmd(b"Subject: dsn\r\n\r\nx\r\n.").queued_id()
        # Bad DSN values are refused with 501 5.5.4.
        assert c.cmd("MAIL FROM:<d@client.test> RET=BOGUS").pair == \
            (501, "5.5.4")
        assert c.cmd("MAIL FROM:<d@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<x@dest.test> NOTIFY=NEVER,SUCCESS").pair == \
            (501, "5.5.4")
        assert c.cmd("RCPT TO:<x@dest.test> ORCPT=nosemicolon").pair == \
            (501, "5.5.4")
    j = show_json(relayd, qid)
    assert j["flags"]["ret"] == "HDRS"
    assert j["flags"]["envid"] == "env+2Bid-42"
    assert j["flags"]["body"] == "8BITMIME"
    assert j["flags"]["smtputf8"] is False
    r1, r2, r3 = j["recipients"]
    assert r1["address"] == "one@dest.test"
    assert r1["notify"] == ["SUCCESS", "FAILURE"]
    assert r1["orcpt"] == "rfc822;one+40orig.test"
    assert r2["notify"] == ["NEVER"] and r2["orcpt"] is None
    assert r3["notify"] is None and r3["orcpt"] is None
    show = relayd.relayctl("show", qid).stdout.decode()
    assert "RET=HDRS" in show and "ENVID=env+2Bid-42" in show, show
    assert "BODY=8BITMIME" in show, show


def test_smtputf8_addresses(relayd):
    sender = "d\u00f6rte@\u00e9xample.test"
    rcpt = "\u00fcser@dest.test"
    with smtp_connect(relayd) as c:
        assert c.cmd("EHLO client.test").code == 250
        # Without SMTPUTF8: refused, and the session goes on.
        assert c.cmd("MAIL FROM:<%s>" % sender).pair == (553, "5.6.7")
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<%s>" % rcpt).pair == (553, "5.6.7")
        assert c.cmd("RSET").pair == (250, "2.0.0")
        # With it: accepted and stored as UTF-8.
        assert c.cmd("MAIL FROM:<%s> SMTPUTF8" % sender).pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<%s>" % rcpt).pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        qid = c.cmd("Subject: utf8\r\n\r\nx\r\n.").queued_id()
    j = show_json(relayd, qid)
    assert j["sender"] == sender
    assert j["recipients"][0]["address"] == rcpt
    assert j["flags"]["smtputf8"] is True
    assert len(relayd.stored()) == 1


def test_null_sender_accepted(relayd):
    with smtp_connect(relayd) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<postmaster@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        qid = c.cmd("Subject: bounce\r\n\r\nx\r\n.").queued_id()
        # The null path is for senders only.
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<>").pair == (501, "5.1.3")
    j = show_json(relayd, qid)
    assert j["sender"] == ""
    assert [x["address"] for x in j["recipients"]] == ["postmaster@dest.test"]
    out = relayd.relayctl("list").stdout.decode()
    assert re.search(r"^%s .* <> +<postmaster@dest.test>$" % qid, out, re.M), out
