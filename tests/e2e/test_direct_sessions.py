"""tests/e2e/test_direct_sessions.py - "at most 5 addresses and 2
sessions per attempt" (issue 9 §3; Postfix's smtp_mx_address_limit and
smtp_mx_session_limit): a session is a connection the server answered;
connection failures do not count. With the world of test_direct.py
(dnsmasq, aiosmtpd MX servers on 127.0.N.x sharing one port).

- three MX hosts that all greet with 421: each attempt talks to the first
  two only, then the destination pauses; the third is never reached,
  attempt after attempt;
- the best MX refusing connections (no session) and the second greeting
  421 (one session): the third still gets the mail in the same attempt.
Asserted on events (log lines, each server's connection records), never
on timing; every wait bounded, every server stopped by PID.
"""
from conftest_upstream import make_message, statuses, submit, wait_log
from test_direct import SENDER, sent_line, world  # noqa: F401 (fixture)

BUSY = {"greeting": "421 4.3.2 busy, try later"}


def three_mx(w, domain):
    names = ["mx%d.%s" % (i + 1, domain) for i in range(3)]
    w.start_dns({"mx": [(domain, names[i], 10 * (i + 1)) for i in range(3)],
                 "hosts": [(names[i], w.host(i)) for i in range(3)]})
    return names


def test_two_sessions_per_attempt(world):
    w = world(3)
    mx = [w.start_mx(i, behaviour=BUSY) for i in range(3)]
    three_mx(w, "two.test")
    r = w.relayd()
    qid = submit(r, SENDER, ["a@two.test"],
                 make_message("two sessions", to="a@two.test")[0])
    # Two attempts, each ending at the session limit.
    wait_log(r, r"destination mx1\.two\.test,mx2\.two\.test,mx3\.two\.test/"
             r"may: 2 sessions failed in this attempt \(the limit\)",
             timeout=30, count=2)
    wait_log(r, r"destination mx1\.two\.test,mx2\.two\.test,mx3\.two\.test/"
             r"may: delivery paused", timeout=30, count=2)
    assert len(mx[0].connections()) >= 2
    assert len(mx[1].connections()) >= 2
    # The test of the test: the third MX listens and would answer.
    assert mx[2].connections() == []
    assert "trying mx3.two.test" not in r.log_text()
    assert statuses(r, qid, "a@two.test")[:2] == ["deferred", "deferred"]


def test_connection_failures_are_not_sessions(world):
    w = world(3)
    # Nothing listens on the best MX's address: refused, no session.
    busy = w.start_mx(1, behaviour=BUSY)
    third = w.start_mx(2)
    three_mx(w, "conn.test")
    r = w.relayd()
    qid = submit(r, SENDER, ["b@conn.test"],
                 make_message("not sessions", to="b@conn.test")[0])
    line = sent_line(r, qid, "b@conn.test")
    assert "relay=mx3.conn.test[%s]:%d" % (w.host(2), w.port) in line, line
    assert len(busy.connections()) == 1
    assert busy.messages(all=True) == []
    assert [m["rcpt_tos"] for m in third.messages()] == [["b@conn.test"]]
    # All in the first attempt: nothing deferred, no pause.
    assert statuses(r, qid, "b@conn.test") == ["sent"]
    assert "delivery paused" not in r.log_text()
