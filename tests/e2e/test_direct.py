"""tests/e2e/test_direct.py - delivery = direct (issue 9 §3) end to end:
dnsmasq (tests/e2e/dnsutil.py) is authoritative for the zone `test`,
whose MX records point at aiosmtpd MX servers (tests/e2e/upstream.py) on
several 127.0.N.x addresses sharing one port (mx_port); relayd asks it
through dns_servers, with mx_allow_private = yes.

Covered, each asserted on events (log lines, what each MX recorded),
never on timing:
- routing: the best MX gets the mail; failover when it refuses
  connections or greets with 421; one message to three domains is three
  transactions, each MX seeing only its recipients; the implicit MX (a
  domain with an A record and no MX); a dead domain does not hold back
  another;
- lookups: NXDOMAIN bounces 5.1.2 (DSN to the sender's own MX, no
  Remote-MTA); with the dnspython stub (dnsutil.DnsStub) as resolver, a
  null MX (RFC 7505) bounces 5.1.10 at once, SERVFAIL defers 4.4.3
  (never the implicit MX) then delivers once the resolver answers
  (SIGHUP to a working server); SIGTERM with an MX lookup unanswered
  exits cleanly, the message kept;
- refusals: an MX that is relayd's own listener bounces 5.4.6; an
  address literal goes to that address (mx_allow_private = yes) or
  bounces 5.4.4 (no); a 550 from the MX bounces that recipient with a DSN
  naming the MX as Remote-MTA, the other one is sent;
- TLS: opportunistic STARTTLS (tls=TLSv1.x/unverified, no mail in
  clear); a failed STARTTLS at "may" retried once in plaintext and
  remembered ("TLS broken"); an `encrypt` domain whose MX offers no
  STARTTLS deferred, never sent in clear;
- limits and replies: max_recipients_per_transaction and 452 4.5.3 split
  transactions (the rest not deferred); destination_policy_file's
  concurrency=1 holds an MX to one session while another runs several,
  and rate=1/hour holds the second message back;
  greylisting (450 4.7.1) defers only its recipient, Gmail's 421 4.7.28
  throttles the destination (one session at a time afterwards, while
  another destination runs several; `destinations` says throttled);
- ip_preference = auto: IPv6 first when smtp_bind_address6 (::1) has
  forward-confirmed reverse DNS naming hostname (IPv4 then the fallback
  within the attempt), IPv4 first when the PTR names another host;
- SIGKILL while six messages go to three domains loses nothing;
- relayctl stats --json says delivery "direct" (route.state "direct");
- smarthost mode: the smarthost's name resolved through dns/
  (dns_servers), its addresses tried in turn.
Every wait is bounded; every server is stopped by PID.
"""
import json
import os
import random
import re
import socket
import tempfile

import pytest

from conftest import wait_until
from conftest_upstream import (delivery_lines, make_message, statuses, submit,
                               wait_gone, wait_log, wait_status)
from dnsutil import Dnsmasq
from dsn import parse_dsn

SENDER = "sender@snd.test"


def _shared_port(addrs):
    """A TCP port free on every address of addrs."""
    for _ in range(50):
        s0 = socket.socket()
        s0.bind((addrs[0], 0))
        port = s0.getsockname()[1]
        held = [s0]
        try:
            for a in addrs[1:]:
                s = socket.socket()
                held.append(s)
                s.bind((a, port))
            return port
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError("no port free on all of %s" % addrs)


class World:
    """MX servers on 127.0.N.1..k, one port, and dnsmasq serving them."""

    def __init__(self, upstream_factory, relayd_factory, nhosts):
        self.net = "127.0.%d" % random.randrange(200, 250)
        self.addrs = ["%s.%d" % (self.net, i + 1) for i in range(nhosts)]
        self.port = _shared_port(self.addrs)
        self.upstream_factory = upstream_factory
        self.relayd_factory = relayd_factory
        self.dns = None         # the server relayd asks
        self.dnsmasq = None     # ours to stop
        self.mx = {}

    def host(self, i):
        return self.addrs[i]

    def start_mx(self, i, **kw):
        u = self.upstream_factory(endpoint=(self.addrs[i], self.port),
                                  tls=kw.pop("tls", "none"), **kw)
        self.mx[i] = u
        return u

    def start_dns(self, zone):
        self.dnsdir = tempfile.mkdtemp(prefix="relayd-dns-")
        self.dnsmasq = self.dns = Dnsmasq(self.dnsdir, zone).start()
        return self.dns

    def relayd(self, **conf):
        base = {
            "delivery": "direct",
            "dns_servers": self.dns.servers,
            "mx_allow_private": "yes",
            "mx_port": str(self.port),
            "retry_min": "1s",
            "retry_max": "2s",
            "delivery_timeout": "10s",
        }
        base.update(conf)
        return self.relayd_factory(**base)

    def stop(self):
        if self.dnsmasq:
            self.dnsmasq.stop()
            os.system("rm -rf %s" % self.dnsdir)


@pytest.fixture
def world(upstream_factory, relayd_factory):
    made = []

    def make(nhosts):
        w = World(upstream_factory, relayd_factory, nhosts)
        made.append(w)
        return w
    yield make
    for w in made:
        w.stop()


