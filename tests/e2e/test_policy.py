"""tests/e2e/test_policy.py - The relay policy that needs no credential
(issue 4 §3): deny_networks at connect, the sender_domains and
recipient_domains allowlists, rate_connections and rate_messages per client
IP (in memory: a restart resets them), SIGHUP applying a new sender list to
new sessions, and bad values refused with file:line. Clients bind to
127.0.0.x to be a different client address."""
import os
import signal
import subprocess

from conftest import RELAYD, smtp_connect, wait_until


def _reload(r, marker):
    before = r.log_text().count(marker)
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: r.log_text().count(marker) > before, timeout=10,
               what="relayd to log %r" % marker)


def _send(c, sender, rcpts=("r@dest.test",)):
    """One whole transaction; returns the reply pair of the last step."""
    rep = c.cmd("MAIL FROM:<%s>" % sender)
    if rep.code != 250:
        return rep.pair
    for r in rcpts:
        assert c.cmd("RCPT TO:<%s>" % r).pair == (250, "2.1.5")
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: policy\r\n\r\nhello\r\n.\r\n")
    return c.reply().pair


def test_deny_networks_refuses_at_connect(relayd_factory):
    r = relayd_factory(deny_networks="127.0.0.2/32, 2001:db8::/32")
    c = smtp_connect(r, source="127.0.0.2", greet=False)
    rep = c.reply()
    assert rep.pair == (554, "5.7.1") and "Access denied" in rep.lines[0], rep
    assert c.closed_within(5)
    c.close()
    wait_until(lambda: "client=127.0.0.2 in deny_networks (127.0.0.2/32)"
               in r.log_text(), what="the refusal to be logged")

    ok = smtp_connect(r, source="127.0.0.1")
    assert ok.cmd("EHLO client.test").code == 250
    assert _send(ok, "a@client.test") == (250, "2.0.0")
    assert ok.cmd("QUIT").code == 221
    ok.close()


def test_sender_domains(relayd_factory):
    r = relayd_factory(sender_domains="example.com, example.org")
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@example.com>").pair == (250, "2.1.0")
    assert c.cmd("RSET").code == 250
    assert c.cmd("MAIL FROM:<a@EXAMPLE.ORG>").pair == (250, "2.1.0")
    assert c.cmd("RSET").code == 250
    for bad in ("a@example.com.evil.org", "a@evil-example.com",
                "a@sub.example.com", "a@other.test"):
        rep = c.cmd("MAIL FROM:<%s>" % bad)
        assert rep.pair == (553, "5.7.1"), (bad, rep)
        assert "Sender domain not allowed" in rep.lines[0]
    # a refusal is not a protocol error: the session goes on, and <> passes
    assert _send(c, "") == (250, "2.0.0")
    assert _send(c, "b@example.com") == (250, "2.0.0")
    assert c.cmd("QUIT").code == 221
    c.close()
    log = r.log_text()
    assert "from=<a@evil-example.com>, client=127.0.0.1: sender domain not " \
           "in sender_domains" in log
    assert len(r.stored()) == 2


def test_recipient_domains_per_recipient(relayd_factory):
    r = relayd_factory(recipient_domains="dest.test")
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    rep = c.cmd("RCPT TO:<x@elsewhere.test>")
    assert rep.pair == (550, "5.7.1") and "Recipient domain not allowed" \
        in rep.lines[0], rep
    assert c.cmd("RCPT TO:<x@dest.test.evil.org>").pair == (550, "5.7.1")
    assert c.cmd("RCPT TO:<y@dest.test>").pair == (250, "2.1.5")
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: one of two\r\n\r\nhi\r\n.\r\n")
    assert c.reply().pair == (250, "2.0.0")
    c.close()
    assert "to=<x@elsewhere.test>, client=127.0.0.1: recipient domain not " \
           "in recipient_domains" in r.log_text()
    bodies = list(r.stored().values())
    assert len(bodies) == 1 and b"for <y@dest.test>" in bodies[0]


