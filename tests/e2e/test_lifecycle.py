"""tests/e2e/test_lifecycle.py - how relayd starts and stops as a service:
systemd's notification protocol (READY, RELOADING, STOPPING over
$NOTIFY_SOCKET, a path or an abstract name), SIGTERM letting a client
inside a message finish it (shutdown_timeout) while idle sessions get 421
at once, the deadline cutting a slow one off, a second SIGTERM exiting at
once, and SIGTERM under a 20-client load keeping every message that got
its 250."""
import json
import os
import signal
import smtplib
import socket
import subprocess
import threading
import time

from conftest import smtp_connect, wait_until


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path.startswith("@"):
            self.s.bind("\0" + path[1:])
        else:
            self.s.bind(path)
        self.name = path
        self.s.settimeout(0.1)
        self.got = []

    def wait_for(self, key, timeout=20):
        def have():
            try:
                self.got.append(self.s.recv(4096).decode())
            except socket.timeout:
                pass
            return any(key in m.split("\n") for m in self.got)
        wait_until(have, timeout=timeout, step=0, what="notification " + key)
        return self.got

    def close(self):
        self.s.close()


def test_notify_ready_reloading_stopping(relayd_factory, tmp_path):
    for name in (str(tmp_path / "notify"), "@relayd-test-%d" % os.getpid()):
        n = NotifySocket(name)
        r = relayd_factory(start=False)
        try:
            r.start(env={"NOTIFY_SOCKET": name})
            got = n.wait_for("READY=1")
            assert "MAINPID=%d" % r.pid in got[0].split("\n"), got
            # Listening by then: READY was sent after the listeners.
            smtp_connect(r).close()
            n.got.clear()
            r.proc.send_signal(signal.SIGHUP)
            got = n.wait_for("READY=1")
            keys = [k for m in got for k in m.split("\n") if k]
            assert keys.index("RELOADING=1") < keys.index("READY=1"), keys
            r.proc.send_signal(signal.SIGTERM)
            n.wait_for("STOPPING=1")
            assert r.proc.wait(timeout=30) == 0
        finally:
            r.stop()
            n.close()


def _open_in_data(r, rcpt="x@dest.test"):
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd("RCPT TO:<%s>" % rcpt).code == 250
    assert c.cmd("DATA").code == 354
    c.send("Subject: half sent\r\n\r\nfirst part\r\n")
    return c


def test_sigterm_lets_a_message_in_flight_finish(relayd_factory):
    r = relayd_factory(shutdown_timeout="60s")
    idle = smtp_connect(r)
    assert idle.cmd("EHLO idle.test").code == 250
    busy = _open_in_data(r)
    r.proc.send_signal(signal.SIGTERM)
    # The idle session is told at once; nobody new gets in.
    rep = idle.reply(timeout=20)
    assert rep.pair == (421, "4.3.2"), rep
    assert idle.closed_within(10)
    wait_until(lambda: "shutting down" in r.log_text(), timeout=10,
               what="the shutdown to begin")
    try:
        socket.create_connection((r.addr, r.port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused, "relayd still accepts connections while stopping"
    assert r.proc.poll() is None        # still waiting for the message
    # The message in flight completes and is queued.
    busy.send("second part\r\n.\r\n")
    done = busy.reply(timeout=20)
    qid = done.queued_id()
    # Then that session is closed too, and relayd exits 0.
    rep = busy.cmd("MAIL FROM:<a@client.test>", timeout=20)
    assert rep.pair == (421, "4.3.2"), rep
    assert r.proc.wait(timeout=30) == 0
    r.proc = None
    # The message is in the spool (relayctl reads it with relayd stopped).
    out = r.relayctl("show", qid).stdout.decode()
    assert "x@dest.test" in out, out


def test_shutdown_timeout_cuts_a_slow_client_off(relayd_factory):
    r = relayd_factory(shutdown_timeout="1s")
    busy = _open_in_data(r)
    r.proc.send_signal(signal.SIGTERM)
    rep = busy.reply(timeout=30)
    assert rep.pair == (421, "4.3.2"), rep
    assert busy.closed_within(10)
    assert r.proc.wait(timeout=30) == 0
    r.proc = None
    assert "relayd stopping: closing the session in state data" in \
        r.log_text()
    # Nothing of the half message was queued.
    doc = json.loads(r.relayctl("list", "--json").stdout.decode())
    assert doc["count"] == 0 and doc["messages"] == [], doc
    assert r.stored() == {}


def test_second_sigterm_exits_at_once(relayd_factory):
    r = relayd_factory(shutdown_timeout="1h")
    busy = _open_in_data(r)
    r.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: "shutting down" in r.log_text(), timeout=10,
               what="the shutdown to begin")
    assert r.proc.poll() is None        # the message may take an hour
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(timeout=20) == 0
    r.proc = None
    assert "again: exiting now" in r.log_text()
    busy.close()


def test_sigterm_under_load_keeps_every_250(relayd_factory):
    """20 clients send as fast as they can; SIGTERM in the middle: relayd
    exits 0 within shutdown_timeout, and every message that got its 250
    is in the spool afterwards."""
    r = relayd_factory(shutdown_timeout="10s", max_connections_per_ip="100")
    accepted, errors = [], []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n):
        for i in range(200):            # bounded
            if stop.is_set():
                return
            try:
                with smtplib.SMTP(r.addr, r.port, timeout=20) as s:
                    s.ehlo("load%d.test" % n)
                    while not stop.is_set():
                        code, _ = s.mail("c%d@client.test" % n)
                        if code != 250:
                            return
                        code, _ = s.rcpt("to%d@dest.test" % n)
                        if code != 250:
                            return
                        code, msg = s.data(b"Subject: load %d %d\r\n\r\n"
                                           b"body\r\n" % (n, i))
                        if code != 250:
                            return
                        qid = msg.split(b"queued as ")[1].split()[0]
                        with lock:
                            accepted.append(qid.decode())
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    errors.append(repr(e))
                return

    ts = [threading.Thread(target=client, args=(n,), daemon=True)
          for n in range(20)]
    for t in ts:
        t.start()
    wait_until(lambda: len(accepted) >= 200, timeout=60,
               what="200 messages accepted under load")
    r.proc.send_signal(signal.SIGTERM)
    rc = r.proc.wait(timeout=40)
    stop.set()
    for t in ts:
        t.join(timeout=30)
    assert rc == 0
    r.proc = None
    with lock:
        got = set(accepted)
    assert len(got) >= 200
    listed = r.relayctl("list").stdout.decode()
    missing = [q for q in got if q not in listed]
    assert missing == [], "%d acknowledged messages missing" % len(missing)
