"""tests/e2e/test_auth_lockout.py - Failed-AUTH lockouts that cannot be
turned against a user (issue 8 §3), against the real daemon over real
sockets, clients bound to many 127.x.y.z source addresses:

- a stranger's 50 wrong passwords for alice from many addresses never lock
  alice out: her right password from a fresh address gets 235 at once,
  while the stranger's further guesses still wait in alice's slow lane;
  the lane's queue is bounded (454 beyond), and an unknown name is
  slowed exactly like a known one;
- checks in flight count against auth_fail_limit: 16 concurrent wrong
  passwords from one address get exactly 5 checks;
- a client table full of lockouts fails closed: an untracked client that
  fails gets 421 and is disconnected, logged, while a right password still
  works;
- relayctl lockout list [--json] and clear [ADDR|NAME], IPv6 by /64.

Orders of events are asserted, never durations: a waiting AUTH is seen in
the log before the next step, and "no reply yet" is read without
blocking."""
import base64
import hashlib
import json
import os
import socket
import threading

import pytest

from authutil import b64, plain
from conftest import smtp_connect, wait_until

PW = "alice's right password"


def _b64(data):
    return base64.b64encode(data).decode().rstrip("=")


def scrypt_hash(pw, ln=10):
    """A credentials-file hash made by Python's hashlib (cheap ln=10 keeps
    50 checks quick)."""
    salt = os.urandom(16)
    dk = hashlib.scrypt(pw.encode(), salt=salt, n=1 << ln, r=8, p=1,
                        maxmem=256 << 20, dklen=32)
    return "$scrypt$ln=%d,r=8,p=1$%s$%s" % (ln, _b64(salt), _b64(dk))


def lockout_relayd(factory, tmp_path, users=(("alice", PW),), ln=10,
                   **conf):
    creds = tmp_path / "credentials"
    creds.write_text("".join("%s:%s::\n" % (n, scrypt_hash(p, ln))
                             for n, p in users))
    os.chmod(creds, 0o600)
    conf.setdefault("trusted_networks", "192.0.2.0/24")
    conf.setdefault("auth_plaintext_networks", "127.0.0.0/8")
    conf.setdefault("max_connections_per_ip", "100")
    return factory(credentials_file=str(creds), **conf)


def ehlo(r, source):
    c = smtp_connect(r, source=source)
    assert c.cmd("EHLO client.test").code == 250
    return c


def auth(c, user, pw):
    return c.cmd("AUTH PLAIN " + plain(user, pw))


def send_auth(c, user, pw):
    c.send("AUTH PLAIN %s\r\n" % plain(user, pw))


def silent(c):
    """No reply has arrived on c (read without waiting)."""
    c.sock.setblocking(False)
    try:
        data = c.sock.recv(4096)
    except BlockingIOError:
        data = None
    finally:
        c.sock.setblocking(True)
    c.buf += data or b""
    return data is None and c.buf == b""


def count(r, text):
    return r.log_text().count(text)


def lockout_json(r):
    res = r.relayctl("lockout", "list", "--json")
    return json.loads(res.stdout)


