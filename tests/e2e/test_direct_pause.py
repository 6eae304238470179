"""tests/e2e/test_direct_pause.py - the operator steers destinations
(issue 9 §3): `relayctl pause DESTINATION [--for DURATION]` and `relayctl
resume DESTINATION`, in direct mode (dnsmasq and aiosmtpd MX servers, the
world of test_direct.py) and in smarthost mode; and `relayctl list`/`show`
saying why a recipient waits when its destination is paused, direct mode
included (the running relayd's `destinations` reply names the domains
routed to each destination).

Covered, asserted on events (log lines, what each server recorded, what
relayctl says), never on timing:
- a destination paused by recipient domain before any mail: a message
  for it is held (logged), nothing reaches the MX, list and show say
  "paused by operator", `destinations` says paused with no end; resume
  delivers it, after the resume;
- pause by the destination's key from `destinations` (after the idle
  destination was forgotten), with --for: a message for another domain is
  not held back by it;
- smarthost mode: `pause smarthost`, then resume delivers;
- errors: an unknown destination, a domain whose lookup fails, resume of
  a destination that is not paused, a bad --for;
- a smarthost that answers every MAIL with a rate limit is throttled
  (one session at a time), and list/show/destinations say "throttled
  until ..." with its reply.
Every wait is bounded; every server is stopped by PID.
"""
import json

from conftest import wait_until
from conftest_upstream import (make_message, statuses, submit, wait_log,
                               wait_gone, wait_status)
from test_direct import SENDER, sent_line, world  # noqa: F401 (fixture)


def destinations(r):
    res = r.relayctl("destinations", "--json")
    return json.loads(res.stdout.decode())["destinations"]


def dest(r, key):
    ds = [d for d in destinations(r) if d["name"] == key]
    return ds[0] if ds else None


def show_json(r, qid):
    return json.loads(r.relayctl("show", qid, "--json").stdout.decode())


def list_json(r, *args):
    res = r.relayctl("list", "--json", *args)
    return json.loads(res.stdout.decode())["messages"]


def one_mx_world(world, domain):
    w = world(1)
    up = w.start_mx(0)
    mx = "mx." + domain
    w.start_dns({"mx": [(domain, mx, 10)], "hosts": [(mx, w.host(0))]})
    return w, up, "mx:%s/may" % mx


def test_pause_by_domain_holds_mail_until_resumed(world):
    w, up, key = one_mx_world(world, "pz.test")
    r = w.relayd()
    out = r.relayctl("pause", "pz.test").stdout.decode()
    assert out.strip() == "ok %s: paused until resumed" % key \
        or out.strip() == "%s: paused until resumed" % key, out
    d = dest(r, key)
    assert d["state"] == "paused" and d["operator"] is True, d
    assert d["until"] == 0 and d["reason"] == "paused by operator", d
    assert d["domains"] == ["pz.test"], d
    table = r.relayctl("destinations").stdout.decode()
    assert "  paused until resumed: paused by operator" in table, table

    content, mid = make_message("paused", to="a@pz.test")
    qid = submit(r, SENDER, ["a@pz.test"], content)
    # The scheduler looked at it and left it waiting.
    wait_log(r, r"%s: 1 recipient waiting: destination %s paused "
             r"\(paused by operator\)" % (qid, key))
    assert up.messages() == []
    assert statuses(r, qid, "a@pz.test") == []

    # list and show say why it waits (direct mode: the domain is routed
    # to the paused destination although the recipient was never tried).
    (rc,) = show_json(r, qid)["recipients"]
    assert rc["state"] == "pending" and rc["attempts"] == 0, rc
    assert rc["waiting"]["why"] == "paused", rc
    assert rc["waiting"]["dest"] == key, rc
    assert rc["waiting"]["reason"] == "paused by operator", rc
    text = r.relayctl("show", qid).stdout.decode()
    assert "destination %s paused until resumed: paused by operator" % key \
        in text, text
    listing = r.relayctl("list").stdout.decode()
    assert "(destination %s paused until resumed: paused by operator)" % key \
        in listing, listing
    # A recipient held by a pause is in effect deferred.
    assert [m["id"] for m in list_json(r, "--state", "deferred")] == [qid]

    out = r.relayctl("resume", key).stdout.decode()
    assert "%s: resumed" % key in out, out
    sent_line(r, qid, "a@pz.test")
    log = r.log_text()
    i_held = log.find("%s: 1 recipient waiting" % qid)
    i_resumed = log.find("destination mx.pz.test/may: resumed by the operator")
    i_sent = log.find("%s: to=<a@pz.test>, relay=mx.pz.test" % qid)
    assert 0 <= i_held < i_resumed < i_sent, log[-3000:]
    assert statuses(r, qid, "a@pz.test") == ["sent"]
    assert [m["rcpt_tos"] for m in up.messages()] == [["a@pz.test"]]
    wait_gone(r, qid)
    assert dest(r, key) is None or dest(r, key)["state"] == "active"


