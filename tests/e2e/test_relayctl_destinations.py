"""tests/e2e/test_relayctl_destinations.py - `relayctl destinations`: the
destinations relayd's scheduler holds (smarthost mode: one, named
"smarthost:HOST:PORT"), with their sessions, messages in flight, state
(paused until when, and why) and last error; --json for scripts, a table
otherwise; a stopped relayd has none. Against a real aiosmtpd smarthost."""
import json
import os
import signal

from conftest_upstream import (SENDER, delivery_lines, make_message,
                               message_id, submit, wait_gone, wait_status,
                               write_password_file)
from conftest import wait_until

RCPT = "rcpt@dest.test"
USER = "relay-user"


def destinations(r):
    res = r.relayctl("destinations", "--json")
    return json.loads(res.stdout.decode())["destinations"]


def smarthost_key(up):
    host, port = up.smarthost.rsplit(":", 1)
    return "smarthost:%s:%s" % (host.strip("[]"), port)


def test_paused_destination_shows_why_and_until(upstream_factory, relay_to):
    good, bad = "the-right-password", "a-wrong-password"
    up = upstream_factory(tls="starttls", users={USER: good})
    r = relay_to(up, password=bad)
    content, mid = make_message("destinations: paused")
    qid = submit(r, SENDER, [RCPT], content)
    wait_status(r, qid, RCPT, "deferred", fail_on=("bounced", "sent"))

    seen = {}

    def paused():
        ds = destinations(r)
        seen["d"] = ds
        return any(d["state"] == "paused" for d in ds)
    wait_until(paused, timeout=30, what="a paused destination")
    (d,) = seen["d"]
    assert d["name"] == smarthost_key(up)
    assert d["until"] > 0
    assert "authentication failed" in d["reason"], d
    assert d["last_error"], d
    assert d["failures"] >= 1
    assert d["in_flight"] == 0

    table = r.relayctl("destinations").stdout.decode()
    lines = table.splitlines()
    assert lines[0].split() == ["DESTINATION", "STATE", "SESSIONS",
                                "IN-FLIGHT", "WAITING"]
    assert lines[1].split()[:2] == [smarthost_key(up), "paused"]
    assert any(x.startswith("  paused until ") and "authentication failed"
               in x for x in lines), table
    assert any(x.startswith("  last error: ") for x in lines), table

    # Fixed by SIGHUP: the destination tries at once, and delivers.
    write_password_file(r.conf["smarthost_password_file"], good)
    before = r.log_text().count("configuration reloaded")
    os.kill(r.pid, signal.SIGHUP)
    wait_until(lambda: r.log_text().count("configuration reloaded") > before,
               timeout=10, what="relayd to reload")
    up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)
    wait_gone(r, qid)
    # Delivered and idle: nothing worth keeping, the destination goes
    # (its session QUITs after 2 s idle).
    wait_until(lambda: destinations(r) == [], timeout=30,
               what="the idle destination to be forgotten")


def test_messages_in_flight_and_stopped_relayd(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"delay_data_reply_ms": 3000})
    r = relay_to(up)
    content, mid = make_message("destinations: in flight")
    qid = submit(r, SENDER, [RCPT], content)

    seen = {}

    def in_flight():
        ds = destinations(r)
        seen["d"] = ds
        return any(d["in_flight"] == 1 for d in ds)
    wait_until(in_flight, timeout=30, what="a message in flight")
    # Seen in flight before the smarthost's reply was logged.
    assert [s for s, _ in delivery_lines(r, qid, RCPT)] == []
    (d,) = seen["d"]
    assert d["name"] == smarthost_key(up)
    assert d["state"] == "active"
    assert d["sessions"] == 1
    assert d["last_error"] == ""

    wait_status(r, qid, RCPT, "sent", fail_on=("bounced", "deferred"))
    wait_gone(r, qid)
    r.stop()
    res = r.relayctl("destinations", "--json")
    assert json.loads(res.stdout.decode()) == {"running": False,
                                               "destinations": []}
    res = r.relayctl("destinations")
    assert "not running" in res.stdout.decode()
