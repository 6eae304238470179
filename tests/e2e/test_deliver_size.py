"""tests/e2e/test_deliver_size.py - The smarthost's SIZE (RFC 1870) in
relayd's own EHLO (issue 8 §10). relayd learns it from each session's
EHLO and offers clients min(max_message_size, SIZE - 16 KiB) - the 16 KiB
leave room for the header fields relayd adds - refusing larger messages
at MAIL (SIZE=) and at the end of DATA with 552 5.3.4, nothing queued.
The value survives a restart (spool_dir/smarthost.size), follows the
smarthost when it changes, and is forgotten for another smarthost."""
import os
import smtplib

from conftest import smtp_connect, wait_until
from conftest_upstream import (SENDER, body_of, make_message, message_id,
                               queue_list, stats, submit, wait_gone, wait_log)

SIZE = 100000
HEADROOM = 16 * 1024
OFFERED = SIZE - HEADROOM
DEFAULT_MAX = 50 * 1024 * 1024


def ehlo_size(r):
    with smtplib.SMTP(r.addr, r.port, timeout=30) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        return int(s.esmtp_features["size"])


def message_of(n, subject):
    """A message of exactly n bytes (CRLF lines of at most 78)."""
    head, mid = make_message(subject, body=b"")
    need = n - len(head)
    assert need >= 2
    lines = []
    while need > 80:
        lines.append(b"y" * 76 + b"\r\n")
        need -= 78
    lines.append(b"z" * (need - 2) + b"\r\n")
    data = head + b"".join(lines)
    assert len(data) == n
    return data, mid


def sessions_closed(up):
    return all(c.get("closed") for c in up.connections())


def learn(r, up, subject):
    """Sends one message through a new session (the idle one closes
    first) so that relayd reads the smarthost's EHLO again."""
    wait_until(lambda: sessions_closed(up), timeout=30,
               what="relayd's session to the smarthost to end")
    content, mid = make_message(subject)
    qid = submit(r, SENDER, ["rcpt@dest.test"], content)
    up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)
    wait_gone(r, qid)


def test_smarthost_size_offered_and_enforced(upstream_factory, relay_to):
    up = upstream_factory(behaviour={"ehlo_remove": ["SIZE"],
                                     "ehlo_add": ["SIZE %d" % SIZE]})
    r = relay_to(up)
    # Nothing learnt yet: max_message_size.
    assert ehlo_size(r) == DEFAULT_MAX
    learn(r, up, "first")
    wait_log(r, r"smarthost [^:]+:\d+: SIZE %d; clients are offered SIZE %d"
             % (SIZE, OFFERED))
    assert ehlo_size(r) == OFFERED
    assert stats(r)["smarthost_size"] == SIZE

    # MAIL with SIZE= over the limit: 552 5.3.4 at once.
    with smtplib.SMTP(r.addr, r.port, timeout=30) as s:
        s.ehlo("client.test")
        code, msg = s.mail(SENDER, ["SIZE=%d" % (OFFERED + 1)])
        assert (code, msg[:5]) == (552, b"5.3.4"), (code, msg)
        s.rset()
        code, msg = s.mail(SENDER, ["SIZE=%d" % OFFERED])
        assert code == 250, (code, msg)

    # No SIZE= and too big: 552 5.3.4 at the end of DATA, nothing queued.
    big, _ = message_of(OFFERED + 1, "one byte too many")
    with smtplib.SMTP(r.addr, r.port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt("rcpt@dest.test")[0] == 250
        code, msg = s.data(big)   # the final reply is returned, not raised
        assert (code, msg[:5]) == (552, b"5.3.4"), (code, msg)
        # The session goes on.
        assert s.noop()[0] == 250
    # BDAT LAST (RFC 3030) likewise.
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<%s>" % SENDER).code == 250
        assert c.cmd("RCPT TO:<rcpt@dest.test>").code == 250
        c.send(b"BDAT %d LAST\r\n" % len(big) + big)
        rep = c.reply(timeout=30)
        assert rep.pair == (552, "5.3.4"), rep
    assert queue_list(r) == []

    # Exactly the limit: accepted, and it fits under the smarthost's SIZE
    # with what relayd added.
    fits, mid = message_of(OFFERED, "just fits")
    qid = submit(r, SENDER, ["rcpt@dest.test"], fits,
                 mail_options=["SIZE=%d" % OFFERED])
    rec = up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)[0]
    assert len(rec["data"]) <= SIZE, len(rec["data"])
    assert body_of(rec["data"]) == body_of(fits)
    sizes = [o for o in rec["mail_options"] if o.upper().startswith("SIZE=")]
    assert len(sizes) == 1 and int(sizes[0][5:]) <= SIZE, sizes
    wait_gone(r, qid)

    # A restart knows it before any session: the spool keeps it.
    nconn = len(up.connections())
    r.stop()
    assert os.path.exists(os.path.join(r.spool, "smarthost.size"))
    r.start()
    assert ehlo_size(r) == OFFERED
    assert len(up.connections()) == nconn
    wait_log(r, r"SIZE %d as last seen; clients are offered SIZE %d"
             % (SIZE, OFFERED))

    # The provider lifts its limit: back to max_message_size.
    up.set_behaviour({"ehlo_remove": ["SIZE"]})
    learn(r, up, "after the change")
    wait_log(r, r"no SIZE limit; clients are offered max_message_size")
    assert ehlo_size(r) == DEFAULT_MAX
    assert stats(r)["smarthost_size"] == 0


def test_size_below_max_message_size_only(upstream_factory, relay_to):
    """max_message_size smaller than the smarthost's SIZE wins; another
    smarthost (after a restart with a new address) starts from
    max_message_size again."""
    up = upstream_factory(behaviour={"ehlo_remove": ["SIZE"],
                                     "ehlo_add": ["SIZE %d" % SIZE]})
    r = relay_to(up, max_message_size="50000")
    learn(r, up, "first")
    assert stats(r)["smarthost_size"] == SIZE
    assert ehlo_size(r) == 50000

    up2 = upstream_factory()
    r.stop()
    r.conf["max_message_size"] = "200000"
    r.conf["smarthost"] = up2.smarthost
    r.write_conf()
    r.start()
    assert ehlo_size(r) == 200000   # up's SIZE is not up2's
    assert stats(r)["smarthost_size"] == 0