def test_pause_by_key_for_a_while_holds_only_that_destination(world):
    w = world(2)
    held = w.start_mx(0)
    free = w.start_mx(1)
    w.start_dns({"mx": [("held.test", "mx.held.test", 10),
                        ("free.test", "mx.free.test", 10)],
                 "hosts": [("mx.held.test", w.host(0)),
                           ("mx.free.test", w.host(1))]})
    r = w.relayd()
    # Make the destination exist, then pause it by its key.
    q0 = submit(r, SENDER, ["a@held.test"],
                make_message("first", to="a@held.test")[0])
    sent_line(r, q0, "a@held.test")
    key = "mx:mx.held.test/may"
    # Idle, it is forgotten; its key (as destinations printed it) still
    # names it while its domain's routing is known.
    wait_until(lambda: dest(r, key) is None, timeout=30,
               what="the idle destination to be forgotten")
    out = r.relayctl("pause", key, "--for", "1h").stdout.decode()
    assert "%s: paused for 3600 s" % key in out, out
    d = dest(r, key)
    assert d["state"] == "paused" and d["until"] > 0, d
    assert "held.test" in d["domains"], d

    qid = submit(r, SENDER, ["b@held.test", "c@free.test"],
                 make_message("two domains", to="b@held.test")[0])
    # The other destination delivers; this one holds its recipient.
    sent_line(r, qid, "c@free.test")
    wait_log(r, r"%s: 1 recipient waiting: destination %s paused"
             % (qid, key))
    assert [m["rcpt_tos"] for m in held.messages()] == [["a@held.test"]]
    assert [m["rcpt_tos"] for m in free.messages()] == [["c@free.test"]]
    text = r.relayctl("show", qid).stdout.decode()
    assert "destination %s paused until " % key in text, text
    listing = r.relayctl("list").stdout.decode()
    assert "paused" in listing and "<b@held.test>" in listing, listing

    r.relayctl("resume", "held.test")
    sent_line(r, qid, "b@held.test")
    assert [m["rcpt_tos"] for m in held.messages()] == [["a@held.test"],
                                                         ["b@held.test"]]


def test_pause_errors(world):
    w, up, key = one_mx_world(world, "pe.test")
    r = w.relayd()
    res = r.relayctl("pause", "mx:no.such.host/may", check=False)
    assert res.returncode == 1
    assert "no destination 'mx:no.such.host/may'" in res.stderr.decode()
    # A domain that does not exist: the lookup's own words.
    res = r.relayctl("pause", "nosuch.test", check=False)
    assert res.returncode == 1
    assert "nosuch.test" in res.stderr.decode() and "5.1.2" in \
        res.stderr.decode(), res.stderr
    res = r.relayctl("resume", "pe.test", check=False)
    assert res.returncode == 1
    assert "not paused" in res.stderr.decode(), res.stderr
    res = r.relayctl("pause", "pe.test", "--for", "soon", check=False)
    assert res.returncode == 2
    assert "--for" in res.stderr.decode()
    # Nothing of the refusals paused anything.
    assert all(d["state"] != "paused" for d in destinations(r))


