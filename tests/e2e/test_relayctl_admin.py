"""tests/e2e/test_relayctl_admin.py - relayctl's queue changes and stats
with relayd stopped, list filters, and relayctl's side of the control
protocol.

With relayd stopped, hold, release and delete change the spool directly
(the changes show in `list --json`, a deleted body is gone, and a restarted
relayd repairs nothing); flush, bounce and requeue refuse; bad ids are
usage errors; `stats` counts what the index holds. A relayd that runs but
does not answer on its control socket is never changed behind its back.

The protocol client (deliver/deliver_ctl.h) is driven by a scripted
control socket on spool/control standing in for relayd, with relayd itself
stopped: the request lines relayctl sends, how it prints ok/err replies,
what it refuses (malformed, oversized, hostile JSON, no answer in time), the
flattened stats and list's "delivery paused" banner. Tests against the real
daemon's control socket belong with the daemon side.
"""
import json
import os
import random
import re
import smtplib
import socket
import subprocess
import threading
import time

from conftest import RELAYCTL, SANITIZE

QID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{16}$")


def _queue(r, sender, rcpts, subject="x"):
    s = smtplib.SMTP(r.addr, r.port, timeout=10)
    try:
        s.ehlo("client.test")
        code, _ = s.mail(sender)
        assert code == 250
        for x in rcpts:
            code, _ = s.rcpt(x)
            assert code == 250
        code, resp = s.data(("Subject: %s\r\n\r\nbody\r\n" % subject).encode())
        assert code == 250, resp
        return re.search(rb"queued as (\S+)", resp).group(1).decode()
    finally:
        s.quit()


def _stopped_spool(relayd_factory):
    """A stopped relayd with three held messages:
    q1 <s1@client.test> -> a@example.com
    q2 <s2@client.test> -> b@evil-example.com, c@example.com.evil.org
    q3 <>               -> d@dest.test"""
    r = relayd_factory()
    q1 = _queue(r, "s1@client.test", ["a@example.com"])
    q2 = _queue(r, "s2@client.test", ["b@evil-example.com",
                                      "c@example.com.evil.org"])
    q3 = _queue(r, "", ["d@dest.test"])
    r.stop()
    # Mail is queued active (delivery = hold only keeps the scheduler
    # idle); hold all three offline, the starting point of these tests.
    for q in (q1, q2, q3):
        r.relayctl("hold", q)
    return r, q1, q2, q3


def _msgs(r, *args):
    """{id: message} from list --json (with filters), without the ages,
    which move while a test runs."""
    j = json.loads(r.relayctl("list", "--json", *args).stdout)
    assert j["count"] == len(j["messages"])
    for m in j["messages"]:
        del m["age_seconds"]
    return {m["id"]: m for m in j["messages"]}


def _text_ids(r, *args):
    """The ids on the message lines of the text listing."""
    out = r.relayctl("list", *args).stdout.decode()
    return [l.split()[0] for l in out.splitlines() if QID.match(l[:16])]


def _body(r, qid):
    return os.path.join(r.spool, "msg", qid)


