"""tests/e2e/test_deliver_ctl.py - relayctl's queue commands against the
running daemon, checked from the upstream's side. Every recipient is
first deferred (451) with retry_min=1h, so nothing is retried by itself;
then: requeue resets the attempts; delete removes a message for good;
with the upstream accepting again, flush ID delivers that message only;
bounce ID sends a DSN for it instead; hold ID keeps a message back from a
flush of everything; release ID delivers it."""
import re

from conftest import wait_until
from conftest_upstream import (SENDER, delivery_lines, make_message,
                               message_id, queue_entry, queue_list,
                               rcpt_entry, removed, submit, wait_dsn,
                               wait_gone, wait_log, wait_rcpt_state,
                               wait_status)

NAMES = "ABCDEFG"


def rcpt(name):
    return "%s@dest.test" % name.lower()


def arrived(up):
    """Message-IDs of the (non-DSN) messages the upstream accepted."""
    return [message_id(m["data"]) for m in up.messages() if m["mail_from"]]


def test_relayctl_commands_seen_from_upstream(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"*": "451 4.3.0 try later"}})
    r = relay_to(up, retry_min="1h", retry_max="2h")
    q, mid = {}, {}
    for n in NAMES:
        content, mid[n] = make_message("ctl %s" % n, to=rcpt(n))
        q[n] = submit(r, SENDER, [rcpt(n)], content)
    for n in NAMES:
        wait_rcpt_state(r, q[n], rcpt(n), lambda x: x["state"] == "deferred"
                        and x["attempts"] >= 1, what="%s deferred" % n)

    # requeue F while the upstream still says 451: its attempts start
    # again from 0, so after one more attempt there is 1, not 2.
    before = len(delivery_lines(r, q["F"], rcpt("F")))
    r.relayctl("requeue", q["F"])
    just_after = rcpt_entry(queue_entry(r, q["F"]), rcpt("F"))
    print("F right after requeue:", just_after["state"], just_after["attempts"])
    wait_status(r, q["F"], rcpt("F"), "deferred", count=before + 1,
                fail_on=("sent", "bounced"))
    f = wait_rcpt_state(r, q["F"], rcpt("F"),
                        lambda x: x["state"] == "deferred",
                        what="F deferred again")
    assert f["attempts"] == 1, f

    # delete D: gone, and never delivered (checked at the end).
    r.relayctl("delete", q["D"])
    wait_gone(r, q["D"])
    wait_log(r, r"\b%s: removed\b" % q["D"])

    # The upstream accepts from now on; nothing is due for an hour.
    up.set_behaviour({})
    r.relayctl("flush", q["A"])
    up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid["A"])
    wait_gone(r, q["A"])
    assert arrived(up) == [mid["A"]], "flush A delivered more than A"

    # bounce E: a DSN to the sender, E itself never delivered.
    r.relayctl("bounce", q["E"])
    rec, d = wait_dsn(up, q["E"])
    assert rec["mail_from"] == "" and rec["rcpt_tos"] == [SENDER]
    b = d.recipient(rcpt("E"))
    assert b["action"] == "failed" and b["status"].startswith("5."), b
    wait_gone(r, q["E"])
    assert removed(r, q["E"])

    # hold B, then flush everything: C, F, G arrive, B stays.
    r.relayctl("hold", q["B"])
    wait_until(lambda: queue_entry(r, q["B"])["state"] == "hold", timeout=10,
               what="B held")
    out = r.relayctl("flush").stdout.decode().strip()
    # C, F, G and perhaps E's DSN (the upstream said 451 to it too).
    m = re.fullmatch(r"flushing (\d+) (messages?)", out)
    assert m and int(m.group(1)) in (3, 4), out
    assert m.group(2) == ("message" if m.group(1) == "1" else "messages")
    for n in "CFG":
        up.wait_messages(1, match=lambda m, n=n: message_id(m["data"]) == mid[n])
        wait_gone(r, q[n])
    assert mid["B"] not in arrived(up)
    held = queue_entry(r, q["B"])
    assert held is not None and held["state"] == "hold", held

    # release B: it arrives.
    r.relayctl("release", q["B"])
    up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid["B"])
    wait_gone(r, q["B"])

    assert sorted(arrived(up)) == sorted(mid[n] for n in "ABCFG")
    assert queue_list(r) == []
    dsn_ids = [m for m in up.messages() if m["mail_from"] == ""]
    assert len(dsn_ids) == 1, "only E's DSN: %r" % [m["rcpt_tos"] for m in dsn_ids]