def sent_line(relayd, qid, rcpt):
    lines = [l for st, l in wait_status(relayd, qid, rcpt, "sent",
                                        fail_on=("bounced",))
             if st == "sent"]
    return lines[0]


def test_best_mx_gets_the_mail(world):
    w = world(2)
    best = w.start_mx(0)
    worse = w.start_mx(1)
    w.start_dns({"mx": [("pref.test", "mx1.pref.test", 10),
                        ("pref.test", "mx2.pref.test", 20)],
                 "hosts": [("mx1.pref.test", w.host(0)),
                           ("mx2.pref.test", w.host(1))]})
    r = w.relayd()
    content, mid = make_message("pref", to="a@pref.test")
    qid = submit(r, SENDER, ["a@pref.test"], content)
    line = sent_line(r, qid, "a@pref.test")
    assert "relay=mx1.pref.test[%s]:%d" % (w.host(0), w.port) in line, line
    assert "tls=none" in line, line
    got = best.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["a@pref.test"]
    assert mid.encode() in got[0]["data"]
    assert worse.messages() == []
    # EHLO with hostname, no AUTH toward an MX host.
    verbs = [(x["verb"], x.get("arg", "")) for c in best.connections()
             for x in c["commands"]]
    assert any(v.upper() == "EHLO" for v, _ in verbs), verbs
    assert not any(v.upper() == "AUTH" for v, _ in verbs), verbs


def test_failover_when_best_mx_refuses_connections(world):
    w = world(2)
    # Nothing listens on the best MX's address: connection refused.
    second = w.start_mx(1)
    w.start_dns({"mx": [("fo.test", "mx1.fo.test", 10),
                        ("fo.test", "mx2.fo.test", 20)],
                 "hosts": [("mx1.fo.test", w.host(0)),
                           ("mx2.fo.test", w.host(1))]})
    r = w.relayd()
    content, mid = make_message("failover", to="b@fo.test")
    qid = submit(r, SENDER, ["b@fo.test"], content)
    line = sent_line(r, qid, "b@fo.test")
    assert "relay=mx2.fo.test[%s]:%d" % (w.host(1), w.port) in line, line
    got = second.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["b@fo.test"]
    log = r.log_text()
    # The failover happened within the attempt: the first address was
    # tried, then the second, before the message was sent.
    i_try = log.find("trying mx2.fo.test[%s]" % w.host(1))
    i_sent = log.find("%s: to=<b@fo.test>" % qid)
    assert 0 <= i_try < i_sent, log[-3000:]
    assert "status=deferred" not in log.split("%s: to=<b@fo.test>" % qid)[0] \
        .split(qid)[-1]


def test_three_domains_three_transactions(world):
    w = world(3)
    ups = [w.start_mx(i) for i in range(3)]
    w.start_dns({"mx": [("d1.test", "mx.d1.test", 10),
                        ("d2.test", "mx.d2.test", 10),
                        ("d3.test", "mx.d3.test", 10)],
                 "hosts": [("mx.d1.test", w.host(0)),
                           ("mx.d2.test", w.host(1)),
                           ("mx.d3.test", w.host(2))]})
    r = w.relayd()
    rcpts = ["a@d1.test", "x@d2.test", "b@d1.test", "y@d3.test"]
    content, mid = make_message("three", to=rcpts[0])
    qid = submit(r, SENDER, rcpts, content)
    for rc in rcpts:
        sent_line(r, qid, rc)
    want = [["a@d1.test", "b@d1.test"], ["x@d2.test"], ["y@d3.test"]]
    for u, rc in zip(ups, want):
        got = u.wait_messages(1)
        assert len(got) == 1, got
        assert sorted(got[0]["rcpt_tos"]) == rc
        assert mid.encode() in got[0]["data"]


def test_nxdomain_bounces_5_1_2_dsn_to_senders_mx(world):
    w = world(1)
    snd = w.start_mx(0)
    w.start_dns({"mx": [("snd.test", "mx.snd.test", 10)],
                 "hosts": [("mx.snd.test", w.host(0))]})
    r = w.relayd()
    content, mid = make_message("nx", to="nobody@nx.test")
    qid = submit(r, SENDER, ["nobody@nx.test"], content)
    wait_status(r, qid, "nobody@nx.test", "bounced", fail_on=("sent",))
    line = [l for st, l in wait_status(r, qid, "nobody@nx.test", "bounced")
            if st == "bounced"][0]
    assert "dsn=5.1.2" in line, line
    rec = snd.wait_messages(1, match=lambda m: m["mail_from"] == "")[0]
    assert rec["rcpt_tos"] == [SENDER]
    d = parse_dsn(rec["data"])
    assert d.queue_id == qid
    rr = d.recipient("nobody@nx.test")
    assert rr["action"] == "failed"
    assert rr["status"] == "5.1.2"
    # Our own verdict, not a server's: no Remote-MTA.
    assert "remote-mta" not in rr, rr


def test_implicit_mx(world):
    w = world(1)
    up = w.start_mx(0)
    # imp.test has an A record and no MX: NODATA for MX.
    w.start_dns({"hosts": [("imp.test", w.host(0))]})
    r = w.relayd()
    content, mid = make_message("implicit", to="c@imp.test")
    qid = submit(r, SENDER, ["c@imp.test"], content)
    line = sent_line(r, qid, "c@imp.test")
    assert "relay=imp.test[%s]:%d" % (w.host(0), w.port) in line, line
    assert up.wait_messages(1)[0]["rcpt_tos"] == ["c@imp.test"]