def test_offline_hold_release_delete(relayd_factory):
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    before = _msgs(r)
    assert {m["state"] for m in before.values()} == {"hold"}

    t0 = int(time.time())
    res = r.relayctl("release", q1)
    assert res.stdout.decode() == ("%s: released (relayd is not running; "
                                   "changed the spool directly)\n" % q1)
    assert res.stderr == b""
    after = _msgs(r)
    assert after[q1]["state"] == "active"
    t1 = int(time.time())
    for rc in after[q1]["recipients"]:
        assert rc["state"] == "pending"
        assert t0 <= rc["next_attempt"] <= t1       # due now
    assert after[q2] == before[q2] and after[q3] == before[q3]

    # Release what is not held: nothing changes. Ids are case-insensitive.
    assert r.relayctl("release", q1.lower()).returncode == 0
    assert _msgs(r)[q1] == after[q1]
    res = r.relayctl("hold", q1)
    assert res.stdout.decode().startswith("%s: held (relayd is not running" % q1)
    assert _msgs(r)[q1]["state"] == "hold"
    r.relayctl("hold", q1)                          # already held: fine
    r.relayctl("release", q3)

    assert os.path.exists(_body(r, q2))
    res = r.relayctl("delete", q2)
    assert res.stdout.decode().startswith("%s: deleted (relayd is not running"
                                          % q2)
    assert not os.path.exists(_body(r, q2))
    assert set(_msgs(r)) == {q1, q3}
    res = r.relayctl("delete", q2, check=False)
    assert res.returncode == 1
    assert res.stderr.decode() == "relayctl: no message with id %s\n" % q2
    assert r.relayctl("show", q2, check=False).returncode == 1

    # relayd's next start finds nothing to repair, and the changes stay.
    seen = len(r.log_text())
    r.start()
    r.stop()
    log = r.log_text()[seen:]
    assert "recovery: 2 messages in queue, 0 repaired" in log, log
    assert q2 not in log, log
    assert "dropped" not in log and "removed" not in log, log
    final = _msgs(r)
    assert set(final) == {q1, q3}
    assert final[q1]["state"] == "hold"
    assert final[q3]["state"] == "active"


def test_offline_refusals(relayd_factory):
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    before = _msgs(r)
    for args in (("flush",), ("flush", q1), ("bounce", q1), ("requeue", q2)):
        res = r.relayctl(*args, check=False)
        assert res.returncode == 1, (args, res)
        assert res.stdout == b""
        err = res.stderr.decode()
        assert err.startswith("relayctl: relayd is not running"), err
        assert err.count("\n") == 1
    assert _msgs(r) == before

    unknown = "0" * 16
    for cmd in ("hold", "release", "delete"):
        res = r.relayctl(cmd, unknown, check=False)
        assert res.returncode == 1
        assert res.stderr.decode() == "relayctl: no message with id %s\n" % unknown

    for bad in ("xyz", q1 + "0", q1[:-1] + "U", "../" + q1[3:], "-"):
        for cmd in ("hold", "release", "delete", "bounce", "requeue", "flush"):
            res = r.relayctl(cmd, bad, check=False)
            assert res.returncode == 2, (cmd, bad, res)
            assert res.stdout == b""
            assert res.stderr.decode().startswith(
                "relayctl: '%s' is not a queue id\n" % bad), res.stderr
    for cmd in ("hold", "release", "delete", "bounce", "requeue"):
        res = r.relayctl(cmd, check=False)
        assert res.returncode == 2 and b"missing argument" in res.stderr
    res = r.relayctl("hold", q1, q2, check=False)
    assert res.returncode == 2 and b"too many arguments" in res.stderr
    res = r.relayctl("hold", q1, "--json", check=False)
    assert res.returncode == 2 and b"'hold' has no --json output" in res.stderr
    assert _msgs(r) == before


def test_missing_spool(relayd_factory, tmp_path):
    r = relayd_factory(start=False, spool=str(tmp_path / "no-such-spool"))
    for args in (("hold", "0" * 16), ("release", "0" * 16),
                 ("delete", "0" * 16), ("stats",), ("stats", "--json")):
        res = r.relayctl(*args, check=False)
        assert res.returncode == 1, (args, res)
        assert res.stdout == b""
        assert res.stderr.decode().startswith(
            "relayctl: no spool at %s " % r.spool), res.stderr
    assert not os.path.exists(r.spool)


def test_stale_socket_is_not_running(relayd_factory):
    """A control socket nobody listens on (relayd was killed): stopped."""
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.join(r.spool, "control"))
    s.close()
    res = r.relayctl("hold", q1)
    assert b"relayd is not running" in res.stdout
    res = r.relayctl("flush", check=False)
    assert res.returncode == 1 and b"relayd is not running" in res.stderr


