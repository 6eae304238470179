"""tests/e2e/test_deliver_utf8_dsn.py - Bounces of internationalized mail
at a smarthost that does not offer SMTPUTF8 (issue 8 §10). The message
itself cannot go (553 5.6.7, RFC 6531 §3.4); its bounce must: a DSN is
marked SMTPUTF8 only when its own envelope needs it (a non-ASCII
recipient), and carries the UTF-8 recipient and header section in RFC
6533's message/global-delivery-status and message/global-headers body
parts. The postmaster's copy of a null-sender bounce likewise; a bounce
nobody can be told of is logged at error level and counted in stats."""
import re

from conftest_upstream import (SENDER, dsns, make_message, notification_id,
                               stats, submit, wait_dsn, wait_gone, wait_log,
                               wait_status)
from dsn import parse_dsn, typed

NO_UTF8 = {"ehlo_remove": ["SMTPUTF8"]}
UTF8_RCPT = "j\u00f6rg+tag@d\u00e9st.test"
POSTMASTER = "postmaster@relay.test"


def utf8_message(subject):
    return make_message(subject, body="Gr\u00fc\u00dfe\r\n".encode(),
                        to=UTF8_RCPT,
                        headers=("X-Note: \u00fcml\u00e4ut header",))


def test_bounce_of_smtputf8_message_goes_without_smtputf8(upstream_factory,
                                                          relay_to):
    up = upstream_factory(behaviour=NO_UTF8)
    r = relay_to(up)
    content, mid = utf8_message("caf\u00e9 \u2615")
    qid = submit(r, SENDER, [UTF8_RCPT], content, mail_options=["SMTPUTF8"])

    rec, d = wait_dsn(up, qid)
    # The report's envelope is ASCII: no SMTPUTF8 (the smarthost would
    # refuse it); its content is 8-bit, so BODY=8BITMIME (offered).
    assert rec["mail_from"] == "" and rec["rcpt_tos"] == [SENDER]
    opts = [o.upper() for o in rec["mail_options"]]
    assert "SMTPUTF8" not in opts, opts
    assert "BODY=8BITMIME" in opts, opts
    # RFC 6533: the global types, the UTF-8 address as utf-8-addr-unitext
    # ('+' escaped as \x{2B}).
    assert d.is_global and d.status_type == "message/global-delivery-status"
    b = d.recipients[0]
    assert len(d.recipients) == 1
    assert typed(b["final-recipient"]) == (
        "utf-8", "j\u00f6rg\\x{2B}tag@d\u00e9st.test"), b
    assert b["action"] == "failed" and b["status"] == "5.6.7", b
    assert d.fields.get("x-relayd-queue-id") == qid
    assert d.returned_type == "message/global-headers"
    assert d.returned["Subject"] == "caf\u00e9 \u2615"
    assert d.returned["X-Note"] == "\u00fcml\u00e4ut header"
    assert d.returned["Message-ID"] == mid
    # The top-level header section stays ASCII.
    head = d.raw[:d.raw.index(b"\r\n\r\n")]
    assert max(head) < 0x80, head
    # The original never reached the smarthost.
    assert [m for m in up.messages(all=True) if m["mail_from"] == SENDER] == []
    wait_gone(r, qid)
    new = notification_id(r, qid)
    wait_status(r, new, SENDER, "sent", fail_on=("bounced",))
    wait_gone(r, new)
    assert stats(r)["notifications_dropped"] == 0


def test_postmaster_copy_of_a_utf8_bounce(upstream_factory, relay_to):
    """A null-sender SMTPUTF8 message that fails goes to the postmaster,
    without SMTPUTF8. And a sender that is not ASCII: its bounce needs
    SMTPUTF8 itself, fails at this smarthost, and that failure reaches
    the postmaster (ASCII) instead of vanishing."""
    up = upstream_factory(behaviour=NO_UTF8)
    r = relay_to(up, postmaster=POSTMASTER)

    content, mid = utf8_message("null sender, utf-8")
    qid = submit(r, "", [UTF8_RCPT], content, mail_options=["SMTPUTF8"])
    rec, d = wait_dsn(up, qid)
    assert rec["rcpt_tos"] == [POSTMASTER]
    assert "SMTPUTF8" not in [o.upper() for o in rec["mail_options"]]
    assert d.recipients[0]["status"] == "5.6.7"
    assert d.returned["Message-ID"] == mid

    sender8 = "s\u00e9nder@client.test"
    content, mid = utf8_message("utf-8 sender")
    qid2 = submit(r, sender8, [UTF8_RCPT], content, mail_options=["SMTPUTF8"])
    # The bounce to s\u00e9nder@ needs SMTPUTF8: refused locally too...
    wait_log(r, r"\b%s: sender non-delivery notification: [0-9A-Z]{16}"
             % qid2)
    dsn1 = notification_id(r, qid2)
    wait_status(r, dsn1, sender8, "bounced")
    line = [x for x in r.log_text().splitlines()
            if "%s: to=<" % dsn1 in x and "status=bounced" in x][0]
    assert "dsn=5.6.7" in line, line
    # ...so the postmaster hears of that bounce's failure.
    rec2, d2 = wait_dsn(up, dsn1)
    assert rec2["rcpt_tos"] == [POSTMASTER]
    assert "SMTPUTF8" not in [o.upper() for o in rec2["mail_options"]]
    blk = d2.recipients[0]
    assert typed(blk["final-recipient"]) == ("utf-8", sender8), blk
    assert blk["status"] == "5.6.7"
    wait_gone(r, qid2)
    wait_gone(r, dsn1)
    assert stats(r)["notifications_dropped"] == 0
    # No report went to an address the smarthost cannot take.
    assert all(m["rcpt_tos"] == [POSTMASTER] for m, _ in dsns(up))


def test_dropped_bounce_is_an_error_and_counted(upstream_factory, relay_to):
    up = upstream_factory(behaviour=NO_UTF8)
    r = relay_to(up)   # no postmaster
    content, _ = utf8_message("nobody to tell")
    qid = submit(r, "", [UTF8_RCPT], content, mail_options=["SMTPUTF8"])
    lines = wait_log(r, r"\berror: %s: non-delivery notification dropped: "
                     r"the sender is <> and no postmaster is configured" % qid)
    assert len(lines) == 1
    wait_gone(r, qid)
    st = stats(r)
    assert st["notifications_dropped"] == 1, st
    assert st["notifications"] == 0, st
    assert notification_id(r, qid) is None
    assert not re.search(r"\binfo: %s: no non-delivery notification" % qid,
                         r.log_text())
    assert dsns(up) == []
