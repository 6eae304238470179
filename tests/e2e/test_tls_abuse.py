"""tests/e2e/test_tls_abuse.py - What a hostile or broken peer does to the
TLS listeners: the STARTTLS command injection (CVE-2011-0411: commands
pipelined after STARTTLS in one write must never run inside TLS),
garbage and plaintext instead of a handshake, a handshake that never
ends (timeout_command), and a peer that leaves mid-handshake. Each
failure is logged with the peer and OpenSSL's reason and closes only that
session: another one, running beside it, finishes its message."""
import os
import re

import pytest

from conftest import SmtpRaw, wait_until
from tlsutil import TLS_NAME, TestCA, connect, starttls, tls_relayd

MSG = b"Subject: beside the mess\r\n\r\nfine\r\n.\r\n"


def garbage(n):
    """n random bytes that do not start like a TLS record or an SSLv2
    ClientHello (those would make OpenSSL wait for the rest of a record
    the random length announces, up to the handshake timeout)."""
    return b"\x00\x00" + os.urandom(n - 2)


@pytest.fixture
def ca(tmp_path):
    return TestCA(str(tmp_path / "ca"))


def _ehlo(c):
    rep = c.cmd("EHLO client.test")
    assert rep.code == 250, rep
    return rep


@pytest.mark.parametrize("injected", [
    b"RSET\r\n",
    b"MAIL FROM:<x@y.test>\r\n",
    b"EHLO evil.test\r\nMAIL FROM:<evil@y.test>\r\nRCPT TO:<v@dest.test>\r\n"
    b"DATA\r\nSubject: injected\r\n\r\nevil\r\n.\r\n",
])
def test_starttls_injection_is_discarded(relayd_factory, ca, injected):
    r = tls_relayd(relayd_factory, ca)
    with connect(r, "submission") as c:
        _ehlo(c)
        c.send(b"STARTTLS\r\n" + injected)   # one write
        rep = c.reply()
        assert rep.pair == (220, "2.0.0"), rep
        # Nothing for the injected commands, in plaintext either.
        assert c.buf == b"", c.buf
        c.sock = ca.client_context().wrap_socket(c.sock,
                                                 server_hostname=TLS_NAME)
        # The first reply inside TLS answers our own EHLO (a multi-line
        # 250 naming the server), not an injected command.
        ehlo = c.cmd("EHLO client.test")
        assert ehlo.lines[0] == "250-relay.test", ehlo
        assert ehlo.lines[-1] == "250 DSN", ehlo
        c.no_more(0.3)
        # No transaction was started for us: our own MAIL is not nested.
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RSET").pair == (250, "2.0.0")
        assert c.cmd("QUIT").pair == (221, "2.0.0")
    assert r.stored() == {}
    assert re.search(r"s=\w+: %d bytes sent after STARTTLS before the "
                     r"handshake discarded" % len(injected), r.log_text())


def test_injection_split_across_writes_is_discarded_too(relayd_factory, ca):
    """The injected command reaches relayd in the same segment as the end
    of STARTTLS, however the STARTTLS line itself was split."""
    r = tls_relayd(relayd_factory, ca)
    with connect(r, "submission") as c:
        _ehlo(c)
        c.send(b"START")
        c.no_more(0.2)
        c.send(b"TLS\r\nRSET\r\n")
        assert c.reply().pair == (220, "2.0.0")
        c.sock = ca.client_context().wrap_socket(c.sock,
                                                 server_hostname=TLS_NAME)
        assert c.cmd("NOOP").pair == (250, "2.0.0")
        c.no_more(0.3)


class Healthy:
    """A session in TLS with a transaction open, beside the bad one;
    .noop() keeps it from idling out, .finish() must queue its message."""

    def __init__(self, r, ca):
        self.c = c = connect(r, "smtps", ca.client_context())
        _ehlo(c)
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")

    def noop(self):
        assert self.c.cmd("NOOP").pair == (250, "2.0.0")

    def finish(self):
        c = self.c
        assert c.cmd("DATA").code == 354
        c.send(MSG)
        assert c.reply().pair == (250, "2.0.0")
        assert c.cmd("QUIT").pair == (221, "2.0.0")
        c.close()


@pytest.mark.parametrize("what", ["random", "plaintext", "http",
                                  "after-starttls"])