def test_no_change_behind_a_running_relayd(relayd_factory):
    """relayd runs but nothing answers on its control socket (removed, or
    a relayd without one): relayctl must not write to the index it has
    open."""
    r = relayd_factory()
    q = _queue(r, "s@client.test", ["a@example.com"])
    ctl = os.path.join(r.spool, "control")
    if os.path.exists(ctl):
        os.unlink(ctl)
    before = _msgs(r)
    for cmd in ("hold", "release", "delete"):
        res = r.relayctl(cmd, q, check=False)
        assert res.returncode == 1, res
        assert b"another process has the queue index open" in res.stderr, \
            res.stderr
    assert _msgs(r) == before
    assert os.path.exists(_body(r, q))


def test_list_filters(relayd_factory):
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    r.relayctl("release", q2)           # q2 active, q1 and q3 held
    everyone = {q1, q2, q3}
    cases = [
        ((), everyone),
        (("--state", "hold"), {q1, q3}),
        (("--state=active",), {q2}),
        (("--state", "HOLD"), {q1, q3}),
        (("--state", "pending"), everyone),
        (("--state", "deferred"), set()),
        (("--state", "sent"), set()),
        (("--state", "bounced"), set()),
        # Domains match exactly, in any case.
        (("--to", "example.com"), {q1}),
        (("--to", "EXAMPLE.com"), {q1}),
        (("--to", "@example.com"), {q1}),
        (("--to", "evil-example.com"), {q2}),
        (("--to", "example.com.evil.org"), {q2}),
        (("--to", "com"), set()),
        (("--to", "dest.test"), {q3}),
        (("--older", "1h"), set()),
        (("--older", "0s"), everyone),
        (("--older", "0"), everyone),
        (("--from", "s1@client.test"), {q1}),
        (("--from", "<s1@CLIENT.TEST>"), {q1}),
        (("--from", "S1@client.test"), set()),      # local parts are exact
        (("--from", "<>"), {q3}),
        (("--from", ""), {q3}),
        # Filters combine with AND.
        (("--state", "hold", "--to", "dest.test"), {q3}),
        (("--state", "active", "--to", "example.com"), set()),
        (("--to", "example.com", "--older", "0s", "--state", "pending"), {q1}),
    ]
    for args, want in cases:
        assert set(_msgs(r, *args)) == want, (args, want)
        assert set(_text_ids(r, *args)) == want, (args, want)
        assert _text_ids(r, *args) == sorted(want)          # oldest first

    out = r.relayctl("list", "--to", "example.com").stdout.decode()
    assert out.splitlines()[-1].startswith("1 message, 1 KiB (of 3 in the queue)")
    out = r.relayctl("list", "--older", "1h").stdout.decode()
    assert out == "No message matches (3 in the queue)\n"
    j = json.loads(r.relayctl("list", "--json", "--older", "1h").stdout)
    assert j == {"messages": [], "count": 0, "total_size": 0}

    for args in (("--state", "bogus"), ("--state", ""), ("--older", "soon"),
                 ("--older", "-1h"), ("--to", ""), ("--to", "a@b.test"),
                 ("--state",), ("--frobnicate",), ("--to", "x", "--to", "y")):
        res = r.relayctl("list", *args, check=False)
        assert res.returncode == 2, (args, res)
        assert res.stdout == b""


def test_list_recipient_lines(relayd_factory):
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    r.relayctl("release", q2)
    lines = r.relayctl("list").stdout.decode().splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith(q2))
    assert re.match(r"^%s +\S+ +\d+ active +<s2@client.test> +"
                    r"<b@evil-example.com> \(\+1 more\)$" % q2, lines[i])
    assert re.match(r"^  pending +0 tries +next now +<b@evil-example.com>$",
                    lines[i + 1]), lines[i + 1]
    assert re.match(r"^  pending +0 tries +next now +<c@example.com.evil.org>$",
                    lines[i + 2]), lines[i + 2]
    i = next(k for k, l in enumerate(lines) if l.startswith(q3))
    assert re.match(r"^%s +\S+ +\d+ hold +<> +<d@dest.test>$" % q3, lines[i])
    assert re.match(r"^  pending +0 tries +on hold +<d@dest.test>$",
                    lines[i + 1]), lines[i + 1]


