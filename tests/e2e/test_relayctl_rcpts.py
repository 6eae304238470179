"""tests/e2e/test_relayctl_rcpts.py - per-recipient delivery state, and
`relayctl list`/`show` explaining every waiting recipient (issue 9 §3):
the destination and MX of each attempt, why a recipient waits (deferred
with its last reply and next attempt, or held back by its paused
destination, also when it was accepted during the pause and never tried),
`--state deferred` finding both, and a stopped relayd said to be stopped.
Per-recipient commits: one transaction answered 250/450/550 per recipient
ends with one sent, one deferred then sent once, one bounced with a DSN.
Against a real aiosmtpd smarthost (upstream.py)."""
import json
import re

from conftest import wait_until
from dsn import typed
from conftest_upstream import (SENDER, make_message, message_id, queue_entry,
                               rcpt_entry, submit, wait_dsn, wait_gone,
                               wait_rcpt_state, wait_status,
                               write_password_file)

USER = "relay-user"


def smarthost_key(up):
    host, port = up.smarthost.rsplit(":", 1)
    return "smarthost:%s:%s" % (host.strip("[]"), port)


def smarthost_host(up):
    return up.smarthost.rsplit(":", 1)[0].strip("[]")


def listing(r, *args):
    return json.loads(r.relayctl("list", "--json", *args).stdout.decode())


def ids(doc):
    return [m["id"] for m in doc["messages"]]


def recipient_line(text, addr):
    lines = [x for x in text.splitlines() if "<%s>" % addr in x and
             x.startswith("  ")]
    assert len(lines) == 1, (addr, text)
    return lines[0]


def test_accepted_while_paused_waits_with_the_reason(upstream_factory,
                                                     relay_to):
    good, bad = "the-right-password", "a-wrong-password"
    up = upstream_factory(tls="starttls", users={USER: good})
    # Long retry intervals: the pause outlasts the test's looks at it.
    r = relay_to(up, password=bad, retry_min="60s", retry_max="120s")
    key = smarthost_key(up)

    # The first message is tried, refused (AUTH), deferred; the smarthost
    # destination pauses.
    c1, mid1 = make_message("paused: first", to="one@dest.test")
    q1 = submit(r, SENDER, ["one@dest.test"], c1)
    wait_status(r, q1, "one@dest.test", "deferred", fail_on=("sent",
                                                             "bounced"))

    def paused():
        doc = listing(r)
        return doc["relayd"].get("route", {}).get("state") == "paused"
    wait_until(paused, timeout=30, what="the smarthost destination to pause")

    # Accepted during the pause: never loaded, never tried.
    c2, mid2 = make_message("paused: second", to="two@dest.test")
    q2 = submit(r, SENDER, ["two@dest.test"], c2)

    doc = listing(r)
    assert doc["relayd"]["running"] is True
    route = doc["relayd"]["route"]
    assert route["dest"] == key and route["state"] == "paused"
    assert "authentication failed" in route["reason"], route
    until = route["until"]
    assert until > 0
    by_id = {m["id"]: m for m in doc["messages"]}
    one = rcpt_entry(by_id[q1], "one@dest.test")
    two = rcpt_entry(by_id[q2], "two@dest.test")
    # The one deferred by the pause: its destination and when, and the
    # reason; no MX, since its session never got to send it (AUTH was
    # refused first).
    assert one["state"] == "deferred" and one["attempts"] == 1
    assert one["dest"] == key and one["mx"] is None
    assert one["last_try"] is not None and one["last_reply"]
    # Both wait for the pause, with its reason and end.
    for x in (one, two):
        w = x["waiting"]
        assert w["why"] == "paused", x
        assert w["dest"] == key and w["until"] == until
        assert "authentication failed" in w["reason"], w
    # The one never tried: pending, no attempt, nothing recorded of one.
    assert two["state"] == "pending" and two["attempts"] == 0
    assert two["dest"] is None and two["mx"] is None
    assert two["last_try"] is None

    # --state deferred finds both (in effect deferred); pending still
    # finds the one never tried.
    assert ids(listing(r, "--state", "deferred")) == [q1, q2]
    assert ids(listing(r, "--state", "pending")) == [q2]

    text = r.relayctl("list").stdout.decode()
    assert text.startswith("delivery paused until "), text
    line = recipient_line(text, "two@dest.test")
    assert re.match(r"^  pending +0 tries +paused( \d+[smhd])? +"
                    r"<two@dest.test> \(destination %s paused until "
                    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in \d+[smhd]\): "
                    r"authentication failed" % re.escape(key), line), line
    line = recipient_line(text, "one@dest.test")
    assert re.match(r"^  deferred +1 try +paused( \d+[smhd])? +"
                    r"<one@dest.test> dest=%s \(destination %s paused"
                    % (re.escape(key), re.escape(key)), line), line

    show = r.relayctl("show", q2).stdout.decode()
    assert re.search(r"^  destination:  %s$" % re.escape(key), show, re.M), show
    assert re.search(r"^  mx:           -$", show, re.M), show
    assert re.search(r"^  waiting:      destination %s paused until .*"
                     r"authentication failed" % re.escape(key), show,
                     re.M), show
    show = r.relayctl("show", q1).stdout.decode()
    assert re.search(r"^  destination:  %s$" % re.escape(key), show, re.M), show
    assert re.search(r"^  last try:     \d{4}-.*ago\)$", show, re.M), show
    sj = json.loads(r.relayctl("show", q2, "--json").stdout.decode())
    assert sj["relayd"]["route"]["state"] == "paused"
    assert rcpt_entry(sj, "two@dest.test")["waiting"]["why"] == "paused"
    assert isinstance(sj["arrival_ms"], int) and 0 <= sj["arrival_ms"] < 1000

    # Stopped: relayctl says so, and what the index has is all it shows.
    r.stop()
    text = r.relayctl("list").stdout.decode()
    assert text.startswith("relayd is not running: "), text
    assert re.match(r"^  pending +0 tries +next now +<two@dest.test>$",
                    recipient_line(text, "two@dest.test"))
    doc = listing(r)
    assert doc["relayd"] == {"running": False}
    assert rcpt_entry(queue_entry(r, q2), "two@dest.test")["waiting"][
        "why"] == "pending"
    assert "relayd:       not running" in r.relayctl("show", q2).stdout.decode()

    # Fixed and started again: both delivered, once each.
    write_password_file(r.conf["smarthost_password_file"], good)
    r.start()
    # The first one's next attempt is a retry interval away: now.
    assert r.relayctl("flush").returncode == 0
    for mid in (mid1, mid2):
        up.wait_messages(1, match=lambda m, mid=mid:
                         message_id(m["data"]) == mid)
    wait_gone(r, q1)
    wait_gone(r, q2)
    got = [message_id(m["data"]) for m in up.messages()]
    assert got.count(mid1) == 1 and got.count(mid2) == 1, got


