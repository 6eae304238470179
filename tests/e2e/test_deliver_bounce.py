"""tests/e2e/test_deliver_bounce.py - Permanent failures and the DSNs
(RFC 3464) relayd sends about them through the same smarthost, read with
the email package (dsn.py) field by field: 550 to one recipient of three;
552 after DATA for all recipients; nothing for a null-sender message;
queue lifetime expiry (4.4.7); one "delayed" warning, then delivery;
RET=FULL / RET=HDRS / default; NOTIFY=NEVER; ENVID."""
import email.utils
import re
import time

from conftest_upstream import (SENDER, body_of, dsns, make_message,
                               message_id, notification_id, removed,
                               settle, statuses, submit, wait_dsn, wait_gone,
                               wait_log, wait_status)
from dsn import typed
from upstream import TLS_NAME

NO_SUCH_USER = "550 5.1.1 <bad@dest.test>: Recipient address rejected: no such user"


def check_common(d, rec, qid):
    """What every DSN about qid carries, whatever happened."""
    assert rec["mail_from"] == "" and rec["rcpt_tos"] == [SENDER]
    assert d.msg["From"] is not None and d.msg["Date"] is not None
    assert d.text_part.get_content_type() == "text/plain"
    assert typed(d.fields.get("reporting-mta")) == ("dns", "relay.test")
    assert d.fields.get("x-relayd-queue-id") == qid
    arrival = email.utils.parsedate_to_datetime(d.fields["arrival-date"])
    assert abs(arrival.timestamp() - time.time()) < 600, d.fields["arrival-date"]


def check_remote_mta(block, up):
    kind, name = typed(block.get("remote-mta"))
    assert kind == "dns"
    # The smarthost's name: the configured host, or the name its
    # certificate was checked against.
    assert name in (up.addr, "[%s]" % up.addr, TLS_NAME), name


def test_550_for_one_of_three(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"bad@dest.test": NO_SUCH_USER}})
    r = relay_to(up)
    content, mid = make_message("three rcpts",
                                body=b"body-marker-3f9a must not come back\r\n")
    t0 = time.time()
    qid = submit(r, SENDER, ["good1@dest.test", "bad@dest.test",
                             "good2@dest.test"], content)
    rec, d = wait_dsn(up, qid)
    check_common(d, rec, qid)
    arrival = email.utils.parsedate_to_datetime(d.fields["arrival-date"])
    assert t0 - 60 <= arrival.timestamp() <= time.time() + 60

    assert len(d.recipients) == 1, d.recipients
    b = d.recipient("bad@dest.test")
    assert typed(b["final-recipient"]) == ("rfc822", "bad@dest.test")
    assert b["action"] == "failed"
    assert b["status"] == "5.1.1"
    check_remote_mta(b, up)
    kind, diag = typed(b.get("diagnostic-code"))
    assert kind == "smtp" and "550 5.1.1" in diag and "no such user" in diag, diag

    assert d.returned_type == "text/rfc822-headers"
    assert d.returned["Subject"] == "three rcpts"
    assert d.returned["Message-ID"] == mid
    assert b"body-marker-3f9a" not in d.returned_raw

    # The two others were delivered, in one transaction.
    (orig,) = [m for m in up.messages() if message_id(m["data"]) == mid]
    assert sorted(orig["rcpt_tos"]) == ["good1@dest.test", "good2@dest.test"]
    wait_gone(r, qid)
    assert statuses(r, qid, "bad@dest.test") == ["bounced"]
    assert statuses(r, qid, "good1@dest.test") == ["sent"]
    line = [x for x in r.log_text().splitlines()
            if "%s: to=<bad@dest.test>" % qid in x][0]
    assert "dsn=5.1.1" in line and "no such user" in line, line
    new = notification_id(r, qid)
    assert new and new != qid, "no '%s: sender non-delivery notification'" % qid
    wait_status(r, new, SENDER, "sent", fail_on=("bounced",))
    wait_gone(r, new)
    assert removed(r, qid) and removed(r, new)
    settle(r, up)
    assert len(dsns(up, qid)) == 1


def test_552_after_data_bounces_every_recipient(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={
        "data": {SENDER: "552 5.3.4 Message too big for this system"}})
    r = relay_to(up)
    content, mid = make_message("too big")
    rcpts = ["x@dest.test", "y@dest.test"]
    qid = submit(r, SENDER, rcpts, content)
    rec, d = wait_dsn(up, qid)
    check_common(d, rec, qid)
    assert d.final_recipients() == rcpts
    for a in rcpts:
        b = d.recipient(a)
        assert b["action"] == "failed" and b["status"] == "5.3.4", b
        check_remote_mta(b, up)
        kind, diag = typed(b["diagnostic-code"])
        assert kind == "smtp" and "552 5.3.4" in diag and "too big" in diag
    wait_gone(r, qid)
    for a in rcpts:
        assert statuses(r, qid, a) == ["bounced"]
    assert [m for m in up.messages() if message_id(m["data"]) == mid] == []
    settle(r, up)
    assert len(dsns(up, qid)) == 1, "one DSN per attempt, naming every recipient"


