"""tests/e2e/test_deliver_regress.py - Regressions found in review of the
delivery code: a header section larger than the session's output buffer
with rewrite_from_header arrives whole; a rate cap that holds mail back
opens no sessions meanwhile (no reconnect storm at the provider); an
operator's delete acknowledged while the message is being sent survives a
shutdown in the middle of that attempt."""
import json
import time

from conftest_upstream import (SENDER, make_message, message_id, queue_list,
                               submit)


def test_big_header_section_with_from_rewrite(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls")
    r = relay_to(up, rewrite_sender="support@relay.test",
                 rewrite_from_header="yes")
    filler = ["X-Filler-%04d: %s" % (i, "f" * 900) for i in range(330)]
    content, mid = make_message("big header", body=b"THE BODY\r\n",
                                headers=filler)
    assert len(content) > 300000
    submit(r, SENDER, ["rcpt@dest.test"], content)
    rec = up.wait_messages(1, timeout=30)[0]
    data = rec["data"]
    assert message_id(data) == mid
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"THE BODY\r\n"
    lines = head.split(b"\r\n")
    assert sum(l.startswith(b"X-Filler-") for l in lines) == 330
    assert b"From: <support@relay.test>" in lines
    assert b"Reply-To: " + SENDER.encode() in lines
    assert rec["mail_from"] == "support@relay.test"


def test_rate_cap_opens_no_sessions(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls")
    r = relay_to(up, smarthost_rate="1/hour")
    for i in range(2):
        content, _ = make_message("capped %d" % i)
        submit(r, SENDER, ["rcpt@dest.test"], content)
    up.wait_messages(1, timeout=30)
    # The second message waits for the hour; meanwhile relayd rescans its
    # schedule every second or so. Without the fix each rescan opened a
    # session that connected, found nothing to send and left.
    time.sleep(5)
    assert len(up.connections()) == 1, up.connections()
    assert len(queue_list(r)) == 1


def test_delete_during_attempt_survives_shutdown(upstream_factory, relay_to):
    # The upstream holds its reply to the message for a while: the attempt
    # is under way when the operator deletes it and relayd stops.
    up = upstream_factory(tls="starttls",
                          behaviour={"delay_data_reply_ms": 4000})
    r = relay_to(up, retry_min="1h", retry_max="1h")
    content, _ = make_message("delete me")
    qid = submit(r, SENDER, ["rcpt@dest.test"], content)
    up.wait_messages(1, timeout=30)        # recorded before the delay
    res = r.relayctl("delete", qid)
    assert b"will be deleted when the attempt ends" in res.stdout, res.stdout
    r.stop()
    assert queue_list(r) == [], queue_list(r)
    r.start()
    assert queue_list(r) == []
    stats = json.loads(r.relayctl("stats", "--json").stdout)
    assert stats["queue"]["messages"] == 0, stats