def test_stranger_cannot_lock_out_alice(relayd_factory, tmp_path):
    r = lockout_relayd(relayd_factory, tmp_path, auth_fail_limit=5,
                       auth_slow_delay="10m", auth_slow_delay_max="10m")
    # 50 wrong passwords for alice, from 50 addresses.
    for i in range(50):
        c = ehlo(r, "127.77.0.%d" % (i + 1))
        assert auth(c, "alice", "guess %d" % i).pair == (535, "5.7.8")
        c.close()
    assert count(r, "AUTH as alice: bad password") == 50
    # More guesses from addresses that failed before wait in alice's
    # lane: at most 8; the ninth is refused at once.
    waiting = []
    for i in range(8):
        c = ehlo(r, "127.77.0.%d" % (i + 1))
        send_auth(c, "alice", "again %d" % i)
        waiting.append(c)
        wait_until(lambda: count(r, "waiting in the name's slow lane") == i + 1,
                   what="guess %d to wait in alice's lane" % i)
    c = ehlo(r, "127.77.0.9")
    assert auth(c, "ALICE", "ninth").pair == (454, "4.7.0")
    c.close()
    assert all(silent(w) for w in waiting)
    # alice, from a fresh address: 235 at once, the strangers' guesses
    # still unanswered.
    c = ehlo(r, "127.78.0.1")
    assert auth(c, "alice", PW).pair == (235, "2.7.0")
    c.close()
    assert all(silent(w) for w in waiting)
    assert count(r, "AUTH as alice: bad password") == 50
    assert "lockout of credential" not in r.log_text()
    # The operator sees it: alice slowed down, 8 waiting; no client
    # locked (one failure each).
    js = lockout_json(r)
    names = {n["name"]: n for n in js["names"]}
    assert names["alice"]["failures"] == 50
    assert names["alice"]["waiting"] == 8
    assert 540 <= names["alice"]["delay"] <= 600
    clients = {c["client"]: c for c in js["clients"]}
    assert clients["127.77.0.1"]["failures"] == 1
    assert clients["127.77.0.1"]["checks"] == 1
    assert clients["127.77.0.1"]["locked"] == 0
    assert "127.78.0.1" not in clients
    # Lifting alice's slowdown lets the first waiter (FIFO) through; its
    # failure slows the lane again, so the others keep waiting.
    res = r.relayctl("lockout", "clear", "Alice")
    assert res.stdout.decode() == "cleared: Alice\n"
    assert waiting[0].reply().pair == (535, "5.7.8")
    assert all(silent(w) for w in waiting[1:])
    # A waiter that leaves gives its place back at once.
    waiting[1].close()
    wait_until(lambda: "left while waiting in the slow lane" in r.log_text(),
               what="the waiter that left")
    assert lockout_json(r)["names"][0]["waiting"] == 6
    for w in waiting:
        w.close()


def test_unknown_names_are_slowed_like_known_ones(relayd_factory, tmp_path):
    """The lane is per name tried, existing or not: what a guesser sees
    for "alice" and for "ghost" is the same, so it learns no names."""
    r = lockout_relayd(relayd_factory, tmp_path, auth_slow_delay="10m")
    seen = {}
    for k, name in enumerate(("alice", "ghost")):
        replies = []
        for i in range(10):
            c = ehlo(r, "127.79.%d.%d" % (k, i + 1))
            replies.append(auth(c, name, "guess").pair)
            c.close()
        waiting = []
        for i in range(8):
            c = ehlo(r, "127.79.%d.%d" % (k, i + 1))
            send_auth(c, name, "again")
            waiting.append(c)
            wait_until(lambda: count(r, "AUTH as %s: client" % name) == i + 1,
                       what="%s's waiter %d" % (name, i))
        c = ehlo(r, "127.79.%d.9" % k)
        replies.append(auth(c, name, "ninth").pair)
        c.close()
        assert all(silent(w) for w in waiting)
        seen[name] = replies
        for w in waiting:
            w.close()
    assert seen["alice"] == seen["ghost"] == \
        [(535, "5.7.8")] * 10 + [(454, "4.7.0")]
    log = r.log_text()
    assert log.count("AUTH as alice: bad password") == 10
    assert log.count("AUTH as ghost: unknown") == 10