def test_no_dsn_for_null_sender(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"bad@dest.test": NO_SUCH_USER}})
    r = relay_to(up)
    content, _ = make_message("a bounce of a bounce", frm="MAILER-DAEMON@client.test")
    qid = submit(r, "", ["bad@dest.test"], content)
    wait_gone(r, qid)
    assert statuses(r, qid, "bad@dest.test") == ["bounced"]
    assert removed(r, qid)
    settle(r, up)
    assert dsns(up) == []
    assert notification_id(r, qid) is None
    log = r.log_text()
    assert re.search(r"\b%s: .*(no (non-delivery )?notification|no dsn|"
                     r"no bounce|null sender|dropped|discarded)" % qid,
                     log, re.I), \
        "no log line saying %s's bounce was dropped:\n%s" % (qid, log[-3000:])


def test_queue_lifetime_expiry(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={
        "rcpt": {"slow@dest.test": "451 4.3.0 try later"}})
    r = relay_to(up, max_queue_lifetime="3s")
    content, mid = make_message("never gets through")
    qid = submit(r, SENDER, ["slow@dest.test"], content)
    rec, d = wait_dsn(up, qid)
    check_common(d, rec, qid)
    b = d.recipient("slow@dest.test")
    assert b["action"] == "failed" and b["status"] == "4.4.7", b
    wait_gone(r, qid)
    assert removed(r, qid)
    assert notification_id(r, qid)
    assert "deferred" in statuses(r, qid, "slow@dest.test")
    assert [m for m in up.messages() if message_id(m["data"]) == mid] == []


def test_delay_warning_then_delivery(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={
        "rcpt": {"later@dest.test": "451 4.3.0 try later"}})
    r = relay_to(up, delay_warning_after="2s")
    content, mid = make_message("slow but sure")
    qid = submit(r, SENDER, ["later@dest.test"], content)
    rec, d = wait_dsn(up, qid)
    check_common(d, rec, qid)
    b = d.recipient("later@dest.test")
    assert b["action"] == "delayed", b
    assert b["status"].startswith("4."), b
    # At least one more retry after the warning, and no second warning.
    n = len(statuses(r, qid, "later@dest.test"))
    wait_status(r, qid, "later@dest.test", "deferred", count=n + 1,
                fail_on=("bounced", "sent"))
    up.set_behaviour({})
    up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)
    wait_gone(r, qid)
    assert statuses(r, qid, "later@dest.test")[-1] == "sent"
    settle(r, up)
    (only,) = dsns(up, qid)
    assert [x["action"] for x in only[1].recipients] == ["delayed"]


def test_ret_full_hdrs_and_default(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"bad@dest.test": NO_SUCH_USER}})
    r = relay_to(up)
    body = b"The original body.\r\n.a line with a dot\r\nbody-marker-77c1\r\n"
    qids = {}
    for ret in ("FULL", "HDRS", None):
        content, mid = make_message("ret %s" % ret, body=body)
        opts = ["RET=%s" % ret] if ret else []
        qids[ret] = (submit(r, SENDER, ["bad@dest.test"], content,
                            mail_options=opts), mid, content)
    for ret, (qid, mid, content) in qids.items():
        rec, d = wait_dsn(up, qid)
        check_common(d, rec, qid)
        assert d.recipient("bad@dest.test")["status"] == "5.1.1"
        assert d.returned["Message-ID"] == mid
        assert d.returned["Subject"] == "ret %s" % ret
        if ret == "FULL":
            assert d.returned_type == "message/rfc822"
            got = d.returned.get_payload()
            assert got.replace("\r\n", "\n") == \
                body_of(content).decode().replace("\r\n", "\n"), got
        else:
            assert d.returned_type == "text/rfc822-headers", (ret, d.returned_type)
            assert b"body-marker-77c1" not in d.returned_raw


def test_notify_never(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={"rcpt": {
        "bad@dest.test": NO_SUCH_USER,
        "never@dest.test": "550 5.1.1 <never@dest.test>: no such user"}})
    r = relay_to(up)
    never = {"never@dest.test": ["NOTIFY=NEVER"]}
    alone, _ = make_message("never alone")
    q_alone = submit(r, SENDER, ["never@dest.test"], alone, rcpt_options=never)
    mixed, _ = make_message("never and bad")
    q_mixed = submit(r, SENDER, ["never@dest.test", "bad@dest.test"], mixed,
                     rcpt_options=never)
    rec, d = wait_dsn(up, q_mixed)
    check_common(d, rec, q_mixed)
    assert d.final_recipients() == ["bad@dest.test"]
    wait_gone(r, q_alone)
    wait_gone(r, q_mixed)
    assert statuses(r, q_alone, "never@dest.test") == ["bounced"]
    settle(r, up)
    assert dsns(up, q_alone) == []
    assert notification_id(r, q_alone) is None
    assert len(dsns(up, q_mixed)) == 1


def test_envid_is_original_envelope_id(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"bad@dest.test": NO_SUCH_USER}})
    r = relay_to(up)
    content, _ = make_message("with envid")
    qid = submit(r, SENDER, ["bad@dest.test"], content,
                 mail_options=["ENVID=client-env-42"])
    rec, d = wait_dsn(up, qid)
    check_common(d, rec, qid)
    assert d.fields.get("original-envelope-id") == "client-env-42", d.fields
    wait_log(r, r"\b%s: removed\b" % qid)
