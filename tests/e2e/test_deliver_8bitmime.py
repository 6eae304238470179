"""tests/e2e/test_deliver_8bitmime.py - Messages declared BODY=8BITMIME at
a smarthost that does not offer 8BITMIME (issue 8 §10, RFC 6152 §3): one
whose content is in fact 7-bit goes without BODY=, byte for byte; a truly
8-bit one is not sent (nor converted, which would break DKIM) but bounced
with 5.6.3, and its bounce (the header section, 7-bit) reaches the
sender. When the smarthost offers 8BITMIME again, 8-bit mail goes with
BODY=8BITMIME."""
from conftest_upstream import (SENDER, body_of, make_message, message_id,
                               notification_id, statuses, submit, wait_dsn,
                               wait_gone, wait_status)
from conftest import wait_until
from dsn import typed

NO_8BIT = {"ehlo_remove": ["8BITMIME"]}


def test_7bit_declared_8bitmime_goes_without_body(upstream_factory, relay_to):
    up = upstream_factory(behaviour=NO_8BIT)
    r = relay_to(up)
    body = b"plain ASCII only\r\n.leading dot\r\n"
    content, mid = make_message("seven bit", body=body)
    qid = submit(r, SENDER, ["rcpt@dest.test"], content,
                 mail_options=["BODY=8BITMIME"])
    rec = up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)[0]
    opts = [o.upper() for o in rec["mail_options"]]
    assert not any(o.startswith("BODY=") for o in opts), opts
    assert body_of(rec["data"]) == body
    wait_gone(r, qid)
    assert statuses(r, qid, "rcpt@dest.test") == ["sent"]


def test_8bit_without_8bitmime_bounces_563(upstream_factory, relay_to):
    up = upstream_factory(behaviour=NO_8BIT)
    r = relay_to(up)
    body = "Gr\u00fc\u00dfe aus K\u00f6ln\r\nbody-marker-8b1\r\n".encode()
    content, mid = make_message("eight bit", body=body)
    qid = submit(r, SENDER, ["a@dest.test", "b@dest.test"], content,
                 mail_options=["BODY=8BITMIME"])
    rec, d = wait_dsn(up, qid)
    assert rec["rcpt_tos"] == [SENDER]
    assert sorted(d.final_recipients()) == ["a@dest.test", "b@dest.test"]
    for a in ("a@dest.test", "b@dest.test"):
        blk = d.recipient(a)
        assert blk["action"] == "failed" and blk["status"] == "5.6.3", blk
    assert "8BITMIME" in d.text, d.text
    # Headers only, even without RET=HDRS: the whole original would be
    # 8-bit and fail at this smarthost the same way.
    assert d.returned_type == "text/rfc822-headers"
    assert d.returned["Message-ID"] == mid
    assert b"body-marker-8b1" not in d.raw
    # The report is 7-bit: it went without BODY=8BITMIME.
    assert max(rec["data"]) < 0x80
    assert not any(o.upper().startswith("BODY=") for o in rec["mail_options"])
    # The original was never sent, in any form.
    assert [m for m in up.messages(all=True) if m["mail_from"] == SENDER] == []
    wait_gone(r, qid)
    for a in ("a@dest.test", "b@dest.test"):
        assert statuses(r, qid, a) == ["bounced"]
        line = [x for x in r.log_text().splitlines()
                if "%s: to=<%s>" % (qid, a) in x][0]
        assert "dsn=5.6.3" in line, line
    new = notification_id(r, qid)
    wait_status(r, new, SENDER, "sent", fail_on=("bounced",))

    # The smarthost offers 8BITMIME again: 8-bit mail goes, declared
    # (from the next session's EHLO on: the idle one closes first).
    up.set_behaviour({})
    wait_until(lambda: all(c.get("closed") for c in up.connections()),
               timeout=30, what="relayd's session to the smarthost to end")
    content, mid2 = make_message("eight bit again", body=body)
    qid2 = submit(r, SENDER, ["c@dest.test"], content,
                  mail_options=["BODY=8BITMIME"])
    rec2 = up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid2)[0]
    assert "BODY=8BITMIME" in [o.upper() for o in rec2["mail_options"]]
    assert body_of(rec2["data"]) == body
    wait_gone(r, qid2)
    # And the refused one was not retried meanwhile.
    assert [m for m in up.messages(all=True)
            if message_id(m["data"]) == mid] == []
    assert typed(d.fields["reporting-mta"]) == ("dns", "relay.test")
