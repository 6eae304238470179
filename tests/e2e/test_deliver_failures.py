"""tests/e2e/test_deliver_failures.py - Failures of the connection to the
smarthost are temporary, for every recipient: the connection dropped in
the middle of DATA, a server that never answers (delivery_timeout), a
certificate for the wrong name or from an unknown CA, STARTTLS required
but not offered, a wrong password (535: the route pauses, an error-level
log line, delivery once the password is fixed by SIGHUP or restart),
nobody listening. Nothing is bounced, and when TLS is required nothing of
the mail or the credentials is ever sent in clear."""
import os
import signal

import pytest

from conftest_upstream import (SENDER, assert_same_bytes, delivery_lines, dsns,
                               make_message,
                               message_id, queue_entry, rcpt_entry, removed,
                               stats, statuses, submit, wait_gone, wait_log,
                               wait_rcpt_state, wait_status,
                               write_password_file)
from conftest import wait_until

RCPT = "rcpt@dest.test"
USER = "relay-user"


def deferred_not_bounced(r, qid, rcpt=RCPT, attempts=1):
    """Waits for `attempts` deferred log lines; the message is still
    queued with the recipient deferred, and nothing says bounced."""
    wait_status(r, qid, rcpt, "deferred", count=attempts,
                fail_on=("bounced", "sent", "expired"))
    e = queue_entry(r, qid)
    assert e is not None, "%s left the queue" % qid
    x = rcpt_entry(e, rcpt)
    assert x["state"] in ("deferred", "pending"), x
    return e


def no_mail_sent(up):
    """No transaction and no credentials at all, in clear or not."""
    cmds = [(c["seq"], x["verb"]) for c in up.connections()
            for x in c["commands"]]
    bad = [x for x in cmds if x[1] in ("MAIL", "RCPT", "DATA", "BDAT", "AUTH",
                                       "<auth-response>")]
    assert bad == [], "mail or credentials sent without TLS: %r" % bad
    assert up.messages(all=True) == []


def test_connection_dropped_in_data(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={"drop_in_data": 4096})
    r = relay_to(up)
    content, mid = make_message("dropped",
                                body=(b"0123456789abcdef" * 4 + b"\r\n") * 1000)
    qid = submit(r, SENDER, [RCPT], content)
    stored = r.relayctl("cat", qid).stdout
    deferred_not_bounced(r, qid)
    assert any(c.get("dropped_in_data") for c in up.connections())
    assert up.messages(all=True) == []
    up.set_behaviour({})
    (rec,) = up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)
    assert_same_bytes(rec["data"], stored)
    wait_gone(r, qid)
    assert statuses(r, qid, RCPT)[-1] == "sent"
    assert dsns(up) == []


def test_server_never_answers(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", behaviour={"greeting": "none"})
    r = relay_to(up, delivery_timeout="2s")
    content, mid = make_message("silence")
    qid = submit(r, SENDER, [RCPT], content)
    e = deferred_not_bounced(r, qid)
    assert rcpt_entry(e, RCPT)["attempts"] >= 1
    assert up.connections()[0]["greeting"] == "none"
    up.set_behaviour({})
    up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)
    wait_gone(r, qid)
    assert dsns(up) == []


@pytest.mark.parametrize("tls,cert", [("starttls", "wrong"),
                                      ("implicit", "wrong"),
                                      ("starttls", "untrusted")])
def test_bad_certificate_is_temporary_and_nothing_in_clear(
        upstream_factory, relay_to, tls, cert):
    up = upstream_factory(tls=tls, cert=cert, users={USER: "tls-first"})
    r = relay_to(up)
    content, _ = make_message("bad certificate")
    qid = submit(r, SENDER, [RCPT], content)
    # Twice: retried, not bounced, and no plaintext fallback in between.
    deferred_not_bounced(r, qid, attempts=2)
    assert len(up.connections()) >= 1
    no_mail_sent(up)
    assert up.mail_in_clear() == []
    if cert == "wrong":
        # The reason names the name the certificate had to carry.
        (_, line), *_ = delivery_lines(r, qid, RCPT)
        assert "hostname mismatch (expected smarthost.test; see " \
            "smarthost_tls_name)" in line, line


@pytest.mark.parametrize("tls,behaviour", [("none", {}),
                                           ("starttls",
                                            {"ehlo_remove": ["STARTTLS"]})],
                         ids=["plain-server", "starttls-not-offered"])
def test_starttls_required_but_not_offered(upstream_factory, relay_to, tls,
                                           behaviour):
    up = upstream_factory(tls=tls, users={USER: "never-in-clear"},
                          behaviour=behaviour)
    r = relay_to(up, smarthost_tls="starttls")
    content, _ = make_message("no starttls")
    qid = submit(r, SENDER, [RCPT], content)
    deferred_not_bounced(r, qid, attempts=2)
    assert len(up.connections()) >= 1
    no_mail_sent(up)
    assert "never-in-clear" not in r.log_text()


@pytest.mark.parametrize("fix", ["sighup", "restart"])
def test_wrong_password_pauses_route_until_fixed(upstream_factory, relay_to,
                                                 fix):
    good, bad = "the-right-password", "a-wrong-password"
    up = upstream_factory(tls="starttls", users={USER: good})
    r = relay_to(up, password=bad)
    content, mid = make_message("wrong password")
    qid = submit(r, SENDER, [RCPT], content)
    deferred_not_bounced(r, qid)
    auths = [a for c in up.connections() for a in c["auth"]]
    assert auths and not any(a["ok"] for a in auths)

    route = {}

    def paused():
        route.update(stats(r)["route"])
        return route.get("state") == "paused"
    wait_until(paused, timeout=30, what="route.state paused in relayctl stats")
    assert isinstance(route.get("reason"), str) and route["reason"], route
    assert isinstance(route.get("until"), (int, float)), route
    wait_log(r, r"relayd\[\d+\]: error: .*(535|[Aa][Uu][Tt][Hh])")
    assert rcpt_entry(queue_entry(r, qid), RCPT)["state"] != "bounced"
    assert up.messages(all=True) == []

    write_password_file(r.conf["smarthost_password_file"], good)
    if fix == "sighup":
        before = r.log_text().count("configuration reloaded")
        os.kill(r.pid, signal.SIGHUP)
        wait_until(lambda: r.log_text().count("configuration reloaded") > before,
                   timeout=10, what="relayd to reload")
    else:
        r.stop()
        r.start()
    (rec,) = up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)
    assert rec["auth_user"] == USER
    wait_gone(r, qid)
    assert removed(r, qid)
    wait_until(lambda: stats(r)["route"]["state"] == "ok", timeout=30,
               what="route.state ok again")
    log = r.log_text()
    assert good not in log and bad not in log, "a password in the log"
    assert dsns(up) == []


def test_connection_refused(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", start=False)   # nobody listens yet
    r = relay_to(up)
    content, mid = make_message("refused")
    qid = submit(r, SENDER, [RCPT], content)
    deferred_not_bounced(r, qid)
    wait_rcpt_state(r, qid, RCPT, lambda x: x["attempts"] >= 1,
                    what="the attempt counted")
    up.start()
    up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)
    wait_gone(r, qid)
    assert statuses(r, qid, RCPT)[-1] == "sent"