def test_stats_offline(relayd_factory):
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    r.relayctl("release", q2)
    size = sum(len(b) for b in r.stored().values())
    j = json.loads(r.relayctl("stats", "--json").stdout)
    assert j == {"running": False,
                 "queue": {"messages": 3, "size": size, "active": 1, "hold": 2,
                           "recipients": {"pending": 4, "deferred": 0,
                                          "sent": 0, "bounced": 0}}}
    out = r.relayctl("stats").stdout.decode()
    assert out == ("relayd: not running\n"
                   "queue.messages: 3\n"
                   "queue.size: %d\n"
                   "queue.active: 1\n"
                   "queue.hold: 2\n"
                   "queue.recipients.pending: 4\n"
                   "queue.recipients.deferred: 0\n"
                   "queue.recipients.sent: 0\n"
                   "queue.recipients.bounced: 0\n" % size)


# ---- relayctl's side of the control protocol -------------------------------

class FakeControl:
    """A scripted relayd control socket on spool/control: answers each
    connection with the next scripted reply (bytes; None: read the request
    and never answer), records the request lines."""

    def __init__(self, spool, replies):
        self.path = os.path.join(spool, "control")
        if os.path.exists(self.path):       # left by a stopped relayd
            os.unlink(self.path)
        self.replies = list(replies)
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.settimeout(0.02)
        self.stop = False
        self.held = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            c.settimeout(5)
            req = b""
            try:
                while b"\n" not in req:
                    d = c.recv(4096)
                    if not d:
                        break
                    req += d
            except OSError:
                pass
            self.requests.append(req)
            reply = self.replies.pop(0) if self.replies else b"err no script\n"
            if reply is None:
                self.held.append(c)     # never answers
                continue
            try:
                c.sendall(reply)
            except OSError:
                pass
            c.close()

    def close(self):
        self.stop = True
        self.t.join(5)
        for c in self.held:
            c.close()
        self.sock.close()
        os.unlink(self.path)


def _ctl(r, replies, *args):
    f = FakeControl(r.spool, replies)
    try:
        res = r.relayctl(*args, check=False)
    finally:
        f.close()
    return res, f.requests


def test_protocol_verbs(relayd_factory):
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    before = _msgs(r)
    for verb, done in (("hold", "held"), ("release", "released"),
                       ("delete", "deleted"), ("bounce", "bounced"),
                       ("requeue", "requeued"), ("flush", "flushed")):
        res, reqs = _ctl(r, [b"ok\n"], verb, q1.lower())
        assert reqs == [("%s %s\n" % (verb, q1)).encode()]
        assert res.returncode == 0 and res.stderr == b""
        assert res.stdout.decode() == "%s: %s\n" % (q1, done)
    res, reqs = _ctl(r, [b"ok\n"], "flush")
    assert reqs == [b"flush\n"] and res.stdout == b"queue flushed\n"
    # relayd's own words win, made safe for a terminal.
    res, _ = _ctl(r, [b"ok %s: on hold \x1b[2J\n" % q1.encode()], "hold", q1)
    assert res.stdout.decode() == "%s: on hold \\x1b[2J\n" % q1
    res, _ = _ctl(r, [b"ok 12 messages due now\r\nextra ignored"], "flush")
    assert res.stdout == b"12 messages due now\n"
    # Online, nothing is changed offline behind relayd's back.
    assert _msgs(r) == before

    res, _ = _ctl(r, [b"err no such message\n"], "delete", q2)
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr == b"relayctl: no such message\n"
    res, _ = _ctl(r, [b"err \x1b[31mred\x07\n"], "bounce", q2)
    assert res.returncode == 1
    assert res.stderr == b"relayctl: \\x1b[31mred\\x07\n"
    assert os.path.exists(_body(r, q2))

    malformed = [b"", b"ok", b"ok but no newline", b"okay\n", b"error x\n",
                 b"OK\n", b"ok \x00x\n", b"250 ok\n", b"x" * 9000 + b"\n",
                 b"ok " + b"y" * 8200]
    for reply in malformed:
        res, _ = _ctl(r, [reply], "hold", q1)
        assert res.returncode == 1, (reply[:40], res)
        assert res.stdout == b""
        assert res.stderr.decode() == ("relayctl: relayd sent a malformed "
                                       "reply on %s/control\n" % r.spool), \
            (reply[:40], res.stderr)
    # The longest reply accepted: 8192 bytes with the LF.
    res, _ = _ctl(r, [b"ok " + b"z" * 8188 + b"\n"], "hold", q1)
    assert res.returncode == 0 and res.stdout == b"z" * 8188 + b"\n"
    assert _msgs(r) == before


