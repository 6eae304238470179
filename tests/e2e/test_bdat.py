"""tests/e2e/test_bdat.py - CHUNKING (RFC 3030): chunked messages stored
exactly, 8-bit content, rejected chunks whose octets are still consumed
(never run as commands), DATA after BDAT, BDAT 0 LAST, limits and errors
inside chunks."""
from conftest import no_unfinished, list_json, smtp_connect


def _txn(c, sender="a@client.test", params=""):
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<%s>%s" % (sender, params)).pair == (250, "2.1.0")
    assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")


def _bdat(c, data, last=False):
    c.send(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data)
    return c.reply()


def _content(stored):
    """The client's part of a stored message: after relayd's Received
    line (and its continuation lines)."""
    lines = stored.split(b"\r\n")
    assert lines[0].startswith(b"Received: by relay.test"), stored[:200]
    i = 1
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


HDR = (b"Subject: chunks\r\nMessage-ID: <c@client.test>\r\n"
       b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n")


def test_several_chunks(relayd):
    parts = [HDR + b"first part, ", b"second part\r", b"\n.\r\n.leading dot\r\n",
             b"third part\r\n"]
    with smtp_connect(relayd) as c:
        _txn(c)
        total = 0
        for p in parts[:-1]:
            total += len(p)
            rep = _bdat(c, p)
            assert rep.pair == (250, "2.0.0"), rep
            assert rep.text == "%d octets received" % total
        qid = _bdat(c, parts[-1], last=True).queued_id()
        assert c.cmd("QUIT").pair == (221, "2.0.0")
    stored = relayd.stored()
    assert list(stored) == [qid]
    # No dot handling in BDAT: the content is stored as sent.
    assert _content(stored[qid]) == b"".join(parts)


def test_pipelined_chunks_with_8bit_content(relayd):
    lines = []
    octets = bytes(b for b in range(1, 256) if b not in (10, 13))
    for i in range(0, len(octets), 60):
        lines.append(octets[i:i + 60] + b"\r\n")
    body = HDR + b"".join(lines) + "gr\u00fc\u00dfe \u2713\r\n".encode()
    c1, c2 = body[:300], body[300:]
    with smtp_connect(relayd) as c:
        assert c.cmd("EHLO client.test").code == 250
        c.send(b"MAIL FROM:<a@client.test> BODY=8BITMIME\r\n"
               b"RCPT TO:<b@dest.test>\r\n"
               b"BDAT %d\r\n" % len(c1) + c1 +
               b"BDAT %d LAST\r\n" % len(c2) + c2 + b"NOOP\r\n")
        reps = c.replies(5)
        assert [r.pair for r in reps[:3]] == \
            [(250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0")]
        assert reps[2].text == "300 octets received"
        qid = reps[3].queued_id()
        assert reps[4].pair == (250, "2.0.0")
    stored = relayd.stored()
    assert _content(stored[qid]) == body
    assert list_json(relayd)["messages"][0]["flags"]["body"] == "8BITMIME"


def test_rejected_chunk_is_consumed_not_executed(relayd):
    evil = (b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\n"
            b"smuggled\r\n.\r\nQUIT\r\n")
    with smtp_connect(relayd) as c:
        # Before EHLO, after EHLO without MAIL, after MAIL without RCPT.
        rep = _bdat(c, evil, last=True)
        assert rep.pair == (503, "5.5.1"), rep
        assert rep.text == "Error: send HELO/EHLO first"
        c.no_more(0.3)
        assert c.cmd("EHLO client.test").code == 250
        rep = _bdat(c, evil)
        assert rep.pair == (503, "5.5.1") and rep.text == "Error: need MAIL command"
        c.no_more(0.3)
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        rep = _bdat(c, evil, last=True)
        assert rep.pair == (503, "5.5.1") and rep.text == "Error: need RCPT command"
        c.no_more(0.3)
        # Still in the transaction, which completes normally.
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        qid = _bdat(c, HDR + b"good\r\n", last=True).queued_id()
        assert c.cmd("NOOP").pair == (250, "2.0.0")
    stored = relayd.stored()
    assert list(stored) == [qid]
    assert b"evil" not in stored[qid]
    assert list_json(relayd)["count"] == 1


def test_data_after_bdat_and_commands_between_chunks(relayd):
    with smtp_connect(relayd) as c:
        _txn(c)
        assert _bdat(c, HDR + b"one\r\n").pair == (250, "2.0.0")
        rep = c.cmd("DATA")
        assert rep.pair == (503, "5.5.1")
        assert rep.text == "Error: DATA not allowed after BDAT"
        rep = c.cmd("MAIL FROM:<x@client.test>")
        assert rep.pair == (503, "5.5.1")
        assert rep.text.startswith("Error: only BDAT, RSET, NOOP or QUIT")
        assert c.cmd("RCPT TO:<x@dest.test>").pair == (503, "5.5.1")
        assert c.cmd("NOOP").pair == (250, "2.0.0")
        # The transfer survives all that.
        rep = _bdat(c, b"two\r\n")
        assert rep.text == "%d octets received" % (len(HDR) + 10)
        qid = _bdat(c, b"", last=True).queued_id()
        # DATA in a new transaction is fine again.
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        qid2 = c.cmd(HDR + b"three\r\n.").queued_id()
        # RSET in the middle of a transfer drops it.
        _txn_again = c.cmd("MAIL FROM:<a@client.test>")
        assert _txn_again.pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        assert _bdat(c, HDR + b"dropped\r\n").pair == (250, "2.0.0")
        assert c.cmd("RSET").pair == (250, "2.0.0")
        rep = _bdat(c, b"x\r\n", last=True)
        assert rep.pair == (503, "5.5.1")
    stored = relayd.stored()
    assert sorted(stored) == sorted([qid, qid2])
    assert _content(stored[qid]) == HDR + b"one\r\ntwo\r\n"
    assert _content(stored[qid2]) == HDR + b"three\r\n"
    assert no_unfinished(relayd) == []


def test_bdat_zero_last(relayd):
    with smtp_connect(relayd) as c:
        _txn(c)
        qid = _bdat(c, b"", last=True).queued_id()
        assert c.cmd("NOOP").pair == (250, "2.0.0")
        # A zero chunk that is not LAST is acknowledged and the transfer
        # goes on.
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        rep = c.cmd("BDAT 0")
        assert rep.pair == (250, "2.0.0") and rep.text == "0 octets received"
        qid2 = _bdat(c, HDR + b"z\r\n", last=True).queued_id()
    stored = relayd.stored()
    assert sorted(stored) == sorted([qid, qid2])
    # An empty message still gets relayd's Message-ID and Date, nothing else.
    rest = _content(stored[qid])
    assert rest.startswith(b"Message-ID: <%s@relay.test>\r\nDate: "
                           % qid.encode()), rest
    assert rest.count(b"\r\n") == 2 and rest.endswith(b"\r\n"), rest


def test_bdat_errors(relayd_factory):
    r = relayd_factory(max_message_size="1k")
    with smtp_connect(r) as c:
        _txn(c)
        # Too big: refused at the chunk that crosses the limit.
        rep = _bdat(c, HDR + b"x" * 2000 + b"\r\n", last=True)
        assert rep.pair == (552, "5.3.4"), rep
        assert c.cmd("NOOP").pair == (250, "2.0.0")
        # A bare LF in a chunk: 554 5.6.0, the transaction is over; a chunk
        # the client already had in flight (RFC 3030 §3) gets the same
        # answer and its octets are eaten, not run as commands.
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        rep = _bdat(c, HDR + b"bare\nlf\r\n")
        assert rep.pair == (554, "5.6.0"), rep
        rep = _bdat(c, b"NOOP\r\nNOOP\r\n", last=True)
        assert rep.pair == (554, "5.6.0"), rep
        c.no_more(0.3)
        # After LAST the session takes a new transaction; a stray BDAT
        # now is a sequence error again.
        rep = _bdat(c, b"NOOP\r\n", last=True)
        assert rep.pair == (503, "5.5.1"), rep
        c.no_more(0.3)
        # NUL.
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        rep = _bdat(c, HDR + b"n\x00l\r\n", last=True)
        assert rep.pair == (554, "5.6.0"), rep
        # A BDAT without a size cannot be framed: 501 and the end.
        rep = c.cmd("BDAT lots")
        assert rep.pair == (501, "5.5.4"), rep
        assert c.closed_within(5)
    assert r.stored() == {}
    assert no_unfinished(r) == []