def test_opportunistic_starttls(world):
    w = world(1)
    up = w.start_mx(0, tls="starttls")
    w.start_dns({"mx": [("tls.test", "mx.tls.test", 10)],
                 "hosts": [("mx.tls.test", w.host(0))]})
    r = w.relayd()
    content, mid = make_message("tls", to="t@tls.test")
    qid = submit(r, SENDER, ["t@tls.test"], content)
    line = sent_line(r, qid, "t@tls.test")
    assert re.search(r"tls=TLSv1\.[23]/unverified", line), line
    assert up.wait_messages(1)[0]["rcpt_tos"] == ["t@tls.test"]
    assert up.mail_in_clear() == []
    assert ("STARTTLS" in [v.upper() for _, v in up.commands_in_clear()])


def test_dead_domain_does_not_hold_back_others(world):
    w = world(2)
    live = w.start_mx(1)
    # dead.test's only MX refuses connections (nothing listens there).
    w.start_dns({"mx": [("dead.test", "mx.dead.test", 10),
                        ("live.test", "mx.live.test", 10)],
                 "hosts": [("mx.dead.test", w.host(0)),
                           ("mx.live.test", w.host(1))]})
    r = w.relayd()
    c1, _ = make_message("dead", to="d@dead.test")
    q1 = submit(r, SENDER, ["d@dead.test"], c1)
    wait_status(r, q1, "d@dead.test", "deferred", fail_on=("sent",))
    c2, mid2 = make_message("live", to="l@live.test")
    q2 = submit(r, SENDER, ["l@live.test"], c2)
    sent_line(r, q2, "l@live.test")
    assert live.wait_messages(1)[0]["rcpt_tos"] == ["l@live.test"]
    # The dead domain is still waiting: never sent, deferred again.
    wait_status(r, q1, "d@dead.test", "deferred", count=2, fail_on=("sent",))


def _stub_names(w, extra):
    """Stub records for the sender's domain (DSNs go to its MX)."""
    names = {
        "snd.test": {"records": ["snd.test. 300 IN MX 10 mx.snd.test."]},
        "mx.snd.test": {"records": ["mx.snd.test. 300 IN A %s" % w.host(0)]},
    }
    names.update(extra)
    return names


@pytest.fixture
def stubs():
    made = []

    def make(names):
        from dnsutil import DnsStub
        d = tempfile.mkdtemp(prefix="relayd-stub-")
        s = DnsStub(d, names).start()
        made.append((s, d))
        return s
    yield make
    for s, d in made:
        s.stop()
        os.system("rm -rf %s" % d)


def test_null_mx_bounces_5_1_10(world, stubs):
    w = world(1)
    snd = w.start_mx(0)
    stub = stubs(_stub_names(w, {
        "nullmx.test": {"records": ["nullmx.test. 300 IN MX 0 ."]}}))
    w.dns = stub
    r = w.relayd()
    content, mid = make_message("null mx", to="n@nullmx.test")
    qid = submit(r, SENDER, ["n@nullmx.test"], content)
    line = [l for st, l in wait_status(r, qid, "n@nullmx.test", "bounced",
                                       fail_on=("sent", "deferred"))
            if st == "bounced"][0]
    assert "dsn=5.1.10" in line, line
    rec = snd.wait_messages(1, match=lambda m: m["mail_from"] == "")[0]
    d = parse_dsn(rec["data"])
    assert d.queue_id == qid
    assert d.recipient("n@nullmx.test")["status"] == "5.1.10"
    # Bounced at once: no address of the null MX's domain was asked for.
    assert stub.queries("nullmx.test", "A") == 0


def test_servfail_defers_then_delivers(world, stubs):
    w = world(2)
    up = w.start_mx(1)
    bad = stubs(_stub_names(w, {"sf.test": {"rcode": "SERVFAIL"}}))
    good = stubs(_stub_names(w, {
        "sf.test": {"records": ["sf.test. 300 IN MX 10 mx.sf.test."]},
        "mx.sf.test": {"records": ["mx.sf.test. 300 IN A %s" % w.host(1)]}}))
    w.dns = bad
    r = w.relayd()
    content, mid = make_message("servfail", to="s@sf.test")
    qid = submit(r, SENDER, ["s@sf.test"], content)
    line = [l for st, l in wait_status(r, qid, "s@sf.test", "deferred",
                                       fail_on=("sent", "bounced"))
            if st == "deferred"][0]
    assert "dsn=4.4.3" in line, line
    assert "SERVFAIL" in line.upper() or "tempfail" in line, line
    # Never an implicit MX on a failed lookup: no A query for sf.test.
    assert bad.queries("sf.test", "A") == 0
    assert up.messages() == []
    # The resolver answers again (SIGHUP to a working server).
    r.conf["dns_servers"] = good.servers
    r.write_conf()
    import signal as _signal
    r.proc.send_signal(_signal.SIGHUP)
    line = sent_line(r, qid, "s@sf.test")
    assert "relay=mx.sf.test[%s]:%d" % (w.host(1), w.port) in line, line
    assert up.wait_messages(1)[0]["rcpt_tos"] == ["s@sf.test"]


