"""tests/e2e/test_stats.py - The statistics history (issue 11 §2): relayd
counts in memory and writes hourly and daily buckets into the spool's
LMDB index (once a minute and when it stops); `relayctl stats --by
hour|day|credential|domain [--json]` and `relayctl status` read them,
with relayd stopped or running.

Two credentials (AUTH PLAIN from 127.0.0.2, which is not trusted) send
five messages through an aiosmtpd smarthost to two domains: the smarthost
refuses one recipient (550: a bounce, and a DSN to the sender, delivered
too) and defers another once (450, then sent on the retry); one unknown
command is refused. After a stop the history gives exactly those counts,
by hour and day, by credential and by domain. After a start and one more
message, `relayctl status` (running: the buckets plus what relayd has
not flushed yet) and, after a stop, the history add up across the
restart. Counts are summed over the buckets a window holds, so a test
that crosses an hour's end still sees the same totals."""
import json

from authutil import add_user, auth_plain
from conftest import smtp_connect
from conftest_upstream import (SENDER, make_message, notification_id,
                               wait_gone, wait_status)

BAD = "550 5.1.1 <bad@b.test>: Recipient address rejected: no such user"
LATER = "450 4.2.0 <slow@b.test>: try again later"


def _send(r, user, password, rcpts, bad_command=False):
    c = smtp_connect(r, source="127.0.0.2")
    assert c.cmd("EHLO client.test").code == 250
    assert auth_plain(c, user, password).pair == (235, "2.7.0")
    if bad_command:
        assert c.cmd("FROBNICATE").code == 500
    assert c.cmd("MAIL FROM:<%s>" % SENDER).pair == (250, "2.1.0")
    for a in rcpts:
        assert c.cmd("RCPT TO:<%s>" % a).pair == (250, "2.1.5")
    assert c.cmd("DATA").code == 354
    content, _ = make_message("stats", to=rcpts[0])
    c.send(content + b".\r\n")
    rep = c.reply()
    assert rep.pair == (250, "2.0.0"), rep
    qid = rep.queued_id()
    assert c.cmd("QUIT").code == 221
    c.close()
    return qid


def _stats(r, *args):
    res = r.relayctl("stats", *args, "--json")
    return json.loads(res.stdout.decode())


def _bucket_sums(doc):
    keys = ("accepted", "rejected", "sent", "deferred", "bounced", "dsn",
            "rejected_protocol")
    return {k: sum(b[k] for b in doc["buckets"]) for k in keys}


def _rows(entries, *keys):
    return {e["name"]: tuple(e[k] for k in keys) for e in entries}


