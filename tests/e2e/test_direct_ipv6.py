"""tests/e2e/test_direct_ipv6.py - delivery = direct: address families
(issue 9 §3 "ip_preference", §4 "IPv6 MX with ip_preference"), in the
world of tests/e2e/test_direct.py plus an aiosmtpd MX on [::1] sharing
the IPv4 MX's port (mx_port is one port for every MX).

Covered, each asserted on which server got connections and mail and on
log lines, never on timing:
- an MX host with only an AAAA record (::1) is tried with ip_preference
  auto (IPv4 first: no forward-confirmed reverse DNS), any and ipv6; with
  ipv4 (that family only, README) it is never asked for nor connected to;
- a dual-stack MX (A and AAAA): ipv4 never connects to the ::1 server
  while the IPv4 one answers, ipv6 the reverse; any tries both, the one
  DNS gives first getting the mail;
- the first family's connection refused: auto and any fall back to the
  other family within the same attempt (sent, never deferred); ipv4 and
  ipv6 do not (deferred, the other family's server never connected to).
Skipped as a whole when ::1 is unavailable (checked once).
"""
import re
import socket

import pytest

from conftest_upstream import make_message, statuses, submit, wait_status
from test_direct import SENDER, sent_line, world  # noqa: F401 (fixture)


def _have_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


pytestmark = pytest.mark.skipif(not _have_ipv6_loopback(),
                                reason="no IPv6 loopback (::1)")


def _port_free_on_v6(port):
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def v6world(world, nhosts=1):
    """A world whose port is also free on [::1] (a few draws)."""
    for _ in range(20):
        w = world(nhosts)
        if _port_free_on_v6(w.port):
            return w
    pytest.fail("no port free on both 127.0.N.x and ::1")


def start_v6_mx(w, **kw):
    u = w.upstream_factory(endpoint=("::1", w.port), tls="none", **kw)
    w.mx["v6"] = u
    return u


def test_ipv6_loopback_world_sanity(world):
    """The test of the tests: the [::1] MX takes mail over IPv6."""
    import smtplib
    w = v6world(world)
    up = start_v6_mx(w)
    with smtplib.SMTP("::1", w.port, timeout=10) as c:
        c.sendmail("a@x.test", ["b@y.test"], b"Subject: t\r\n\r\nx\r\n")
    got = up.wait_messages(1)
    assert got[0]["peer"][0] == "::1"


@pytest.mark.parametrize("pref", ["auto", "any", "ipv6"])
def test_mx_with_only_ipv6_is_tried(world, pref):
    w = v6world(world)
    v4 = w.start_mx(0)          # an IPv4 server that must stay unused
    v6 = start_v6_mx(w)
    w.start_dns({"mx": [("only6.test", "mx.only6.test", 10)],
                 "hosts": [("mx.only6.test", "::1")]})
    # auto: hostname has no forward-confirmed reverse DNS (no
    # smtp_bind_address6 PTR): IPv4 first, yet the IPv6-only MX is tried.
    r = w.relayd(ip_preference=pref, hostname="relay.test")
    content, mid = make_message("only v6 " + pref, to="s@only6.test")
    qid = submit(r, SENDER, ["s@only6.test"], content)
    line = sent_line(r, qid, "s@only6.test")
    assert "relay=mx.only6.test[::1]:%d" % w.port in line, line
    got = v6.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["s@only6.test"]
    assert mid.encode() in got[0]["data"]
    assert v4.connections() == []
    if pref == "auto":
        assert "ip_preference auto: IPv4 first" in r.log_text()


def test_ipv4_only_never_tries_an_ipv6_only_mx(world):
    w = v6world(world)
    v6 = start_v6_mx(w)
    w.start_dns({"mx": [("only6.test", "mx.only6.test", 10)],
                 "hosts": [("mx.only6.test", "::1")]})
    r = w.relayd(ip_preference="ipv4")
    content, mid = make_message("only v6, ipv4", to="s@only6.test")
    qid = submit(r, SENDER, ["s@only6.test"], content,
                 rcpt_options={"s@only6.test": ["NOTIFY=NEVER"]})
    line = [l for st, l in wait_status(r, qid, "s@only6.test", "deferred",
                                       fail_on=("sent", "bounced"))
            if st == "deferred"][0]
    assert "451 4.4.3 only6.test: no usable address for its MX hosts" \
        in line, line
    assert v6.connections() == []


def _dual_stack(w, dom):
    w.start_dns({"mx": [(dom, "mx.%s" % dom, 10)],
                 "hosts": [("mx.%s" % dom, w.host(0)),
                           ("mx.%s" % dom, "::1")]})
    return "mx.%s" % dom