def test_starttls_failure_retried_once_in_plaintext(world):
    w = world(1)
    # Offers STARTTLS but cannot do it (no certificate): STARTTLS fails.
    up = w.start_mx(0, behaviour={"ehlo_add": ["STARTTLS"]})
    w.start_dns({"mx": [("brk.test", "mx.brk.test", 10)],
                 "hosts": [("mx.brk.test", w.host(0))]})
    r = w.relayd()
    content, mid = make_message("broken tls", to="k@brk.test")
    qid = submit(r, SENDER, ["k@brk.test"], content)
    line = sent_line(r, qid, "k@brk.test")
    assert "tls=none" in line, line
    log = r.log_text()
    i_broken = log.find("TLS broken")
    assert 0 <= i_broken < log.find("%s: to=<k@brk.test>" % qid), log[-3000:]
    conns = up.connections()
    # First connection: STARTTLS tried; the second, in plaintext, without.
    assert len(conns) == 2, conns
    verbs = [[x["verb"].upper() for x in c["commands"]] for c in conns]
    assert "STARTTLS" in verbs[0] and "MAIL" not in verbs[0], verbs
    assert "STARTTLS" not in verbs[1] and "MAIL" in verbs[1], verbs
    # Remembered: the next message goes in plaintext at once.
    c2, _ = make_message("broken tls 2", to="k2@brk.test")
    q2 = submit(r, SENDER, ["k2@brk.test"], c2)
    sent_line(r, q2, "k2@brk.test")
    verbs = [[x["verb"].upper() for x in c["commands"]]
             for c in up.connections()]
    assert all("STARTTLS" not in v for v in verbs[2:]), verbs
    # The operator sees it, and the destination keeps it while idle.
    import json
    ds = json.loads(r.relayctl("destinations", "--json").stdout
                    .decode())["destinations"]
    (d,) = [x for x in ds if x["name"] == "mx:mx.brk.test/may"]
    assert d["tls_broken_until"] > 0, d
    assert re.search(r"^  TLS broken until .* \(in .*\), plaintext: ",
                     r.relayctl("destinations").stdout.decode(), re.M)


def test_encrypt_policy_never_sends_in_clear(world, tmp_path):
    w = world(1)
    up = w.start_mx(0)      # no STARTTLS offered
    w.start_dns({"mx": [("enc.test", "mx.enc.test", 10)],
                 "hosts": [("mx.enc.test", w.host(0))]})
    pol = tmp_path / "tls_policy"
    pol.write_text("enc.test encrypt\n")
    r = w.relayd(tls_policy_file=str(pol))
    content, mid = make_message("encrypt", to="e@enc.test")
    qid = submit(r, SENDER, ["e@enc.test"], content)
    wait_status(r, qid, "e@enc.test", "deferred", fail_on=("sent",))
    assert "destination mx:mx.enc.test/encrypt" in r.log_text()
    assert up.messages(all=True) == []
    assert up.mail_in_clear() == []


def test_smarthost_name_resolved_through_dns(world):
    w = world(2)
    # Two addresses for the smarthost's name; nothing listens on the
    # first: the second is tried in turn.
    up = w.start_mx(1)
    dns = w.start_dns({"hosts": [("sh.test", w.host(0)),
                                 ("sh.test", w.host(1))]})
    r = w.relayd_factory(delivery="smarthost",
                         smarthost="sh.test:%d" % w.port,
                         smarthost_tls="none", dns_servers=dns.servers,
                         retry_min="1s", retry_max="2s",
                         delivery_timeout="10s")
    content, mid = make_message("smarthost by name", to="z@dest.test")
    qid = submit(r, SENDER, ["z@dest.test"], content)
    line = sent_line(r, qid, "z@dest.test")
    assert "relay=sh.test[%s]:%d" % (w.host(1), w.port) in line, line
    assert up.wait_messages(1)[0]["rcpt_tos"] == ["z@dest.test"]
    # Asked through relayd's resolver (dns_servers), not the system's.
    assert dns.queries("sh.test", "A") >= 1
    log = r.log_text()
    assert "trying sh.test[%s]" % w.host(1) in log, log[-3000:]


def test_mx_pointing_at_relayd_itself_bounces_5_4_6(world):
    w = world(1)
    r = w.relayd_factory(start=False, delivery="direct", mx_allow_private="yes",
                         retry_min="1s", retry_max="2s")
    # loop.test's MX is relayd's own listener (address and port).
    w.start_dns({"mx": [("loop.test", "mx.loop.test", 10)],
                 "hosts": [("mx.loop.test", r.addr)]})
    r.conf["dns_servers"] = w.dns.servers
    r.conf["mx_port"] = str(r.port)
    r.write_conf()
    r.start()
    content, mid = make_message("loop", to="l@loop.test")
    qid = submit(r, SENDER, ["l@loop.test"], content,
                 rcpt_options={"l@loop.test": ["NOTIFY=NEVER"]})
    line = [l for st, l in wait_status(r, qid, "l@loop.test", "bounced",
                                       fail_on=("sent", "deferred"))
            if st == "bounced"][0]
    assert "dsn=5.4.6" in line and "loops back to myself" in line, line