STATS = (b'{"running":true,"queue":{"messages":3,"active":1,"hold":2},'
         b'"route":{"state":"paused","until":%d,"reason":"smarthost: 421 '
         b'4.3.2 busy \\u00e9\\ud83d\\ude00"},'
         b'"list":[1, "a b", {"k": [true, null]}],"empty":{},'
         b'"esc":"\\u001b[2J\\u0085","num":-1.5e3}')


def test_protocol_stats(relayd_factory):
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    until = int(time.time()) + 600
    stats = STATS % until
    res, reqs = _ctl(r, [b"ok " + stats + b"\n"], "stats", "--json")
    assert reqs == [b"stats\n"]
    assert res.returncode == 0 and res.stdout == stats + b"\n"
    assert json.loads(res.stdout)["route"]["until"] == until
    res, _ = _ctl(r, [b"ok " + stats + b"\n"], "stats")
    assert res.returncode == 0, res
    assert res.stdout.decode() == (
        "running: true\n"
        "queue.messages: 3\n"
        "queue.active: 1\n"
        "queue.hold: 2\n"
        "route.state: paused\n"
        "route.until: %d\n"
        "route.reason: smarthost: 421 4.3.2 busy \u00e9\U0001F600\n"
        "list: [1,\"a b\",{\"k\":[true,null]}]\n"
        "empty: {}\n"
        "esc: \\x1b[2J\\xc2\\x85\n"
        "num: -1.5e3\n" % until)

    bad = [b"", b"[]", b"{}{}", b'{"a":1,}', b'{"a":}', b'{"a" 1}', b"{'a':1}",
           b'{"a":01}', b'{"a":1.}', b'{"a":.5}', b'{"a":tru}', b'{"a":"x',
           b'{"a":"\x01"}', b'{"a":"\\x"}', b'{"a":"\\ud800"}',
           b'{"a":"\\udc00x"}', b'{"a":"\xff"}', b'{"a":"\xc0\xaf"}',
           b'{"a":' * 40 + b"1" + b"}" * 40, b'{"a":[' + b"[" * 40 + b"]" * 41
           + b"}", b'{"a":1} x', b'{"a":-}', b'{"a":1e}', b'{"a":NaN}']
    for reply in bad:
        for args in (("stats",), ("stats", "--json")):
            res, _ = _ctl(r, [b"ok " + reply + b"\n"], *args)
            assert res.returncode == 1, (reply, args, res)
            assert res.stdout == b"", (reply, res)
            assert b"malformed stats reply" in res.stderr, (reply, res.stderr)
    # Empty strings and keys (an empty string once reached ctl_out_text
    # as NULL: UBSan caught it under a fuzzer).
    res, _ = _ctl(r, [b'ok {"e":"","":1,"o":{"":[]}}\n'], "stats")
    assert res.returncode == 0 and res.stdout == b"e: \n: 1\no.: []\n", res
    # Nesting up to the limit is fine.
    deep = b'{"a":' * 31 + b"1" + b"}" * 31
    res, _ = _ctl(r, [b"ok " + deep + b"\n"], "stats")
    assert res.returncode == 0 and res.stdout == b"a" + b".a" * 30 + b": 1\n"
    res, _ = _ctl(r, [b"err stats are off\n"], "stats")
    assert res.returncode == 1 and res.stderr == b"relayctl: stats are off\n"


