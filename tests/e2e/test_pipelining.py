"""tests/e2e/test_pipelining.py - RFC 2920: a whole session in one send.
Two transactions, 20 recipients on the first, all in one sendall; every
reply comes back, in order, and both messages are queued."""
import socket

from conftest import QID_RE, list_json, smtp_connect, wait_until


def test_two_transactions_in_one_write(relayd):
    rcpts = ["r%02d@dest.test" % i for i in range(20)]
    cmds = [b"EHLO client.test\r\n", b"MAIL FROM:<p1@client.test>\r\n"]
    cmds += [b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts]
    cmds += [b"DATA\r\n",
             b"Subject: first\r\n\r\nbody one\r\n.\r\n",
             b"MAIL FROM:<p2@client.test>\r\n",
             b"RCPT TO:<second@dest.test>\r\n",
             b"DATA\r\n",
             b"Subject: second\r\n\r\nbody two\r\n.\r\n",
             b"NOOP\r\n",
             b"QUIT\r\n"]
    with smtp_connect(relayd) as c:
        c.send(b"".join(cmds))
        # EHLO, MAIL, 20 RCPT, 354, 250 queued, MAIL, RCPT, 354, 250 queued,
        # NOOP, QUIT.
        reps = c.replies(30, timeout=15)
        assert c.closed_within(5)
        assert c.buf == b"", c.buf
    assert reps[0].code == 250 and reps[0].lines[0] == "250-relay.test"
    assert "250-PIPELINING" in reps[0].lines
    assert reps[1].pair == (250, "2.1.0")
    for r in reps[2:22]:
        assert r.pair == (250, "2.1.5"), r
    assert reps[22].code == 354
    q1 = reps[23].queued_id()
    assert reps[24].pair == (250, "2.1.0")
    assert reps[25].pair == (250, "2.1.5")
    assert reps[26].code == 354
    q2 = reps[27].queued_id()
    assert reps[28].pair == (250, "2.0.0") and reps[28].text == "Ok"
    assert reps[29].pair == (221, "2.0.0")
    assert QID_RE.match(q1) and QID_RE.match(q2) and q1 != q2

    stored = relayd.stored()
    assert sorted(stored) == sorted([q1, q2])
    assert stored[q1].endswith(b"\r\nbody one\r\n")
    assert stored[q2].endswith(b"\r\nbody two\r\n")
    msgs = {m["id"]: m for m in list_json(relayd)["messages"]}
    assert [x["address"] for x in msgs[q1]["recipients"]] == rcpts
    assert msgs[q1]["sender"] == "p1@client.test"
    assert [x["address"] for x in msgs[q2]["recipients"]] == \
        ["second@dest.test"]


def test_half_close_after_pipelined_session(relayd):
    """A client that sends everything and shuts down its sending side
    still gets every reply, and every message is queued."""
    with smtp_connect(relayd) as c:
        c.send(b"EHLO client.test\r\n"
               b"MAIL FROM:<h1@client.test>\r\nRCPT TO:<a@dest.test>\r\n"
               b"DATA\r\nSubject: h1\r\n\r\none\r\n.\r\n"
               b"MAIL FROM:<h2@client.test>\r\nRCPT TO:<a@dest.test>\r\n"
               b"DATA\r\nSubject: h2\r\n\r\ntwo\r\n.\r\n"
               b"QUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        reps = c.replies(10)
        assert c.closed_within(5)
    assert [r.code for r in reps] == \
        [250, 250, 250, 354, 250, 250, 250, 354, 250, 221]
    ids = {reps[4].queued_id(), reps[8].queued_id()}
    assert set(relayd.stored()) == ids


def test_client_gone_before_its_250_still_queued(relayd):
    """Once the final dot is sent the message is relayd's: a client that
    closes without waiting for the reply leaves it queued (a duplicate on
    retry, never a loss)."""
    c = smtp_connect(relayd)
    try:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<gone@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<a@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: gone\r\n\r\nbye\r\n.\r\n")
    finally:
        c.close()
    # The body reaches msg/ before the index: wait for the index.
    wait_until(lambda: list_json(relayd)["count"] == 1, timeout=10,
               what="the message to be queued")
    assert len(relayd.stored()) == 1
    assert list(relayd.stored().values())[0].endswith(b"\r\n\r\nbye\r\n")