@pytest.mark.parametrize("allow", ["yes", "no"])
def test_address_literal(world, allow):
    w = world(1)
    up = w.start_mx(0)
    w.start_dns({"hosts": [("unused.test", w.host(0))]})
    r = w.relayd(mx_allow_private=allow)
    rcpt = "lit@[%s]" % w.host(0)
    content, mid = make_message("literal", to=rcpt)
    qid = submit(r, SENDER, [rcpt], content,
                 rcpt_options={rcpt: ["NOTIFY=NEVER"]})
    if allow == "yes":
        line = sent_line(r, qid, rcpt)
        assert "[%s]:%d" % (w.host(0), w.port) in line, line
        assert up.wait_messages(1)[0]["rcpt_tos"] == [rcpt]
    else:
        line = [l for st, l in wait_status(r, qid, rcpt, "bounced",
                                           fail_on=("sent", "deferred"))
                if st == "bounced"][0]
        assert "dsn=5.4.4" in line and "loopback address" in line, line
        assert up.connections() == []


def test_bounce_dsn_names_the_mx_as_remote_mta(world):
    w = world(2)
    snd = w.start_mx(0)
    mx = w.start_mx(1, behaviour={"rcpt": {"bad@rj.test":
                                           "550 5.1.1 no such user"}})
    w.start_dns({"mx": [("snd.test", "mx.snd.test", 10),
                        ("rj.test", "mx.rj.test", 10)],
                 "hosts": [("mx.snd.test", w.host(0)),
                           ("mx.rj.test", w.host(1))]})
    r = w.relayd()
    content, mid = make_message("reject", to="bad@rj.test")
    qid = submit(r, SENDER, ["bad@rj.test", "good@rj.test"], content)
    sent_line(r, qid, "good@rj.test")
    wait_status(r, qid, "bad@rj.test", "bounced", fail_on=("sent",))
    rec = snd.wait_messages(1, match=lambda m: m["mail_from"] == "")[0]
    d = parse_dsn(rec["data"])
    rr = d.recipient("bad@rj.test")
    assert rr["status"] == "5.1.1"
    assert rr["remote-mta"].replace(" ", "") == "dns;mx.rj.test", rr
    assert "no such user" in rr["diagnostic-code"]
    assert mx.wait_messages(1)[0]["rcpt_tos"] == ["good@rj.test"]


def test_failover_when_best_mx_greets_421(world):
    w = world(2)
    busy = w.start_mx(0, behaviour={"greeting": "421 4.3.2 busy, try later"})
    second = w.start_mx(1)
    w.start_dns({"mx": [("busy.test", "mx1.busy.test", 10),
                        ("busy.test", "mx2.busy.test", 20)],
                 "hosts": [("mx1.busy.test", w.host(0)),
                           ("mx2.busy.test", w.host(1))]})
    r = w.relayd()
    content, mid = make_message("421", to="q@busy.test")
    qid = submit(r, SENDER, ["q@busy.test"], content)
    line = sent_line(r, qid, "q@busy.test")
    assert "relay=mx2.busy.test[%s]:%d" % (w.host(1), w.port) in line, line
    assert second.wait_messages(1)[0]["rcpt_tos"] == ["q@busy.test"]
    # The best MX was asked first, and took nothing.
    assert len(busy.connections()) >= 1
    assert busy.messages(all=True) == []
    assert statuses(r, qid, "q@busy.test") == ["sent"]


def test_max_recipients_per_transaction(world):
    w = world(1)
    up = w.start_mx(0)
    w.start_dns({"mx": [("many.test", "mx.many.test", 10)],
                 "hosts": [("mx.many.test", w.host(0))]})
    r = w.relayd(max_recipients_per_transaction="2")
    rcpts = ["r%d@many.test" % i for i in range(5)]
    content, mid = make_message("many", to=rcpts[0])
    qid = submit(r, SENDER, rcpts, content)
    for rc in rcpts:
        sent_line(r, qid, rc)
    got = up.wait_messages(3)
    assert len(got) == 3, [m["rcpt_tos"] for m in got]
    assert sorted(len(m["rcpt_tos"]) for m in got) == [1, 2, 2]
    assert sorted(a for m in got for a in m["rcpt_tos"]) == sorted(rcpts)


def test_sigkill_during_delivery_to_several_domains_loses_nothing(world):
    from conftest import wait_until
    from conftest_upstream import wait_queue_empty
    w = world(3)
    doms = ["k1.test", "k2.test", "k3.test"]
    ups = [w.start_mx(i, behaviour={"delay_data_reply_ms": 300})
           for i in range(3)]
    w.start_dns({"mx": [(d, "mx.%s" % d, 10) for d in doms],
                 "hosts": [("mx.%s" % d, w.host(i))
                           for i, d in enumerate(doms)]})
    r = w.relayd(destination_concurrency="1")
    want = set()
    for n in range(6):
        rcpts = ["m%d@%s" % (n, d) for d in doms]
        content, mid = make_message("kill %d" % n, to=rcpts[0])
        submit(r, SENDER, rcpts, content)
        want |= {(mid, rc) for rc in rcpts}

    def got():
        return {(re.search(rb"^Message-ID:\s*(<[^>\r\n]+>)", m["data"],
                           re.I | re.M).group(1).decode(), rc)
                for u in ups for m in u.messages() for rc in m["rcpt_tos"]}
    # Killed while some, not all, have arrived.
    wait_until(lambda: len(got()) >= 2, timeout=30, what="first deliveries")
    r.kill()
    assert got() != want, "all delivered before the kill: nothing tested"
    r.start()
    wait_until(lambda: got() >= want, timeout=60,
               what="every recipient at its MX after the restart")
    assert got() == want
    wait_queue_empty(r, timeout=30)


