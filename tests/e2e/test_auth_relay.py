"""tests/e2e/test_auth_relay.py - relayd is never an open relay: a client
outside trusted_networks (bound to 127.0.0.2, trusted_networks =
127.0.0.1/32) is refused at RCPT with 554 5.7.1 until it authenticates,
then relays; on submission MAIL without AUTH is 530 5.7.0; the same over
IPv6 (::1 trusted and not); a credential's sender (from=) and recipient
(to=) restrictions, each refusal logged with the credential's name."""
import re
import socket

import pytest

from authutil import add_user, auth_plain
from conftest import SmtpRaw, smtp_connect
from tlsutil import TestCA, connect, starttls, tls_relayd

MSG = b"Subject: relay\r\n\r\nhi\r\n.\r\n"


@pytest.fixture
def ca(tmp_path):
    return TestCA(str(tmp_path / "ca"))


def _relayd(factory, ca, tmp_path, modes=("smtp", "submission"), **conf):
    conf.setdefault("credentials_file", str(tmp_path / "credentials"))
    conf.setdefault("trusted_networks", "127.0.0.1/32")
    r = tls_relayd(factory, ca, modes=modes, start=False, **conf)
    add_user(r, "app")
    add_user(r, "shop", "shop password", "--from-domains",
             "shop.example,noreply@other.example", "--to-domains",
             "dest.example")
    r.start()
    return r


def _send(c, msg=MSG):
    assert c.cmd("DATA").code == 354
    c.send(msg)
    rep = c.reply()
    assert rep.pair == (250, "2.0.0"), rep
    return rep.queued_id()


def _raw(r, mode, source):
    c = SmtpRaw(r.addr, r.ports[mode], source=source)
    assert c.reply().code == 220
    return c


def test_untrusted_refused_without_auth_accepted_with(relayd_factory, ca,
                                                      tmp_path):
    r = _relayd(relayd_factory, ca, tmp_path)
    # From 127.0.0.2 (not trusted) on the smtp listener: MAIL is fine,
    # RCPT is refused; nothing is queued.
    c = _raw(r, "smtp", "127.0.0.2")
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    rep = c.cmd("RCPT TO:<b@dest.example>")
    assert rep.pair == (554, "5.7.1") and "Relay access denied" in rep.text
    assert c.cmd("DATA").pair == (503, "5.5.1")
    assert c.cmd("QUIT").code == 221
    assert r.stored() == {}
    assert re.search(r"s=\w+: reject: RCPT TO:<b@dest.example>: 554 5.7.1 "
                     r"Relay access denied", r.log_text())
    # The same client after STARTTLS and AUTH: relayed.
    c = _raw(r, "smtp", "127.0.0.2")
    c.cmd("EHLO client.test")
    starttls(c, ca.client_context())
    c.cmd("EHLO client.test")
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert c.cmd("RCPT TO:<b@dest.example>").pair == (250, "2.1.5")
    qid = _send(c)
    c.close()
    assert list(r.stored()) == [qid]
    # 127.0.0.1 is trusted: it relays without AUTH.
    c = _raw(r, "smtp", "127.0.0.1")
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert c.cmd("RCPT TO:<b@dest.example>").pair == (250, "2.1.5")
    _send(c)
    c.close()
    assert len(r.stored()) == 2
    assert "connect from [127.0.0.1]" in r.log_text()


def test_submission_requires_auth(relayd_factory, ca, tmp_path):
    r = _relayd(relayd_factory, ca, tmp_path)
    c = _raw(r, "submission", "127.0.0.2")
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (530, "5.7.0")
    starttls(c, ca.client_context())
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (530, "5.7.0")
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    c.close()
    # Trusted clients may use submission without AUTH.
    c = _raw(r, "submission", "127.0.0.1")
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    c.close()


def _v6_relayd(factory, trusted):
    r = factory(start=False, trusted_networks=trusted)
    r.addr = "::1"
    s = socket.socket(socket.AF_INET6)
    s.bind(("::1", 0))
    r.port = s.getsockname()[1]
    s.close()
    r.conf["listen"] = "[::1]:%d" % r.port
    r.write_conf()
    r.start()
    return r


@pytest.mark.parametrize("trusted,ok", [
    ("::1/128", True),
    ("127.0.0.0/8", False),
    ("127.0.0.0/8, ::/0", True),
    ("2001:db8::/32", False),
])
def test_ipv6_client(relayd_factory, trusted, ok):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    r = _v6_relayd(relayd_factory, trusted)
    c = smtp_connect(r)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    rep = c.cmd("RCPT TO:<b@dest.example>")
    assert rep.pair == ((250, "2.1.5") if ok else (554, "5.7.1")), rep
    c.close()
    assert ("connect from [::1]" in r.log_text())


def test_credential_restrictions(relayd_factory, ca, tmp_path):
    r = _relayd(relayd_factory, ca, tmp_path, modes=("smtps",))
    c = connect(r, "smtps", ca.client_context())
    c.cmd("EHLO client.test")
    assert auth_plain(c, "shop", "shop password").pair == (235, "2.7.0")
    for sender in ("x@evil.example", "x@shop.example.evil.org",
                   "x@evil-shop.example", "other@other.example", ""):
        rep = c.cmd("MAIL FROM:<%s>" % sender)
        assert rep.pair == (553, "5.7.1"), (sender, rep)
    assert c.cmd("MAIL FROM:<noreply@other.example>").pair == (250, "2.1.0")
    assert c.cmd("RSET").code == 250
    assert c.cmd("MAIL FROM:<news@Shop.Example>").pair == (250, "2.1.0")
    for rcpt in ("a@other.example", "a@dest.example.evil.org",
                 "a@sub.dest.example"):
        rep = c.cmd("RCPT TO:<%s>" % rcpt)
        assert rep.pair == (550, "5.7.1"), (rcpt, rep)
    assert c.cmd("RCPT TO:<a@dest.example>").pair == (250, "2.1.5")
    assert c.cmd("RCPT TO:<b@DEST.example>").pair == (250, "2.1.5")
    # The From: header must name allowed senders too (test_auth_from.py).
    qid = _send(c, b"From: news@shop.example\r\n" + MSG)
    c.close()
    log = r.log_text()
    assert re.search(r"reject: MAIL FROM:<x@evil.example>: 553 5.7.1 .*"
                     r"auth=shop", log), log
    assert re.search(r"reject: RCPT TO:<a@other.example>: 550 5.7.1 .*"
                     r"auth=shop", log), log
    assert re.search(r"%s: from=<news@Shop.Example>, .*nrcpt=2, .*auth=shop"
                     % qid, log), log
    # An unrestricted credential may use any sender.
    c = connect(r, "smtps", ca.client_context())
    c.cmd("EHLO client.test")
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    assert c.cmd("MAIL FROM:<x@evil.example>").pair == (250, "2.1.0")
    c.close()


@pytest.mark.parametrize("key,value,why", [
    ("trusted_networks", "10.1.2.3/8", "'10.1.2.3/8': host bits set"),
    ("trusted_networks", "example.com", "'example.com': not an address"),
    ("auth_plaintext_networks", "::1/129", "'::1/129': prefix longer than"),
])
def test_bad_network_lists_refused_at_start(relayd_factory, key, value, why):
    import subprocess
    from conftest import RELAYD
    r = relayd_factory(start=False, **{key: value})
    res = subprocess.run([RELAYD, "-t", "-c", r.conf_path], timeout=30,
                         capture_output=True, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "%s: %s" % (key, why) in err, err