def test_pause_smarthost_then_resume(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls")
    r = relay_to(up)
    out = r.relayctl("pause", "smarthost").stdout.decode()
    assert "paused until resumed" in out, out
    content, mid = make_message("smarthost paused", to="s@dest.test")
    qid = submit(r, SENDER, ["s@dest.test"], content)
    # relayctl show: held by the paused smarthost.
    (rc,) = show_json(r, qid)["recipients"]
    assert rc["waiting"]["why"] == "paused", rc
    assert rc["waiting"]["reason"] == "paused by operator", rc
    st = json.loads(r.relayctl("stats", "--json").stdout.decode())
    assert st["route"]["state"] == "paused", st
    assert up.messages() == []
    r.relayctl("resume", "smarthost")
    up.wait_messages(1)
    wait_gone(r, qid)
    log = r.log_text()
    assert 0 <= log.find("paused by the operator until resumed") < \
        log.find("resumed by the operator") < log.find("status=sent"), \
        log[-3000:]


def test_throttled_smarthost_shows_in_list_and_show(upstream_factory,
                                                    relay_to):
    # Every MAIL gets a rate-limit reply: the smarthost stays throttled
    # (the reply table's throttle-words row) and the message waits.
    up = upstream_factory(tls="starttls", behaviour={
        "mail": "451 4.7.1 Rate limit exceeded, slow down"})
    r = relay_to(up)
    content, mid = make_message("throttled", to="t@dest.test")
    qid = submit(r, SENDER, ["t@dest.test"], content)
    wait_log(r, r"warning: smarthost \S+: throttled \(throttle-words\) for "
             r"1800 s: one session, one transaction every 1 s: 451 4\.7\.1")
    seen = {}

    def deferred():
        (seen["rc"],) = show_json(r, qid)["recipients"]
        return seen["rc"]["state"] == "deferred"
    wait_until(deferred, timeout=30, what="the deferral in the index")
    rc = seen["rc"]
    assert rc["state"] == "deferred", rc
    assert rc["waiting"]["why"] == "throttled", rc
    assert rc["waiting"]["reason"].startswith("451 4.7.1 Rate limit"), rc
    assert rc["waiting"]["until"] > 0, rc
    text = r.relayctl("show", qid).stdout.decode()
    assert "throttled until " in text and "Rate limit exceeded" in text, text
    listing = r.relayctl("list").stdout.decode()
    assert "throttled until " in listing, listing
    (d,) = destinations(r)
    assert d["state"] == "throttled" and d["until"] > 0, d
    # Never more than one session at a time while it asks us to slow down.
    assert all(c["concurrent"] == 1 for c in up.connections())
    assert up.messages() == []


def test_flush_takes_what_waits_for_a_paused_destination(world):
    """A destination that is down pauses with backoff (retry_min 300 s
    here); a message for it accepted meanwhile waits ("destination ...
    paused"). The MX comes back; `relayctl flush` sends both messages at
    once, the one that waited for the pause included, long before the
    pause would have ended."""
    w = world(1)
    w.start_dns({"mx": [("back.test", "mx.back.test", 10)],
                 "hosts": [("mx.back.test", w.host(0))]})
    r = w.relayd(retry_min="300s", retry_max="600s")
    q1 = submit(r, SENDER, ["a@back.test"],
                make_message("first", to="a@back.test")[0])
    wait_status(r, q1, "a@back.test", "deferred", fail_on=("sent",))
    q2 = submit(r, SENDER, ["b@back.test"],
                make_message("second", to="b@back.test")[0])
    wait_log(r, r"%s: 1 recipient waiting: destination \S+ paused" % q2)
    up = w.start_mx(0)
    out = r.relayctl("flush").stdout.decode()
    assert "flushing 2 messages" in out, out
    sent_line(r, q1, "a@back.test")
    sent_line(r, q2, "b@back.test")
    assert sorted(m["rcpt_tos"][0] for m in up.messages()) == \
        ["a@back.test", "b@back.test"]
    log = r.log_text()
    assert log.find("%s: 1 recipient waiting" % q2) < \
        log.find("%s: to=<b@back.test>, relay=mx.back.test" % q2), log[-3000:]