def test_destination_policy_file_concurrency(world, tmp_path):
    w = world(2)
    slow = {"delay_data_reply_ms": 500}
    capped = w.start_mx(0, behaviour=slow)
    free = w.start_mx(1, behaviour=slow)
    w.start_dns({"mx": [("cap.test", "mx.cap.test", 10),
                        ("free.test", "mx.free.test", 10)],
                 "hosts": [("mx.cap.test", w.host(0)),
                           ("mx.free.test", w.host(1))]})
    pol = tmp_path / "destinations"
    pol.write_text("mx.cap.test concurrency=1\n")
    r = w.relayd(destination_policy_file=str(pol))
    for n in range(4):
        rcpts = ["c%d@cap.test" % n, "f%d@free.test" % n]
        content, mid = make_message("cap %d" % n, to=rcpts[0])
        submit(r, SENDER, rcpts, content)
    capped.wait_messages(4)
    free.wait_messages(4)
    assert "destination mx.cap.test/may: destination_policy_file: " \
        "concurrency 1" in r.log_text()
    assert max(c["concurrent"] for c in capped.connections()) == 1
    # The test of the test: without a line, sessions run in parallel.
    assert max(c["concurrent"] for c in free.connections()) > 1


def test_greylisting_defers_the_recipient_not_the_destination(world):
    w = world(1)
    up = w.start_mx(0, behaviour={"rcpt": {
        "g@grey.test": ["450 4.7.1 <g@grey.test>: Recipient address "
                        "rejected: Greylisted, try again later"]}})
    w.start_dns({"mx": [("grey.test", "mx.grey.test", 10)],
                 "hosts": [("mx.grey.test", w.host(0))]})
    r = w.relayd()
    content, mid = make_message("grey", to="g@grey.test")
    qid = submit(r, SENDER, ["g@grey.test", "h@grey.test"], content)
    sent_line(r, qid, "h@grey.test")
    sent_line(r, qid, "g@grey.test")
    assert statuses(r, qid, "g@grey.test") == ["deferred", "sent"]
    assert statuses(r, qid, "h@grey.test") == ["sent"]
    # Not a throttle: the destination never paused.
    assert "delivery paused" not in r.log_text()
    assert "throttled" not in r.log_text()
    assert len(up.messages()) == 2


def test_gmail_rate_limit_throttles_the_destination(world):
    import json
    w = world(2)
    slow = {"delay_data_reply_ms": 500}
    up = w.start_mx(0, behaviour=dict(slow, mail=[
        "421 4.7.28 Our system has detected an unusual rate of unsolicited "
        "mail originating from your IP address."]))
    free = w.start_mx(1, behaviour=slow)
    w.start_dns({"mx": [("gm.test", "mx.gm.test", 10),
                        ("fr.test", "mx.fr.test", 10)],
                 "hosts": [("mx.gm.test", w.host(0)),
                           ("mx.fr.test", w.host(1))]})
    r = w.relayd()
    content, mid = make_message("gmail", to="g@gm.test")
    qid = submit(r, SENDER, ["g@gm.test"], content)
    wait_log(r, r"destination mx\.gm\.test/may: throttled \(gmail-4\.7\.28\) "
             r"for 5400 s: one session, one transaction every 1 s: 421 4\.7\.28")
    # Then more mail for it, and as much for another destination.
    later = []
    for n in range(4):
        rcpts = ["g%d@gm.test" % n, "f%d@fr.test" % n]
        later.append((submit(r, SENDER, rcpts,
                             make_message("more %d" % n, to=rcpts[0])[0]),
                      rcpts))
    sent_line(r, qid, "g@gm.test")
    for q, rcpts in later:
        for a in rcpts:
            sent_line(r, q, a)
    log = r.log_text()
    i_thr = log.find("throttled (gmail-4.7.28)")
    i_sent = log.find("%s: to=<g@gm.test>, relay=mx.gm.test" % qid)
    assert 0 <= i_thr < i_sent, log[-3000:]
    assert statuses(r, qid, "g@gm.test") == ["deferred", "sent"]
    # Throttled, not paused: the route works, it asked us to slow down.
    assert "destination mx.gm.test/may: delivery paused" not in log
    # Not hammered: after the 421 every session to it ran alone, and
    # each one carried one message at a time (5 messages, 5 or fewer
    # sessions, none beside another).
    conns = sorted(up.connections(), key=lambda c: c["seq"])
    assert conns[0]["replies"][-1].startswith("421 4.7.28"), conns[0]
    assert len(conns) >= 2
    assert all(c["concurrent"] == 1 for c in conns[1:]), conns
    assert sorted(len(m["rcpt_tos"]) for m in up.messages()) == [1] * 5
    # The test of the test: the other destination ran sessions in
    # parallel for the same mail.
    assert max(c["concurrent"] for c in free.connections()) > 1
    # The operator sees it: throttled until when, and why.
    ds = json.loads(r.relayctl("destinations", "--json").stdout
                    .decode())["destinations"]
    (d,) = [x for x in ds if x["name"] == "mx:mx.gm.test/may"]
    assert d["state"] == "throttled" and d["until"] > 0, d
    assert d["reason"].startswith("421 4.7.28"), d
    table = r.relayctl("destinations").stdout.decode()
    assert "  throttled until " in table and "421 4.7.28" in table, table


