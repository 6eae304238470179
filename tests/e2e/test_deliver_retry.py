"""tests/e2e/test_deliver_retry.py - Temporary failures are retried. 451
after DATA twice, then 250: delivered on the third attempt, the log shows
deferred, deferred, sent for the recipient, and `relayctl list --json`
shows the attempts and the reply while it waits. A 451 to one RCPT of two:
the other is delivered at once and only the deferred one is retried."""
from conftest import wait_until
from conftest_upstream import (SENDER, assert_same_bytes, make_message,
                               message_id, queue_entry, rcpt_entry, removed,
                               statuses, submit, wait_gone)

RCPT = "rcpt@dest.test"
TRY_LATER = "451 4.3.0 try later"


def test_451_twice_then_250(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"data": {SENDER: [TRY_LATER, TRY_LATER]}})
    r = relay_to(up)
    content, mid = make_message("retry me")
    qid = submit(r, SENDER, [RCPT], content)
    stored = r.relayctl("cat", qid).stdout

    # Watch the queue until the message is gone.
    seen = []

    def gone():
        e = queue_entry(r, qid)
        if e is None:
            return True
        x = rcpt_entry(e, RCPT)
        seen.append((x["state"], x["attempts"], x["next_attempt"],
                     x["last_reply"]))
        return False
    wait_until(gone, timeout=30, step=0.05, what="%s to be delivered" % qid)

    deferred = [s for s in seen if s[0] == "deferred"]
    print("observed while queued (state, attempts):",
          sorted(set((s[0], s[1]) for s in seen)))
    assert deferred, "never saw the recipient deferred: %r" % seen[-5:]
    for state, attempts, next_attempt, last_reply in deferred:
        assert attempts in (1, 2), deferred
        assert next_attempt is not None, deferred
        assert "451" in (last_reply or "") and "try later" in last_reply, deferred
    attempts = [s[1] for s in seen]
    assert attempts == sorted(attempts), "attempts went down: %r" % attempts

    tries = [m for m in up.messages(all=True) if message_id(m["data"]) == mid]
    assert [m["reply"][:3] for m in tries] == ["451", "451", "250"]
    for m in tries:
        assert_same_bytes(m["data"], stored)
        assert m["rcpt_tos"] == [RCPT]
    assert statuses(r, qid, RCPT) == ["deferred", "deferred", "sent"]
    lines = [x for x in r.log_text().splitlines() if "%s: to=<%s>" % (qid, RCPT) in x]
    assert "dsn=4.3.0" in lines[0] and "try later" in lines[0], lines[0]
    assert removed(r, qid)


def test_rcpt_451_retries_only_that_recipient(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={
        "rcpt": {"later@dest.test": ["451 4.2.0 greylisted, come back"]}})
    r = relay_to(up)
    content, mid = make_message("one now, one later")
    qid = submit(r, SENDER, ["now@dest.test", "later@dest.test"], content)
    got = up.wait_messages(2, match=lambda m: message_id(m["data"]) == mid)
    wait_gone(r, qid)
    assert [m["rcpt_tos"] for m in got] == [["now@dest.test"],
                                            ["later@dest.test"]]
    assert got[0]["data"] == got[1]["data"]
    assert statuses(r, qid, "now@dest.test") == ["sent"]
    assert statuses(r, qid, "later@dest.test") == ["deferred", "sent"]
    assert removed(r, qid)
