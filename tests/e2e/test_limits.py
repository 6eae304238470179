"""tests/e2e/test_limits.py - Connection limits (in total and per client
address, told apart by binding the client to different 127.x sources) and
the greeting, command and data timeouts: 421 with the right enhanced code,
then the connection is closed, within a bounded wait."""
import os
import time

from conftest import no_unfinished, SmtpRaw, smtp_connect

# Client source addresses for this run (the daemon listens elsewhere).
_NET = "127.1.%d" % (os.getpid() % 200 + 20)
SRC_A = _NET + ".11"
SRC_B = _NET + ".12"


def _greeted(r, source=None, tries=50):
    """A connection that got its 220. The conftest's start-up probe may
    still count against the limits for a moment, so a 421 is retried."""
    for _ in range(tries):
        c = SmtpRaw(r.addr, r.port, source=source, timeout=10)
        g = c.reply()
        if g.code == 220:
            return c
        assert g.pair == (421, "4.7.0"), g
        c.close()
        time.sleep(0.1)
    raise AssertionError("no 220 greeting after %d tries" % tries)


def _refused(r, source, text):
    c = SmtpRaw(r.addr, r.port, source=source, timeout=10)
    try:
        g = c.reply()
        assert g.pair == (421, "4.7.0"), g
        assert g.text == text, g
        assert c.closed_within(5), "refused connection left open"
        assert c.buf == b""
    finally:
        c.close()


def test_max_connections(relayd_factory):
    r = relayd_factory(max_connections=2)
    a = _greeted(r, SRC_A)
    b = _greeted(r, SRC_B)
    try:
        _refused(r, SRC_A, "Too many connections, try again later")
        _refused(r, "127.0.0.1", "Too many connections, try again later")
        # The sessions that got in are unharmed.
        assert a.cmd("EHLO a.test").code == 250
        assert b.cmd("NOOP").pair == (250, "2.0.0")
        # A slot freed is a slot to take.
        assert a.cmd("QUIT").pair == (221, "2.0.0")
        assert a.closed_within(5)
        c = _greeted(r, SRC_A)
        assert c.cmd("NOOP").pair == (250, "2.0.0")
        c.close()
    finally:
        a.close()
        b.close()


def test_max_connections_per_ip(relayd_factory):
    r = relayd_factory(max_connections_per_ip=1)
    a = _greeted(r, SRC_A)
    try:
        _refused(r, SRC_A,
                 "Too many connections from your address, try again later")
        # Another client address is still welcome.
        b = _greeted(r, SRC_B, tries=1)
        assert b.cmd("EHLO b.test").code == 250
        assert a.cmd("EHLO a.test").code == 250
        b.close()
    finally:
        a.close()


def _closed_by_timeout(c, low, high=6.0):
    t0 = time.monotonic()
    rep = c.reply(timeout=high)
    elapsed = time.monotonic() - t0
    assert rep.pair == (421, "4.4.2"), rep
    assert rep.text == "Timeout exceeded, closing connection"
    assert c.closed_within(3), "not closed after the timeout reply"
    assert elapsed >= low, "timed out too early: %.2fs" % elapsed
    return elapsed


def test_greeting_timeout(relayd_factory):
    r = relayd_factory(timeout_greeting="1s", timeout_command="60s",
                       timeout_data="60s")
    with smtp_connect(r) as c:
        _closed_by_timeout(c, 0.8)
    # Commands before HELO are still "before the greeting" (RFC 5321 INIT).
    with smtp_connect(r) as c:
        assert c.cmd("NOOP").pair == (250, "2.0.0")
        _closed_by_timeout(c, 0.8)


def test_command_timeout(relayd_factory):
    r = relayd_factory(timeout_greeting="60s", timeout_command="1s",
                       timeout_data="60s")
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        # Activity restarts the timer.
        for _ in range(3):
            time.sleep(0.5)
            assert c.cmd("NOOP").pair == (250, "2.0.0")
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        _closed_by_timeout(c, 0.8)
    assert r.stored() == {}


def test_data_timeout_queues_nothing(relayd_factory):
    # The data below comes at about 20 bytes/s: above a data_min_rate of
    # 10 (the default 500 would cut it off: test_timeouts.py).
    r = relayd_factory(timeout_greeting="60s", timeout_command="60s",
                       timeout_data="1s", data_min_rate=10)
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        # Data that keeps coming is not idle, even past the timeout.
        c.send(b"Subject: slow\r\n\r\n")
        for i in range(5):
            time.sleep(0.4)
            c.send(b"line %d\r\n" % i)
        c.send(b"partial line with no end")
        _closed_by_timeout(c, 0.8)
    # A BDAT chunk that stops short is data too.
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        c.send(b"BDAT 1000 LAST\r\nSubject: short chunk\r\n\r\n")
        _closed_by_timeout(c, 0.8)
    assert r.stored() == {}
    assert no_unfinished(r) == []
    out = r.relayctl("list").stdout.decode()
    assert out == "Mail queue is empty\n", out
    # And the daemon still takes mail.
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        qid = c.cmd("Subject: ok\r\n\r\nx\r\n.").queued_id()
    assert list(r.stored()) == [qid]


def test_shutdown_tells_clients(relayd_factory):
    # shutdown_timeout = 0: a client inside a message is not waited for
    # either (test_lifecycle.py has the default's grace).
    r = relayd_factory(shutdown_timeout="0")
    idle = smtp_connect(r)
    mid = smtp_connect(r)
    try:
        assert idle.cmd("EHLO idle.test").code == 250
        assert mid.cmd("EHLO mid.test").code == 250
        assert mid.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert mid.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        assert mid.cmd("DATA").code == 354
        mid.send(b"Subject: unfinished\r\n\r\nno end yet\r\n")
        time.sleep(0.2)
        r.stop()        # SIGTERM, waits, checks a clean exit
        for c in (idle, mid):
            rep = c.reply(timeout=5)
            assert rep.pair == (421, "4.3.2"), rep
            assert rep.text == "Service shutting down, closing connection"
            assert c.closed_within(5)
    finally:
        idle.close()
        mid.close()
    assert r.stored() == {}
    assert no_unfinished(r) == []