@pytest.mark.parametrize("hostname,v6_first", [("relay.test", True),
                                               ("other.test", False)])
def test_ip_preference_auto_follows_fcrdns(world, hostname, v6_first):
    w = world(1)
    up = w.start_mx(0)
    # Nothing listens on [::1]:port, so an IPv6-first attempt falls back
    # to IPv4 within the same attempt.
    s6 = socket.socket(socket.AF_INET6)
    try:
        s6.bind(("::1", w.port))
    except OSError:
        pytest.skip("[::1]:%d is taken" % w.port)
    finally:
        s6.close()
    w.start_dns({"mx": [("v6.test", "mx.v6.test", 10)],
                 "hosts": [("relay.test", "::1"),
                           ("mx.v6.test", w.host(0)),
                           ("mx.v6.test", "::1")]})
    r = w.relayd(hostname=hostname, smtp_bind_address6="::1",
                 ip_preference="auto")
    if v6_first:
        wait_log(r, r"ip_preference auto: IPv6 first \(::1 has "
                 r"forward-confirmed reverse DNS relay\.test\)")
    else:
        wait_log(r, r"ip_preference auto: IPv4 first \(::1: its PTR names "
                 r"relay\.test, not hostname other\.test\)")
    content, mid = make_message("v6", to="v@v6.test")
    qid = submit(r, SENDER, ["v@v6.test"], content)
    line = sent_line(r, qid, "v@v6.test")
    assert "relay=mx.v6.test[%s]:%d" % (w.host(0), w.port) in line, line
    assert up.wait_messages(1)[0]["rcpt_tos"] == ["v@v6.test"]
    first = "first mx.v6.test[%s]" % ("::1" if v6_first else w.host(0))
    assert first in r.log_text(), r.log_text()[-3000:]
    if v6_first:
        assert "trying mx.v6.test[%s]" % w.host(0) in r.log_text()


def test_too_many_recipients_continues_in_another_transaction(world):
    w = world(1)
    busy = "452 4.5.3 Too many recipients"
    up = w.start_mx(0, behaviour={"rcpt": {"t2@split.test": [busy],
                                           "t3@split.test": [busy]}})
    w.start_dns({"mx": [("split.test", "mx.split.test", 10)],
                 "hosts": [("mx.split.test", w.host(0))]})
    r = w.relayd()
    rcpts = ["t%d@split.test" % i for i in range(4)]
    content, mid = make_message("split", to=rcpts[0])
    qid = submit(r, SENDER, rcpts, content)
    for rc in rcpts:
        sent_line(r, qid, rc)
    got = up.wait_messages(2)
    assert [sorted(m["rcpt_tos"]) for m in got] == [rcpts[:2], rcpts[2:]]
    # Not deferred: sent in the next transaction, without a backoff.
    for rc in rcpts:
        assert statuses(r, qid, rc) == ["sent"], rc
    assert "to=<t2@split.test>: 452 4.5.3 Too many recipients: in another " \
        "transaction" in r.log_text()


def test_stop_with_a_lookup_in_flight(world, stubs):
    from conftest import wait_until
    w = world(1)
    stub = stubs(_stub_names(w, {"silent.test": {"drop": True}}))
    w.dns = stub
    r = w.relayd()
    content, mid = make_message("silent", to="q@silent.test")
    qid = submit(r, SENDER, ["q@silent.test"], content)
    wait_until(lambda: stub.queries("silent.test", "MX") >= 1, timeout=10,
               what="the MX query")
    # SIGTERM while the query is unanswered: the lookup is cancelled and
    # completes into nothing; relayd exits cleanly (and, under
    # SANITIZE=1, without a leak), the message still queued.
    r.stop()
    assert statuses(r, qid, "q@silent.test") == []
    from conftest_upstream import queue_entry
    assert queue_entry(r, qid) is not None, "the message is still queued"


def test_destination_policy_file_rate(world, tmp_path):
    import json
    from conftest import wait_until
    w = world(1)
    up = w.start_mx(0)
    w.start_dns({"mx": [("rate.test", "mx.rate.test", 10)],
                 "hosts": [("mx.rate.test", w.host(0))]})
    pol = tmp_path / "destinations"
    pol.write_text("rate.test rate=1/hour\n")
    r = w.relayd(destination_policy_file=str(pol))
    q1 = submit(r, SENDER, ["a@rate.test"],
                make_message("rate 1", to="a@rate.test")[0])
    sent_line(r, q1, "a@rate.test")
    q2 = submit(r, SENDER, ["b@rate.test"],
                make_message("rate 2", to="b@rate.test")[0])

    def holding():
        ds = json.loads(r.relayctl("destinations", "--json").stdout
                        .decode())["destinations"]
        d = [x for x in ds if x["name"] == "mx:mx.rate.test/may"]
        return d and d[0]["sent"] == 1 and d[0]["ready"] == 1
    # The destination holds the second message back under its cap.
    wait_until(holding, timeout=20, what="the second job held by the cap")
    assert [m["rcpt_tos"] for m in up.messages()] == [["a@rate.test"]]
    assert statuses(r, q2, "b@rate.test") == []
    assert "destination_policy_file: concurrency 5, rate 0/min 1/hour" \
        in r.log_text()