def test_per_recipient_results(upstream_factory, relay_to):
    ok, tmp, bad = "ok@dest.test", "later@dest.test", "nobody@dest.test"
    up = upstream_factory(tls="starttls", users={USER: "pw-rcpts"}, behaviour={
        "rcpt": {tmp: ["450 4.2.1 mailbox busy, try later"],
                 bad: "550 5.1.1 no such user"}})
    # The retry comes at least 8 s after the first attempt: long enough
    # for the looks below at the deferred state, on a loaded machine too.
    r = relay_to(up, retry_min="8s", retry_max="16s")
    key = smarthost_key(up)
    content, mid = make_message("three recipients", to=ok)
    qid = submit(r, SENDER, [ok, tmp, bad], content)

    # After the first transaction: one sent, one deferred, one bounced;
    # each recorded with where it went.
    e = wait_rcpt_state(r, qid, tmp, lambda x: x["state"] == "deferred")
    entry = queue_entry(r, qid)
    assert rcpt_entry(entry, ok)["state"] == "sent"
    assert rcpt_entry(entry, bad)["state"] == "bounced"
    for a in (ok, tmp, bad):
        x = rcpt_entry(entry, a)
        assert x["attempts"] == 1 and x["dest"] == key, x
        assert x["mx"] == smarthost_host(up) and x["last_try"], x
    assert e["last_reply"].startswith("450 4.2.1"), e
    assert e["waiting"]["why"] == "deferred"
    assert e["waiting"]["until"] == e["next_attempt"]
    assert e["waiting"]["reason"] == e["last_reply"]
    assert rcpt_entry(entry, ok)["waiting"] is None
    assert rcpt_entry(entry, bad)["last_reply"].startswith("550 5.1.1")
    text = r.relayctl("list").stdout.decode()
    assert re.match(r"^  deferred +1 try +next (now|in \d+s) +<%s> dest=%s "
                    r"mx=%s \(450 4\.2\.1 mailbox busy" % (
                        re.escape(tmp), re.escape(key),
                        re.escape(smarthost_host(up))),
                    recipient_line(text, tmp))
    show = r.relayctl("show", qid).stdout.decode()
    assert re.search(r"^  waiting:      deferred, (due now|next attempt .*)$",
                     show, re.M), show
    assert ids(listing(r, "--state", "deferred")) == [qid]

    # The retry sends only the deferred one; the bounce's DSN goes to the
    # sender; then the message leaves the queue.
    wait_status(r, qid, tmp, "sent", fail_on=("bounced",))
    rec, dsn = wait_dsn(up, qid)
    assert rec["rcpt_tos"] == [SENDER]
    assert dsn.final_recipients() == [bad]
    assert dsn.recipient(bad)["action"] == "failed"
    assert dsn.recipient(bad)["status"] == "5.1.1"
    # Remote-MTA: the host the attempt talked to (its mx).
    assert typed(dsn.recipient(bad)["remote-mta"]) == ("dns",
                                                       smarthost_host(up))
    wait_gone(r, qid)

    # Exactly one copy per recipient that takes it: ok in the first
    # transaction, later in the retry; nobody never.
    copies = [m for m in up.messages() if message_id(m["data"]) == mid]
    assert [m["rcpt_tos"] for m in copies] == [[ok], [tmp]], copies
    assert [s for s in (up.messages(all=True)) if bad in s["rcpt_tos"]] == []
    res = r.relayctl("check", check=False)
    assert res.returncode == 0, (res.stdout, res.stderr)
    # And in the log: one status line per recipient and attempt, in order.
    lines = [ln for ln in r.log_text().splitlines()
             if re.search(r"\b%s: to=<" % qid, ln)]
    got = [(re.search(r"to=<([^>]*)>", ln).group(1),
            re.search(r"status=(\w+)", ln).group(1)) for ln in lines]
    assert sorted(got[:3]) == sorted([(ok, "sent"), (tmp, "deferred"),
                                      (bad, "bounced")]), got
    assert got[3:] == [(tmp, "sent")], got
    # delay= counts from the arrival: the retry's is the larger.
    delays = [float(re.search(r"delay=([0-9.]+)", ln).group(1))
              for ln in lines]
    assert all(d >= 0 for d in delays)
    assert delays[3] > max(delays[:3]), delays