def test_handshake_garbage_closes_only_that_session(relayd_factory, ca, what):
    r = tls_relayd(relayd_factory, ca)
    healthy = Healthy(r, ca)
    if what == "after-starttls":
        bad = connect(r, "submission")
        _ehlo(bad)
        assert bad.cmd("STARTTLS").pair == (220, "2.0.0")
        bad.send(garbage(700))
    else:
        bad = SmtpRaw(r.addr, r.ports["smtps"])
        bad.send({"random": garbage(700),
                  "plaintext": b"EHLO client.test\r\n",
                  "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"}[what])
    assert bad.closed_within(5), "relayd kept the session open"
    # Whatever came back is a TLS alert at most, never an SMTP reply.
    assert b"220" not in bad.buf and b"250" not in bad.buf, bad.buf
    bad.close()
    wait_until(lambda: "TLS handshake failed with [127.0.0.1]:" in r.log_text(),
               timeout=5, what="the failed handshake in the log")
    line = [l for l in r.log_text().splitlines()
            if "TLS handshake failed" in l][0]
    # The peer and OpenSSL's reason.
    assert re.search(r"s=\w+: TLS handshake failed with \[127\.0\.0\.1\]:\d+: "
                     r"\S", line), line
    healthy.finish()
    assert len(r.stored()) == 1


@pytest.mark.parametrize("mode", ["smtps", "submission"])
def test_handshake_timeout(relayd_factory, ca, mode):
    """timeout_command bounds the whole handshake (timeout_greeting is
    left long to show which one applies); a peer that sends half a
    ClientHello and waits is closed and logged."""
    r = tls_relayd(relayd_factory, ca, timeout_command="1s",
                   timeout_greeting="5m")
    healthy = Healthy(r, ca)
    if mode == "smtps":
        slow = SmtpRaw(r.addr, r.ports["smtps"])
    else:
        slow = connect(r, "submission")
        _ehlo(slow)
        assert slow.cmd("STARTTLS").pair == (220, "2.0.0")
    slow.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a beginning
    # The healthy session keeps talking (each command well within 1s)
    # while the slow one waits out its single handshake deadline.
    for _ in range(20):
        if slow.closed_within(0.3):
            break
        healthy.noop()
    else:
        raise AssertionError("no handshake timeout")
    slow.close()
    wait_until(lambda: "TLS handshake timed out with [127.0.0.1]:"
               in r.log_text(), timeout=5, what="the timeout in the log")
    healthy.finish()
    assert len(r.stored()) == 1


def test_peer_leaves_mid_handshake(relayd_factory, ca):
    r = tls_relayd(relayd_factory, ca)
    healthy = Healthy(r, ca)
    for _ in range(5):
        s = SmtpRaw(r.addr, r.ports["smtps"])
        s.send(b"\x16\x03\x01")
        s.close()
    wait_until(lambda: r.log_text().count("connection closed by the client")
               >= 5, timeout=5, what="five closed handshakes in the log")
    healthy.finish()
    assert len(r.stored()) == 1


def test_many_failing_handshakes_do_not_leak(relayd_factory, ca):
    """Sessions that fail their handshake free everything: after many,
    a clean shutdown (checked by the fixture, leak-checked under
    SANITIZE=1) and a working listener."""
    r = tls_relayd(relayd_factory, ca)
    for i in range(40):
        s = SmtpRaw(r.addr, r.ports["smtps"])
        s.send(garbage(64 + i))
        assert s.closed_within(5)
        s.close()
    healthy = Healthy(r, ca)
    healthy.finish()
    assert len(r.stored()) == 1


@pytest.mark.parametrize("n", [746, 838, 1000])
def test_starttls_after_a_pipelined_burst(relayd_factory, tmp_path, n):
    """A client pipelines n EHLOs and STARTTLS without reading: relayd
    stops reading it while the replies wait (issue 8 §4), and once they
    drain it must read the ClientHello again, not leave the handshake to
    time out (found in review; n from the reproducer: the counts that
    left the write queue at the high-water mark when STARTTLS was
    accepted)."""
    import socket
    import time
    ca = TestCA(str(tmp_path / "ca"))
    r = tls_relayd(relayd_factory, ca, modes=("submission",),
                   timeout_command="30s")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((r.addr, r.ports["submission"]))
    s.settimeout(30)
    buf = b""
    while b"\r\n" not in buf:
        buf += s.recv(4096)
    s.sendall(b"EHLO client.test\r\n" * n + b"STARTTLS\r\n")
    time.sleep(0.3)                  # relayd fills its queue meanwhile
    buf = b""
    # Now read every reply, up to the end of STARTTLS's 220 line: the
    # handshake must not start with the rest of that line unread (the
    # line can arrive in two segments with this small receive buffer).
    while not buf.endswith(b"\r\n") or b"\r\n220 2.0.0" not in buf:
        d = s.recv(65536)
        assert d, "closed before the STARTTLS reply"
        buf += d
    assert buf.rsplit(b"\r\n", 2)[-2].startswith(b"220 2.0.0"), buf[-200:]
    t = ca.client_context().wrap_socket(s, server_hostname=TLS_NAME)
    t.sendall(b"EHLO again.test\r\n")
    assert t.recv(4096).startswith(b"250")
    t.close()
    assert "TLS handshake timed out" not in r.log_text()
