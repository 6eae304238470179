"""tests/e2e/test_deliver_limits.py - How relayd treats the provider:
smarthost_concurrency and max_messages_per_connection bound the sessions
(seen from the upstream's connection records); smarthost_rate caps
submissions per minute; a throttling 4xx ("451 4.7.1 rate limit")
throttles the route (the reply table of deliver_policy.c: one session, one
transaction at a time, spaced) instead of failing messages one by one; a bounce that fails goes
to the postmaster when one is configured, and nowhere (no loop) when the
postmaster's own copy fails."""
import json
import re
import time

from conftest import wait_until
from conftest_upstream import (SENDER, dsns, make_message, message_id,
                               queue_list, submit, wait_dsn, wait_gone)


def _ids(up):
    return [message_id(m["data"]) for m in up.messages()]


def test_concurrency_and_messages_per_connection(upstream_factory, relay_to):
    # Slow replies keep sessions busy, so that relayd opens as many as it
    # may; each session carries at most two messages.
    up = upstream_factory(tls="starttls",
                          behaviour={"delay_data_reply_ms": 300})
    r = relay_to(up, smarthost_concurrency=2, max_messages_per_connection=2)
    mids = []
    for i in range(8):
        content, mid = make_message("load %d" % i)
        submit(r, SENDER, ["rcpt@dest.test"], content)
        mids.append(mid)
    # relayd's own count of sessions, sampled until everything arrived.
    seen = []

    def arrived():
        seen.append(json.loads(r.relayctl("stats", "--json").stdout)["sessions"])
        return len(up.messages()) >= 8
    wait_until(arrived, timeout=60, step=0.05, what="8 messages upstream")
    assert sorted(_ids(up)) == sorted(mids)
    assert max(seen) <= 2, seen
    conns = up.connections()
    # The upstream may still count a connection relayd has already left
    # (after QUIT and 221, before the server sees the close): one extra at
    # most, never more.
    assert max(c["concurrent"] for c in conns) <= 3, conns
    assert max(c["messages"] for c in conns) <= 2, conns
    assert len([c for c in conns if c["messages"]]) >= 4, conns
    wait_until(lambda: queue_list(r) == [], timeout=30, what="an empty queue")


def test_rate_cap(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls")
    r = relay_to(up, smarthost_rate="3/minute")
    for i in range(5):
        content, _ = make_message("capped %d" % i)
        submit(r, SENDER, ["rcpt@dest.test"], content)
    up.wait_messages(3, timeout=30)
    # The cap holds the other two for the rest of the minute: give the
    # scheduler a few rounds (it rescans at least every second while mail
    # is due) and they are still queued, untried.
    time.sleep(3)
    assert len(up.messages(all=True)) == 3
    left = queue_list(r)
    assert len(left) == 2, left
    for m in left:
        assert all(x["attempts"] == 0 for x in m["recipients"]), m


def test_throttle_slows_route_not_messages(upstream_factory, relay_to):
    # After one message per connection the provider says "slow down".
    up = upstream_factory(tls="starttls", behaviour={
        "throttle": {"per_connection": 1,
                     "reply": "451 4.7.1 Rate limit exceeded, slow down"}})
    r = relay_to(up, smarthost_concurrency=1)
    qids, mids = [], []
    for i in range(3):
        content, mid = make_message("throttled %d" % i)
        qids.append(submit(r, SENDER, ["rcpt@dest.test"], content))
        mids.append(mid)
    up.wait_messages(3, timeout=60)
    assert sorted(_ids(up)) == sorted(mids)
    for q in qids:
        wait_gone(r, q)
    log = r.log_text()
    # The one reply table throttles the smarthost (one session, one
    # transaction at a time, spaced) instead of pausing it.
    assert re.search(r"warning: smarthost \S+: throttled \(throttle-words\) "
                     r"for \d+ s: one session, one transaction every \d+ s: "
                     r"451 4\.7\.1 Rate limit exceeded", log), log
    assert "status=bounced" not in log, log
    assert dsns(up) == []
    # One session at a time throughout.
    assert all(c["concurrent"] == 1 for c in up.connections())


def test_failed_bounce_goes_to_postmaster_once(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={
        "rcpt": {"gone@dest.test": "550 5.1.1 no such user",
                 "postmaster@relay.test": "550 5.1.1 no postmaster either"}})
    r = relay_to(up, postmaster="postmaster@relay.test")
    # A bounce (null sender) that fails: its report goes to the postmaster.
    content, _ = make_message("a bounce that bounces", frm="MAILER-DAEMON")
    qid = submit(r, "", ["gone@dest.test"], content)
    wait_gone(r, qid)
    # The postmaster's copy fails too: dropped, never reported again - an
    # error, counted (issue 8 §10).
    wait_until(lambda: re.search(
        r"\berror: [0-9A-Z]{16}: non-delivery notification dropped: the "
        r"sender is <> and it was for the postmaster already", r.log_text()),
        timeout=30, what="the double bounce dropped")
    # The upstream saw the postmaster's copy offered (and refused it).
    rcpts = [c["arg"] for conn in up.connections() for c in conn["commands"]
             if c["verb"] == "RCPT"]
    assert sum("postmaster@relay.test" in a for a in rcpts) == 1, rcpts
    stats = json.loads(r.relayctl("stats", "--json").stdout)
    assert stats["notifications"] == 1, stats
    assert stats["notifications_dropped"] == 1, stats
    wait_until(lambda: queue_list(r) == [], timeout=30, what="an empty queue")


def test_postmaster_receives_the_report(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={
        "rcpt": {"gone@dest.test": "550 5.1.1 no such user"}})
    r = relay_to(up, postmaster="postmaster@relay.test")
    content, _ = make_message("a bounce that bounces", frm="MAILER-DAEMON")
    qid = submit(r, "", ["gone@dest.test"], content)
    rec, d = wait_dsn(up, qid)
    assert rec["rcpt_tos"] == ["postmaster@relay.test"]
    assert rec["mail_from"] == ""
    assert [x["final-recipient"] for x in d.recipients] == \
        ["rfc822;gone@dest.test"]
