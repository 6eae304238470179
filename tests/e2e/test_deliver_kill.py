"""tests/e2e/test_deliver_kill.py - SIGKILL relayd while it delivers 200
messages to a slow upstream (each DATA reply waits), restart it on the
same spool: every message arrives at least once (matched by Message-ID),
the queue empties. Duplicates are allowed after a crash (at-least-once
delivery): they are counted and printed, not failed."""
import collections
import smtplib

from conftest import wait_until
from conftest_upstream import (SENDER, make_message, message_id,
                               wait_queue_empty)

N = 200
RCPT = "rcpt@dest.test"


def test_sigkill_while_delivering_loses_nothing(upstream_factory, relay_to):
    # The upstream records each message before its slow reply, as a real
    # server commits before its 250: a kill in between makes a duplicate.
    up = upstream_factory(tls="starttls",
                          behaviour={"delay_data_reply_ms": 100})
    r = relay_to(up, smarthost_concurrency=4)
    mids = []
    with smtplib.SMTP(r.addr, r.port, timeout=30) as s:
        s.ehlo("client.test")
        for i in range(N):
            content, mid = make_message("kill test %03d" % i, to=RCPT,
                                        body=b"message %03d\r\n" % i)
            s.sendmail(SENDER, [RCPT], content)
            mids.append(mid)

    up.wait_messages(20)
    r.kill()
    at_kill = len(up.messages())
    assert at_kill < N, "all %d delivered before the kill: nothing tested" % N
    r.start()

    def all_arrived():
        return set(mids) <= {message_id(m["data"]) for m in up.messages()}
    try:
        wait_until(all_arrived, timeout=30, step=0.2,
                   what="every message at the upstream")
    except AssertionError:
        pass        # reported as losses below
    wait_queue_empty(r)

    recs = up.messages()
    counts = collections.Counter(message_id(m["data"]) for m in recs)
    lost = [m for m in mids if counts[m] == 0]
    dups = {m: n for m, n in counts.items() if n > 1}
    print("killed with %d of %d delivered; after restart %d records at the "
          "upstream, %d lost, %d duplicated (%d extra copies)%s"
          % (at_kill, N, len(recs), len(lost), len(dups),
             sum(n - 1 for n in dups.values()),
             "".join("\n  duplicate %s x%d" % kv for kv in sorted(dups.items()))))
    assert not lost, "%d messages never arrived, e.g. %s" % (len(lost), lost[:5])
    assert set(counts) == set(mids), "unexpected messages at the upstream"
    for m in recs:
        assert m["mail_from"] == SENDER and m["rcpt_tos"] == [RCPT], m