def test_rate_connections(relayd_factory):
    r = relayd_factory(start=False, rate_connections="3/1m")
    r.start()   # start() connects once to see the port open: that counts
    c1 = smtp_connect(r)
    c2 = smtp_connect(r)
    c4 = smtp_connect(r, greet=False)
    rep = c4.reply()
    assert rep.pair == (421, "4.7.0"), rep
    assert "Too many connections, slow down" in rep.lines[0]
    assert c4.closed_within(5)
    c4.close()
    # another client address is counted apart
    other = smtp_connect(r, source="127.0.0.3")
    assert other.cmd("EHLO client.test").code == 250
    other.close()
    # the ones let in are unharmed
    assert c1.cmd("EHLO client.test").code == 250
    assert c2.cmd("NOOP").code == 250
    c1.close()
    c2.close()
    wait_until(lambda: "over rate_connections 3/1m" in r.log_text(),
               what="the refusal to be logged")


def test_rate_messages_and_restart(relayd_factory):
    r = relayd_factory(rate_messages="2/1h")
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert _send(c, "a@client.test") == (250, "2.0.0")
    assert _send(c, "a@client.test") == (250, "2.0.0")
    rep = c.cmd("MAIL FROM:<a@client.test>")
    assert rep.pair == (450, "4.7.1"), rep
    assert "Message rate limit exceeded" in rep.lines[0]
    c.close()
    # a new session from the same address is still over
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<b@client.test>").pair == (450, "4.7.1")
    c.close()
    # another address is not
    o = smtp_connect(r, source="127.0.0.3")
    assert o.cmd("EHLO client.test").code == 250
    assert _send(o, "a@client.test") == (250, "2.0.0")
    o.close()
    assert "over rate_messages 2/1h" in r.log_text()
    # the counters are in memory: a restart starts afresh (documented)
    r.stop()
    r.start()
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert _send(c, "a@client.test") == (250, "2.0.0")
    c.close()
    assert len(r.stored()) == 4


def test_sighup_changes_sender_domains(relayd_factory):
    r = relayd_factory(sender_domains="example.com")
    old = smtp_connect(r)
    assert old.cmd("EHLO client.test").code == 250
    assert old.cmd("MAIL FROM:<a@example.net>").pair == (553, "5.7.1")

    r.conf["sender_domains"] = "example.net"
    r.write_conf()
    _reload(r, "configuration reloaded")

    # the open session keeps the list it started with
    assert old.cmd("MAIL FROM:<a@example.com>").pair == (250, "2.1.0")
    old.close()
    new = smtp_connect(r)
    assert new.cmd("EHLO client.test").code == 250
    assert new.cmd("MAIL FROM:<a@example.com>").pair == (553, "5.7.1")
    assert new.cmd("MAIL FROM:<a@example.net>").pair == (250, "2.1.0")
    new.close()

    # a bad list on SIGHUP names file:line and changes nothing
    with open(r.conf_path, "a") as f:
        f.write("sender_domains = *.example.net\n")
    _reload(r, "keeping the running configuration")
    assert "relayd.conf:%d: sender_domains:" % (len(r.conf) + 1) \
        in r.log_text()
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@example.net>").pair == (250, "2.1.0")
    c.close()


def test_bad_values_name_file_and_line(relayd_factory, tmp_path):
    cases = [
        ("deny_networks", "10.0.0.1/8", "host bits set"),
        ("deny_networks", "10.0.0.0/33", "bad prefix length"),
        ("sender_domains", "*.example.com", "sender_domains"),
        ("recipient_domains", "a.test,,b.test", "recipient_domains"),
        ("rate_connections", "60", "not N/DURATION"),
        ("rate_messages", "5/0s", "not N/DURATION"),
    ]
    for key, val, why in cases:
        path = tmp_path / "relayd.conf"
        path.write_text("hostname = relay.test\n%s = %s\n" % (key, val))
        p = subprocess.run([RELAYD, "-t", "-c", str(path)],
                           capture_output=True, timeout=30)
        err = p.stderr.decode()
        assert p.returncode == 1, (key, val, err)
        assert "%s:2: %s:" % (path, key) in err, err
        assert why in err, err
    path = tmp_path / "good.conf"
    path.write_text("deny_networks = 192.0.2.0/24, ::ffff:10.0.0.0/104, "
                    "2001:db8::/32\nsender_domains = example.com\n"
                    "recipient_domains = dest.test\nrate_connections = 60/1m\n"
                    "rate_messages = 100/1h\n")
    # As root, -t also wants the account relayd drops to (default relayd,
    # which a test machine may lack): this file keeps root, explicitly.
    env = dict(os.environ, RELAYD_USER="root") if os.geteuid() == 0 else None
    p = subprocess.run([RELAYD, "-t", "-c", str(path)], capture_output=True,
                       timeout=30, env=env)
    assert p.returncode == 0, p.stderr.decode()