def test_history_by_hour_day_credential_domain(upstream_factory, relay_to,
                                               tmp_path):
    up = upstream_factory(tls="starttls", behaviour={
        "rcpt": {"bad@b.test": BAD, "slow@b.test": [LATER]}})
    r = relay_to(up, start=False,
                 credentials_file=str(tmp_path / "credentials"),
                 trusted_networks="127.0.0.1/32",
                 auth_plaintext_networks="127.0.0.0/8")
    add_user(r, "alice", "pw alice")
    add_user(r, "bob", "pw bob")
    r.start()

    # Nothing yet: no buckets, and empty windows in status.
    assert _stats(r, "--by", "hour") == {"by": "hour", "buckets": []}

    q = [_send(r, "alice", "pw alice", ["a1@a.test"], bad_command=True),
         _send(r, "alice", "pw alice", ["a1@a.test", "bad@b.test"]),
         _send(r, "ALICE", "pw alice", ["a1@a.test"]),
         _send(r, "bob", "pw bob", ["b1@b.test", "slow@b.test"]),
         _send(r, "bob", "pw bob", ["b1@b.test"])]
    for qid in q[:3]:
        wait_status(r, qid, "a1@a.test", "sent", fail_on=("bounced",))
    wait_status(r, q[1], "bad@b.test", "bounced")
    wait_status(r, q[3], "slow@b.test", "deferred")
    wait_status(r, q[3], "slow@b.test", "sent", fail_on=("bounced",))
    for qid in q[3:]:
        wait_status(r, qid, "b1@b.test", "sent", fail_on=("bounced",))
    dsn = notification_id(r, q[1])
    assert dsn, r.log_text()[-3000:]
    wait_status(r, dsn, SENDER, "sent", fail_on=("bounced",))
    for qid in q + [dsn]:
        wait_gone(r, qid)
    r.stop()

    # Stopped: the index alone. 7 recipients sent (3 a.test, 3 b.test,
    # the DSN to client.test), 1 deferral, 1 bounce, 1 DSN, 5 accepted,
    # 1 refusal (the unknown command, a protocol refusal).
    want = {"accepted": 5, "rejected": 1, "sent": 7, "deferred": 1,
            "bounced": 1, "dsn": 1, "rejected_protocol": 1}
    by_hour = _stats(r, "--by", "hour")
    assert by_hour["by"] == "hour" and by_hour["buckets"], by_hour
    starts = [b["start"] for b in by_hour["buckets"]]
    assert starts == sorted(starts) and all(s % 3600 == 0 for s in starts)
    assert _bucket_sums(by_hour) == want, by_hour
    by_day = _stats(r, "--by", "day")
    assert all(b["start"] % 86400 == 0 for b in by_day["buckets"])
    assert _bucket_sums(by_day) == want, by_day

    creds = _stats(r, "--by", "credential")
    assert creds["by"] == "credential"
    assert _rows(creds["credentials"], "accepted", "rejected") == {
        "alice": (3, 1), "bob": (2, 0)}, creds
    doms = _stats(r, "--by", "domain")
    assert _rows(doms["domains"], "sent", "deferred", "bounced") == {
        "a.test": (3, 0, 0), "b.test": (3, 1, 1),
        "client.test": (1, 0, 0)}, doms

    # Hour and domain together: each bucket with its domains.
    both = _stats(r, "--by", "hour", "--by", "domain")
    total = {}
    for b in both["buckets"]:
        for name, row in _rows(b["domains"], "sent", "bounced").items():
            old = total.get(name, (0, 0))
            total[name] = (old[0] + row[0], old[1] + row[1])
    assert total == {"a.test": (3, 0), "b.test": (3, 1),
                     "client.test": (1, 0)}, both

    # The text tables: the same numbers, one line per name.
    text = r.relayctl("stats", "--by", "domain").stdout.decode()
    line = [x for x in text.splitlines() if x.startswith("b.test ")]
    assert len(line) == 1 and line[0].split()[1:] == ["3", "1", "1"], text
    text = r.relayctl("stats", "--by", "credential").stdout.decode()
    line = [x for x in text.splitlines() if x.startswith("alice ")]
    assert len(line) == 1 and line[0].split()[1:] == ["3", "1"], text

    st = json.loads(r.relayctl("status", "--json").stdout.decode())
    assert st["running"] is False
    for k in ("last_hour", "last_24h"):
        assert (st[k]["sent"], st[k]["deferred"], st[k]["bounced"],
                st[k]["rejected"], st[k]["accepted"]) == (7, 1, 1, 1, 5), st
    text = r.relayctl("status").stdout.decode()
    assert "last hour:    7 sent, 1 deferred, 1 bounced, 1 rejected" in text, \
        text

    # Bad arguments: usage errors, exit status 2.
    for args in (["--by", "week"], ["--by", "hour", "--by", "day"],
                 ["--by", "domain", "--by", "credential"]):
        res = r.relayctl("stats", *args, check=False)
        assert res.returncode == 2, (args, res.stderr)

    # Again: one more message by bob. While relayd runs, status adds what
    # it has counted and not flushed yet to the buckets.
    r.start()
    qid = _send(r, "bob", "pw bob", ["b1@b.test"])
    wait_status(r, qid, "b1@b.test", "sent", fail_on=("bounced",))
    wait_gone(r, qid)
    st = json.loads(r.relayctl("status", "--json").stdout.decode())
    assert st["running"] is True
    assert (st["last_hour"]["sent"], st["last_hour"]["accepted"]) == (8, 6), st
    r.stop()
    assert _bucket_sums(_stats(r, "--by", "day")) == dict(
        want, accepted=6, sent=8)
    creds = _stats(r, "--by", "credential")
    assert _rows(creds["credentials"], "accepted", "rejected") == {
        "alice": (3, 1), "bob": (3, 0)}, creds
    doms = _stats(r, "--by", "domain")
    assert _rows(doms["domains"], "sent")["b.test"] == (4,), doms