def test_concurrent_checks_count_against_the_limit(relayd_factory, tmp_path):
    # The default scrypt (ln=15): each check takes long enough that all
    # 16 requests arrive while the first ones run.
    r = lockout_relayd(relayd_factory, tmp_path, ln=15, auth_fail_limit=5,
                       auth_lockout="10m")
    conns = [ehlo(r, "127.80.0.1") for _ in range(16)]
    for i, c in enumerate(conns):
        send_auth(c, "alice", "wrong %d" % i)
    replies = [c.reply(timeout=120).pair for c in conns]
    for c in conns:
        c.close()
    # Exactly 5 checks ran: never more than the failures left.
    assert replies.count((535, "5.7.8")) == 5, replies
    assert count(r, "AUTH as alice: bad password, client=[127.80.0.1]") == 5
    # The rest: refused while 5 were in flight (454), or after the lockout
    # (421); some arrived while the checks ran.
    assert replies.count((454, "4.7.0")) + replies.count((421, "4.7.0")) == 11
    assert replies.count((454, "4.7.0")) >= 1, replies
    assert "has as many checks in progress as failures left" in r.log_text()
    # Locked out: 421 and disconnected; another address is unaffected.
    c = ehlo(r, "127.80.0.1")
    assert auth(c, "alice", PW).pair == (421, "4.7.0")
    assert c.closed_within(10)
    c = ehlo(r, "127.80.0.2")
    assert auth(c, "alice", PW).pair == (235, "2.7.0")
    c.close()


def test_failed_client_limit_counts_waiting_checks(relayd_factory, tmp_path):
    """A client with 3 failures (limit 5) runs at most 2 more checks at
    once, queued in the slow lane or not."""
    r = lockout_relayd(relayd_factory, tmp_path, auth_fail_limit=5,
                       auth_slow_delay="10m")
    c = ehlo(r, "127.81.0.1")
    for name in ("x1", "x2", "x3"):         # each name's first: no delay
        assert auth(c, name, "bad").pair == (535, "5.7.8")
    c.close()
    conns = [ehlo(r, "127.81.0.1") for _ in range(4)]
    for c in conns[:2]:
        send_auth(c, "x1", "again")         # x1 failed: its lane waits
    # (x2 and x3 above waited too, for no time: count x1's only.)
    wait_until(lambda: count(r, "AUTH as x1: client [127.81.0.1] failed "
                                "before: waiting") == 2,
               what="two checks of x1 waiting")
    for c in conns[2:]:
        assert auth(c, "x1", "more").pair == (454, "4.7.0")
    assert silent(conns[0]) and silent(conns[1])
    # A shutdown with checks waiting: they leave the lane, the clients
    # get 421 and the connections close; relayd exits cleanly (checked
    # by stop(), sanitizers included).
    r.stop()
    for c in conns[:2]:
        assert c.reply().pair == (421, "4.3.2")
        assert c.closed_within(10)
    for c in conns:
        c.close()


def test_full_table_fails_closed(relayd_factory, tmp_path):
    r = lockout_relayd(relayd_factory, tmp_path, auth_fail_limit=1,
                       auth_lockout="10m", auth_lockout_table=4)
    # Four addresses locked out: the client table is full of lockouts.
    for i in range(4):
        c = ehlo(r, "127.82.0.%d" % (i + 1))
        assert auth(c, "alice", "bad").pair == (535, "5.7.8")
        c.close()
    js = lockout_json(r)
    assert js["capacity"] == 4
    assert sorted(c["client"] for c in js["clients"] if c["locked"]) == \
        ["127.82.0.%d" % (i + 1) for i in range(4)]
    # A fifth address: a right password still works (untracked)...
    c = ehlo(r, "127.82.0.5")
    assert auth(c, "alice", PW).pair == (235, "2.7.0")
    c.close()
    # ...but a failure it cannot record closes the connection.
    c = ehlo(r, "127.82.0.6")
    assert auth(c, "alice", "bad").pair == (421, "4.7.0")
    assert c.closed_within(10)
    assert "AUTH lockout table full" in r.log_text()
    # The locks stayed (none was evicted to make room).
    c = ehlo(r, "127.82.0.1")
    assert auth(c, "alice", PW).pair == (421, "4.7.0")
    c.close()
    # The operator lifts one: room again, failures are recorded.
    r.relayctl("lockout", "clear", "127.82.0.2")
    c = ehlo(r, "127.82.0.6")
    assert auth(c, "alice", "bad").pair == (535, "5.7.8")
    c.close()