def test_stats_say_direct(world):
    import json
    w = world(1)
    up = w.start_mx(0)
    w.start_dns({"mx": [("st.test", "mx.st.test", 10)],
                 "hosts": [("mx.st.test", w.host(0))]})
    r = w.relayd()
    qid = submit(r, SENDER, ["s@st.test"],
                 make_message("stats", to="s@st.test")[0])
    sent_line(r, qid, "s@st.test")
    st = json.loads(r.relayctl("stats", "--json").stdout.decode())
    assert st["delivery"] == "direct", st
    assert st["route"]["state"] == "direct", st
    assert st["sent"] == 1, st
    assert up.wait_messages(1)


def test_slow_destination_never_delays_another_of_the_same_message(world):
    """One message, two domains: slow.test's MX holds the reply to the
    final dot until the test lets it go; fast.test's MX greylists its
    recipient once. The greylisted recipient is retried and sent while
    the slow job is still in its session (the message is busy, but that
    recipient is in no job): a destination never delays another, retries
    included. Bounded: the hold ends at the latest after 120 s, and the
    relay's timeouts are longer than the waits here."""
    w = world(2)
    slow = w.start_mx(0, behaviour={"hold_data_reply": True})
    w.start_mx(1, behaviour={"rcpt": {
        "b@fast.test": ["450 4.7.1 <b@fast.test>: Recipient address "
                        "rejected: Greylisted, try again later"]}})
    w.start_dns({"mx": [("slow.test", "mx.slow.test", 10),
                        ("fast.test", "mx.fast.test", 10)],
                 "hosts": [("mx.slow.test", w.host(0)),
                           ("mx.fast.test", w.host(1))]})
    r = w.relayd(delivery_timeout="300s")
    content, mid = make_message("slow and fast", to="a@slow.test")
    qid = submit(r, SENDER, ["a@slow.test", "b@fast.test"], content)
    # The slow MX has the message and holds its reply.
    wait_until(lambda: len(slow.messages()) == 1, timeout=30,
               what="the slow MX to hold the message")
    # Meanwhile the other recipient is deferred, retried, sent.
    sent_line(r, qid, "b@fast.test")
    assert statuses(r, qid, "b@fast.test") == ["deferred", "sent"]
    assert statuses(r, qid, "a@slow.test") == []
    # Still busy with the slow job, the index records the other
    # recipient as sent (a per-recipient change, written now).

    def states():
        shown = json.loads(r.relayctl("show", qid, "--json").stdout.decode())
        return {rc["address"]: rc["state"] for rc in shown["recipients"]}
    wait_until(lambda: states() == {"a@slow.test": "pending",
                                    "b@fast.test": "sent"},
               timeout=30, what="the index to record b@fast.test as sent")
    assert statuses(r, qid, "a@slow.test") == []
    slow.set_behaviour({})
    sent_line(r, qid, "a@slow.test")
    assert statuses(r, qid, "a@slow.test") == ["sent"]
    assert statuses(r, qid, "b@fast.test") == ["deferred", "sent"]
    log = r.log_text()
    i_b = log.find("%s: to=<b@fast.test>, relay=mx.fast.test" % qid)
    i_b_sent = log.find("status=sent", i_b)
    i_a = log.find("%s: to=<a@slow.test>" % qid)
    assert 0 <= i_b < i_a and i_b_sent < i_a, log[-3000:]
    wait_gone(r, qid)
    assert [m["rcpt_tos"] for m in slow.messages()] == [["a@slow.test"]]


def test_internationalized_recipient_domain_is_looked_up_by_its_a_labels(
        world):
    """An SMTPUTF8 recipient at b\u00fccher.test: relayd asks DNS for the
    MX of xn--bcher-kva.test (the only name the zone has) and delivers,
    the address as given; a domain that cannot be a name (a U-label with
    "--" in positions 3-4) bounces 5.1.2 saying why, and only that
    recipient."""
    w = world(1)
    up = w.start_mx(0)
    w.start_dns({"mx": [("xn--bcher-kva.test", "mx.xn--bcher-kva.test", 10)],
                 "hosts": [("mx.xn--bcher-kva.test", w.host(0))]})
    r = w.relayd()
    good = "j\u00fcrgen@B\u00dcCHER.test"
    bad = "x@ab--\u00fc.test"
    content, mid = make_message("idn", to=good,
                                body="Gr\u00fc\u00dfe\r\n".encode())
    qid = submit(r, SENDER, [good, bad], content, mail_options=["SMTPUTF8"])
    line = sent_line(r, qid, good)
    assert "relay=mx.xn--bcher-kva.test[" in line, line
    wait_status(r, qid, bad, "bounced")
    (bl,) = [l for st, l in delivery_lines(r, qid, bad)]
    assert "dsn=5.1.2" in bl and "not a valid domain name" in bl, bl
    (rec,) = [m for m in up.messages() if m["mail_from"] == SENDER]
    assert rec["rcpt_tos"] == [good], rec
    assert "SMTPUTF8" in [o.upper() for o in rec["mail_options"]], rec
    log = r.log_text()
    assert "xn--bcher-kva.test" in log
    # The bounce report went to the sender's domain, which has no MX in
    # this zone: that is its own story; the original is gone.
    wait_gone(r, qid)