def test_protocol_stats_fuzz(relayd_factory):
    """Mutated stats replies: relayctl never crashes (the sanitizers watch
    under SANITIZE=1), answers 0 or 1, and prints only terminal-safe
    text."""
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    rnd = random.Random(1234)
    base = STATS % 1700000000
    alphabet = b'{}[]",:\\u0123456789abcdefntrl-+.eE \x00\x1b\x7f\xc3\xa9\xff'
    n = 60 if SANITIZE else 150
    replies = []
    for _ in range(n):
        b = bytearray(base)
        for _ in range(rnd.randint(1, 6)):
            op = rnd.randrange(3)
            i = rnd.randrange(len(b) + 1)
            if op == 0 and b:
                del b[min(i, len(b) - 1)]
            elif op == 1:
                b.insert(i, rnd.choice(alphabet))
            elif b:
                b[min(i, len(b) - 1)] = rnd.choice(alphabet)
        replies.append(bytes(b).replace(b"\n", b" "))
    f = FakeControl(r.spool, [b"ok " + x + b"\n" for x in replies for _ in "12"])
    codes = []
    try:
        for x in replies:
            for args in (("stats",), ("stats", "--json")):
                res = r.relayctl(*args, check=False)
                assert res.returncode in (0, 1), (x, res)
                codes.append(res.returncode)
                assert b"Sanitizer" not in res.stderr and \
                    b"runtime error" not in res.stderr, res.stderr
                if res.returncode == 0 and args == ("stats",):
                    assert re.search(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]",
                                     res.stdout) is None, (x, res.stdout)
                if res.returncode == 0 and args == ("stats", "--json"):
                    json.loads(res.stdout)
    finally:
        f.close()
    # Both kinds of mutants: still valid, and refused.
    assert codes.count(0) > len(codes) // 10 and codes.count(1) > len(codes) // 10


def _no_ages(text):
    return re.sub(rb"^(\w{16}) +\S+ ", rb"\1 AGE ", text, flags=re.M)


def test_protocol_list_banner(relayd_factory):
    r, q1, q2, q3 = _stopped_spool(relayd_factory)
    until = int(time.time()) + 600
    res, reqs = _ctl(r, [b"ok " + STATS % until + b"\n"], "list")
    assert reqs == [b"stats\n"]
    lines = res.stdout.decode().splitlines()
    assert re.match(r"^delivery paused until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "
                    r"\(in (9|10)m\): smarthost: 421 4.3.2 busy "
                    "\u00e9\U0001F600$", lines[0]), lines[0]
    assert lines[1].startswith("ID ")
    plain = _no_ages(r.relayctl("list").stdout)
    assert _no_ages(res.stdout.split(b"\n", 1)[1]) == plain

    ok = b'{"running":true,"route":{"state":"ok","until":0,"reason":""}}'
    for reply in (b"ok " + ok + b"\n", b"err no\n", b"ok {\n", b"garbage\n"):
        res, _ = _ctl(r, [reply], "list")
        assert res.returncode == 0 and _no_ages(res.stdout) == plain, \
            (reply, res)
    # Paused without a time or a reason.
    res, _ = _ctl(r, [b'ok {"route":{"state":"paused"}}\n'], "list")
    assert res.stdout.decode().split("\n")[0] == "delivery paused"
    # A relayd that does not answer delays the listing a little, no more.
    t = time.monotonic()
    res, _ = _ctl(r, [None], "list")
    assert res.returncode == 0 and _no_ages(res.stdout) == plain
    assert time.monotonic() - t < 10
    # --json asks nothing: the output is the array, as always.
    res, reqs = _ctl(r, [b"ok " + STATS % until + b"\n"], "list", "--json")
    assert reqs == [] and json.loads(res.stdout)["count"] == 3