@pytest.mark.parametrize("pref,winner", [("ipv4", "v4"), ("ipv6", "v6")])
def test_dual_stack_mx_one_family_only(world, pref, winner):
    w = v6world(world)
    servers = {"v4": w.start_mx(0), "v6": start_v6_mx(w)}
    mx = _dual_stack(w, "ds.test")
    r = w.relayd(ip_preference=pref)
    rcpts = ["a@ds.test", "b@ds.test"]
    for rc in rcpts:
        content, _ = make_message("dual " + pref, to=rc)
        qid = submit(r, SENDER, [rc], content)
        line = sent_line(r, qid, rc)
        addr = w.host(0) if winner == "v4" else "::1"
        assert "relay=%s[%s]:%d" % (mx, addr, w.port) in line, line
    got = servers[winner].wait_messages(2)
    assert sorted(m["rcpt_tos"][0] for m in got) == rcpts
    loser = "v6" if winner == "v4" else "v4"
    assert servers[loser].connections() == []
    assert "1 address(es) to try" in r.log_text()


def test_dual_stack_mx_any_in_dns_order(world):
    w = v6world(world)
    servers = {w.host(0): w.start_mx(0), "::1": start_v6_mx(w)}
    mx = _dual_stack(w, "any.test")
    r = w.relayd(ip_preference="any")
    content, _ = make_message("dual any", to="a@any.test")
    qid = submit(r, SENDER, ["a@any.test"], content)
    line = sent_line(r, qid, "a@any.test")
    m = re.search(r"direct: any\.test: 1 MX host\(s\), 2 address\(es\) to "
                  r"try, first mx\.any\.test\[([0-9a-f.:]+)\]", r.log_text())
    assert m, r.log_text()[-3000:]
    first = m.group(1)
    assert first in servers, first
    assert "relay=%s[%s]:%d" % (mx, first, w.port) in line, line
    assert servers[first].wait_messages(1)[0]["rcpt_tos"] == ["a@any.test"]
    other = [a for a in servers if a != first][0]
    assert servers[other].connections() == []


@pytest.mark.parametrize("pref,dead", [("any", None), ("auto", "v4")])
def test_fallback_to_the_other_family_within_the_attempt(world, pref, dead):
    w = v6world(world)
    if pref == "any":
        # Which family any tries first is DNS's order: learn it from a
        # first message with both servers up, then stop that server.
        servers = {w.host(0): w.start_mx(0), "::1": start_v6_mx(w)}
    else:
        # auto without FCrDNS: IPv4 first; nothing listens there.
        servers = {"::1": start_v6_mx(w)}
    mx = _dual_stack(w, "fb.test")
    r = w.relayd(ip_preference=pref, hostname="relay.test")
    if pref == "any":
        c0, _ = make_message("fallback probe", to="p@fb.test")
        q0 = submit(r, SENDER, ["p@fb.test"], c0)
        line = sent_line(r, q0, "p@fb.test")
        first = re.search(r"relay=mx\.fb\.test\[([0-9a-f.:]+)\]", line).group(1)
        servers.pop(first).stop()
    else:
        first = w.host(0)
    (second,) = servers
    content, _ = make_message("fallback " + pref, to="f@fb.test")
    qid = submit(r, SENDER, ["f@fb.test"], content)
    line = sent_line(r, qid, "f@fb.test")
    assert "relay=%s[%s]:%d" % (mx, second, w.port) in line, line
    # Within the attempt: no deferral before it was sent.
    assert statuses(r, qid, "f@fb.test") == ["sent"]
    log = r.log_text()
    i_try = log.find("trying %s[%s]" % (mx, second))
    assert 0 <= i_try < log.find("%s: to=<f@fb.test>" % qid), log[-3000:]
    assert servers[second].wait_messages(1, match=lambda m:
                                         m["rcpt_tos"] == ["f@fb.test"])


@pytest.mark.parametrize("pref", ["ipv4", "ipv6"])
def test_no_fallback_to_a_family_not_allowed(world, pref):
    w = v6world(world)
    # Only the other family's server listens.
    other = start_v6_mx(w) if pref == "ipv4" else w.start_mx(0)
    _dual_stack(w, "nf.test")
    r = w.relayd(ip_preference=pref)
    content, _ = make_message("no fallback " + pref, to="n@nf.test")
    qid = submit(r, SENDER, ["n@nf.test"], content,
                 rcpt_options={"n@nf.test": ["NOTIFY=NEVER"]})
    wait_status(r, qid, "n@nf.test", "deferred", count=2,
                fail_on=("sent", "bounced"))
    assert other.connections() == []
