"""tests/e2e/test_reload.py - SIGHUP reloads the configuration for new
sessions without dropping the open ones; a broken file changes nothing;
keys that need a restart keep their running value, with a warning;
listeners are added and removed, all or nothing, while open sessions
finish undisturbed."""
import re
import signal
import socket

from conftest import _next_endpoint, smtp_connect, wait_until


def _reload(r, marker):
    before = r.log_text().count(marker)
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: r.log_text().count(marker) > before, timeout=10,
               what="relayd to log %r" % marker)


def _rcpts(c, n):
    return [c.cmd("RCPT TO:<r%d@dest.test>" % i).pair for i in range(n)]


def test_sighup_applies_to_new_sessions_only(relayd_factory):
    r = relayd_factory(max_recipients=2)
    old = smtp_connect(r)
    assert old.cmd("EHLO client.test").code == 250
    assert old.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert _rcpts(old, 2) == [(250, "2.1.5")] * 2

    r.conf["max_recipients"] = "4"
    r.write_conf()
    _reload(r, "configuration reloaded")

    # The open session keeps the limit it started with, and is unharmed.
    assert old.cmd("RCPT TO:<third@dest.test>").pair == (452, "4.5.3")
    assert old.cmd("DATA").code == 354
    old.send(b"Subject: across a reload\r\n\r\nstill here\r\n.\r\n")
    rep = old.reply()
    assert rep.pair == (250, "2.0.0"), rep
    assert old.cmd("QUIT").code == 221

    # A new session gets the new limit.
    new = smtp_connect(r)
    assert new.cmd("EHLO client.test").code == 250
    assert new.cmd("MAIL FROM:<b@client.test>").pair == (250, "2.1.0")
    assert _rcpts(new, 5) == [(250, "2.1.5")] * 4 + [(452, "4.5.3")]
    new.close()
    assert len(r.stored()) == 1


def test_sighup_with_a_broken_file_keeps_running_config(relayd_factory):
    r = relayd_factory(max_recipients=2)
    with open(r.conf_path, "a") as f:
        f.write("max_recipients = lots\n")
    _reload(r, "keeping the running configuration")
    log = r.log_text()
    assert "max_recipients" in log and "lots" in log
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert _rcpts(c, 3) == [(250, "2.1.5")] * 2 + [(452, "4.5.3")]
    c.close()


def test_sighup_restart_only_keys_are_kept(relayd_factory):
    r = relayd_factory()
    old_spool = r.conf["spool_dir"]
    r.conf["spool_dir"] = old_spool + "-elsewhere"
    r.conf["max_bad_commands"] = "1"
    r.write_conf()
    _reload(r, "configuration reloaded")
    log = r.log_text()
    assert "spool_dir changed; restart relayd" in log
    # Spooling where it was; the other key took effect.
    c = smtp_connect(r)
    rep = c.cmd("FOO")
    assert rep.pair == (500, "5.5.1"), rep
    assert c.reply().pair == (421, "4.7.0")
    assert c.closed_within(5)
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: x\r\n\r\ny\r\n.\r\n")
    assert c.reply().pair == (250, "2.0.0")
    c.close()
    assert len(r.stored()) == 1
    r.conf["spool_dir"] = old_spool   # relayctl reads the spool in use
    r.write_conf()
    assert b"1 message" in r.relayctl("list").stdout


def test_sighup_reopens_log_even_with_a_broken_file(relayd_factory):
    """logrotate moves the log and sends HUP: relayd writes to the new
    file even when the configuration being edited does not load."""
    import os
    r = relayd_factory()
    os.rename(r.logfile, r.logfile + ".1")
    with open(r.conf_path, "a") as f:
        f.write("no_such_key = 1\n")
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "keeping the running configuration" in r.log_text(),
               timeout=10, what="the reload error in the new log file")
    assert "unknown key 'no_such_key'" in r.log_text()


def test_sighup_during_shutdown_is_ignored(relayd_factory):
    """A HUP (or a second TERM) while relayd drains must not kill it (the
    signal handles stay installed until the spool is closed, and the
    signals are ignored from then on): it still exits 0. Where a signal
    lands (in the drain, or after the spool closed) is up to timing; on a
    busy machine it was once after, and the HUP killed relayd."""
    r = relayd_factory()
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    # The open session holds the shutdown for a moment (it gets 421).
    r.proc.send_signal(signal.SIGTERM)
    r.proc.send_signal(signal.SIGHUP)
    r.proc.send_signal(signal.SIGTERM)
    assert c.reply().pair == (421, "4.3.2")
    # Killed by the HUP's default action, wait() would be -1 (SIGHUP).
    assert r.proc.wait(timeout=30) == 0


def _refused(addr, port):
    try:
        socket.create_connection((addr, port), timeout=2).close()
        return False
    except OSError:
        return True


def test_sighup_adds_and_removes_listeners(relayd_factory):
    r = relayd_factory()
    old_addr, old_port = r.addr, r.port
    new_addr, new_port = _next_endpoint()
    open_ = smtp_connect(r)
    assert open_.cmd("EHLO client.test").code == 250
    assert open_.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")

    # Added: the new address answers, the old one still does.
    r.conf["listen"] = "%s:%d, %s:%d/submission" % (old_addr, old_port,
                                                    new_addr, new_port)
    r.write_conf()
    _reload(r, "configuration reloaded")
    assert "listening on %s:%d (submission)" % (new_addr, new_port) in \
        r.log_text()
    c = smtp_connect(r)
    c.close()
    r.addr, r.port = new_addr, new_port
    c = smtp_connect(r)
    assert c.cmd("EHLO c.test").code == 250
    c.close()

    # Removed: the old address is closed; the session opened on it
    # finishes its message undisturbed.
    r.conf["listen"] = "%s:%d/submission" % (new_addr, new_port)
    r.write_conf()
    _reload(r, "configuration reloaded")
    assert "no longer listening on %s:%d" % (old_addr, old_port) in \
        r.log_text()
    wait_until(lambda: _refused(old_addr, old_port), timeout=10,
               what="the old listener to close")
    assert open_.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
    assert open_.cmd("DATA").code == 354
    open_.send(b"Subject: across listener changes\r\n\r\nok\r\n.\r\n")
    assert open_.reply().pair == (250, "2.0.0")
    assert open_.cmd("QUIT").code == 221
    assert len(r.stored()) == 1


def test_sighup_listener_that_cannot_bind_changes_nothing(relayd_factory):
    r = relayd_factory()
    # An address in use by someone else: the reload is refused as a
    # whole (the other change in it does not apply either).
    busy = socket.socket()
    busy.bind(_next_endpoint())
    busy.listen(1)
    b_addr, b_port = busy.getsockname()
    try:
        r.conf["listen"] = "%s:%d, %s:%d" % (r.addr, r.port, b_addr, b_port)
        r.conf["max_recipients"] = "1"
        r.write_conf()
        _reload(r, "keeping the running configuration")
        # (Linux lets the bind through and refuses the listen.)
        log = r.log_text()
        assert re.search(r"SIGHUP: listen %s:%d: (cannot bind: )?address "
                         r"already in use; keeping the running "
                         r"configuration" % (re.escape(b_addr), b_port),
                         log), log[-2000:]
    finally:
        busy.close()
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert _rcpts(c, 2) == [(250, "2.1.5")] * 2     # max_recipients unchanged
    c.close()