def _ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        port = s.getsockname()[1]
        s.close()
        return port
    except OSError:
        return None


def test_relayctl_lockout_list_and_clear(relayd_factory, tmp_path):
    port6 = _ipv6_loopback()
    if port6 is None:
        pytest.skip("no IPv6 loopback")
    r = relayd_factory(start=False)
    r.conf["listen"] += ", [::1]:%d" % port6
    r.write_conf()
    creds = tmp_path / "credentials"
    creds.write_text("alice:%s::\n" % scrypt_hash(PW))
    r.conf.update({"credentials_file": str(creds),
                   "trusted_networks": "192.0.2.0/24",
                   "auth_plaintext_networks": "127.0.0.0/8, ::1/128",
                   "auth_fail_limit": "2", "auth_lockout": "10m"})
    r.write_conf()
    r.start()
    res = r.relayctl("lockout", "list")
    assert res.stdout.decode() == "no failed AUTH recorded\n"
    # An IPv6 client is keyed by its /64; a locked IPv4 one; a name.
    c = ehlo(r, "127.83.0.1")
    assert auth(c, "alice", "bad").pair == (535, "5.7.8")
    assert auth(c, "bob\x1b[2J", "bad").pair == (535, "5.7.8")
    c.close()

    class R6:
        addr, port = "::1", port6
    for i in range(2):
        c = smtp_connect(R6)
        assert c.cmd("EHLO client.test").code == 250
        assert auth(c, "alice", "bad6").pair == (535, "5.7.8")
        c.close()
    js = lockout_json(r)
    clients = {x["client"]: x for x in js["clients"]}
    assert set(clients) == {"127.83.0.1", "::/64"}
    assert clients["127.83.0.1"]["locked"] > 500
    assert clients["127.83.0.1"]["lockouts"] == 1
    assert clients["::/64"]["locked"] > 500
    assert {x["name"]: x["failures"] for x in js["names"]} == \
        {"alice": 3, "bob\x1b[2j": 1}
    assert js["limit"] == 2
    # The table for people: control characters from clients escaped.
    text = r.relayctl("lockout", "list").stdout.decode()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["CLIENT", "FAILURES", "LOCKED", "LOCKOUTS",
                                "CHECKS"]
    assert lines[1].split()[0] in ("127.83.0.1", "::/64")
    assert "bob\\x1b[2j" in text
    assert lines[-1] == "2 clients, 2 names"
    # Clear one client by an address in its /64, then everything.
    res = r.relayctl("lockout", "clear", "::1")
    assert res.stdout.decode() == "cleared: ::1\n"
    clients = {x["client"] for x in lockout_json(r)["clients"]}
    assert clients == {"127.83.0.1"}
    res = r.relayctl("lockout", "clear", "127.9.9.9")
    assert res.stdout.decode() == "nothing recorded for 127.9.9.9\n"
    res = r.relayctl("lockout", "clear")
    assert res.stdout.decode() == "cleared: 3 clients and names\n"
    assert lockout_json(r)["clients"] == []
    c = ehlo(r, "127.83.0.1")
    assert auth(c, "alice", PW).pair == (235, "2.7.0")
    c.close()
    log = r.log_text()
    assert "control: AUTH lockout of ::1 cleared" in log
    assert "control: AUTH lockouts cleared: 3 entries" in log
    # Usage errors, and relayd stopped.
    res = r.relayctl("lockout", "show", check=False)
    assert res.returncode == 2
    res = r.relayctl("lockout", "clear", "a b", check=False)
    assert res.returncode == 2
    r.stop()
    res = r.relayctl("lockout", "list")
    assert b"relayd is not running" in res.stdout
    res = r.relayctl("lockout", "list", "--json")
    assert json.loads(res.stdout) == {"running": False, "clients": [],
                                      "names": []}
