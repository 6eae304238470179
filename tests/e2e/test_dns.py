"""
tests/e2e/test_dns.py - dns/ against real DNS servers on 127.0.0.1:
dnsmasq as the authoritative server for `test`, and the dnspython stub
(tests/e2e/dnsstub.py) for SERVFAIL, silence, truncation and null MX.
Queries run through tests/dns/dnsq (build/dnsq), which prints each
result and the resolver's counters; caching is asserted through the
servers' query logs, never through timing.
"""
import os
import subprocess
import tempfile

import pytest

from conftest import RELAYD, SANITIZE
from dnsutil import Dnsmasq, DnsStub

DNSQ = os.path.join(os.path.dirname(RELAYD), "dnsq")

ZONE = {
    "mx": [("example.test", "mx1.example.test", 10),
           ("example.test", "mx2.example.test", 20)],
    "hosts": [("mx1.example.test", "127.0.0.2"),
              ("mx2.example.test", "127.0.0.3"),
              ("v6.test", "::1")],
    "txt": [("example.test", ["v=spf1 ip4:127.0.0.2 -all", "second part"])],
    "cname": [("alias.test", "mx1.example.test")],
}


def dnsq(servers, *items, opts=()):
    p = subprocess.run([DNSQ, "-s", servers, *opts, *items],
                       capture_output=True, timeout=60)
    err = p.stderr.decode("utf-8", "replace")
    assert "Sanitizer" not in err and "runtime error" not in err, err
    assert p.returncode == 0, err
    out = p.stdout.decode()
    assert "ERROR" not in out, out
    lines = out.splitlines()
    assert lines[-1].startswith("stats "), out
    stats = dict(kv.split("=") for kv in lines[-1].split()[1:])
    return lines[:-1], {k: int(v) for k, v in stats.items()}


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="relayd-dns-")
    yield d
    subprocess.run(["rm", "-rf", d], check=False)


@pytest.fixture
def zone(workdir):
    with Dnsmasq(workdir, ZONE) as z:
        yield z


def test_dnsmasq_user_as_root_and_not(workdir):
    """--user=nobody: as root dnsmasq drops to nobody; started as another
    account it keeps running as that account. Both answer."""
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chmod(workdir, 0o711)
    for as_user in ([None, "nobody"] if os.geteuid() == 0 else [None]):
        sub = os.path.join(workdir, "as-%s" % (as_user or "self"))
        os.mkdir(sub)
        os.chmod(sub, 0o777)
        with Dnsmasq(sub, ZONE, as_user=as_user) as z:
            assert z.uid() == (nobody if os.geteuid() == 0 else os.geteuid())
            lines, _ = dnsq(z.servers, "A:mx1.example.test")
            assert lines == ["A mx1.example.test ok ttl=300",
                             "  A 127.0.0.2"]


def test_mx_records_and_preferences(zone):
    lines, st = dnsq(zone.servers, "MX:example.test")
    assert lines[0] == "MX example.test ok ttl=300"
    assert sorted(lines[1:]) == ["  MX 10 mx1.example.test",
                                 "  MX 20 mx2.example.test"]
    assert st["sent"] == 1 and st["tempfails"] == 0


def test_a_aaaa_ptr_txt(zone):
    lines, _ = dnsq(zone.servers, "A:mx1.example.test", "AAAA:v6.test",
                    "A:v6.test", "PTR:127.0.0.3", "PTR:::1",
                    "TXT:example.test")
    assert lines == [
        "A mx1.example.test ok ttl=300", "  A 127.0.0.2",
        "AAAA v6.test ok ttl=300", "  AAAA ::1",
        "A v6.test nodata ttl=300",
        "PTR 3.0.0.127.in-addr.arpa ok ttl=300", "  PTR mx2.example.test",
        "PTR 1." + "0." * 31 + "ip6.arpa ok ttl=300", "  PTR v6.test",
        "TXT example.test ok ttl=300",
        '  TXT "v=spf1 ip4:127.0.0.2 -allsecond part"',
    ]


def test_nxdomain_nodata_and_negative_cache(zone):
    lines, st = dnsq(zone.servers, "MX:nx.test", "MX:mx1.example.test",
                     "MX:nx.test", "MX:mx1.example.test")
    # Permanent NXDOMAIN and NODATA, each with the SOA's negative TTL.
    assert lines == ["MX nx.test nxdomain ttl=300",
                     "MX mx1.example.test nodata ttl=300",
                     "MX nx.test nxdomain ttl=300",
                     "MX mx1.example.test nodata ttl=300"]
    # The second of each came from the cache: the server was asked once.
    assert zone.queries("nx.test", "MX") == 1
    assert zone.queries("mx1.example.test", "MX") == 1
    assert st["neg_hits"] == 2 and st["hits"] == 2 and st["sent"] == 2


def test_dnsmasq_negative_answers_carry_its_soa(workdir):
    # With --auth-zone dnsmasq answers NODATA/NXDOMAIN with the zone's
    # SOA (MINIMUM = --auth-ttl): 120 here, not the 300 s used without
    # an SOA.
    with Dnsmasq(workdir, ZONE, auth_ttl=120) as z:
        lines, _ = dnsq(z.servers, "MX:mx1.example.test", "MX:nx.test",
                        "A:mx1.example.test")
        assert lines == ["MX mx1.example.test nodata ttl=120",
                         "MX nx.test nxdomain ttl=120",
                         "A mx1.example.test ok ttl=120", "  A 127.0.0.2"]


def test_positive_cache_and_coalescing(zone):
    lines, st = dnsq(zone.servers, "A:mx2.example.test", "A:MX2.example.test.")
    assert lines[0] == lines[2] == "A mx2.example.test ok ttl=300"
    assert zone.queries("mx2.example.test", "A") == 1
    assert st["hits"] == 1 and st["neg_hits"] == 0
    # Three identical queries at once: one goes out.
    lines, st = dnsq(zone.servers, "MX:example.test", "MX:example.test",
                     "MX:example.test", opts=("-p",))
    assert [l for l in lines if not l.startswith("  ")] == \
        ["MX example.test ok ttl=300"] * 3
    assert st["sent"] == 1 and st["coalesced"] == 2
    assert zone.queries("example.test", "MX") == 1


def test_cname(zone):
    lines, _ = dnsq(zone.servers, "A:alias.test")
    assert lines == ["A alias.test ok ttl=300", "  canon mx1.example.test",
                     "  A 127.0.0.2"]


def test_refused_outside_zone_is_temporary(zone):
    lines, st = dnsq(zone.servers, "A:elsewhere.example", "A:elsewhere.example")
    assert lines == ["A elsewhere.example tempfail ttl=0"] * 2
    # Never cached: asked again the second time.
    assert st["hits"] == 0 and st["sent"] == 2


def test_cancel_and_bad_names(zone):
    lines, st = dnsq(zone.servers, "cancel:MX:example.test", "MX:bad name.test",
                     "MX:a..test", "A:mx1.example.test")
    assert lines == ["cancelled",
                     "MX bad name.test badname (refused)",
                     "MX a..test badname (refused)",
                     "A mx1.example.test ok ttl=300", "  A 127.0.0.2"]


def test_cancel_coalesced_and_cached(zone):
    # A cancelled request that joined one in flight: the other still
    # gets its answer, one query goes out.
    lines, st = dnsq(zone.servers, "MX:example.test", "cancel:MX:example.test",
                     opts=("-p",))
    assert [l for l in lines if not l.startswith("  ")] == \
        ["MX example.test ok ttl=300", "cancelled"]
    assert st["sent"] == 1 and st["coalesced"] == 1
    # A cancelled cache hit is never delivered either.
    lines, st = dnsq(zone.servers, "A:mx1.example.test",
                     "cancel:A:mx1.example.test", "A:mx1.example.test")
    assert lines == ["A mx1.example.test ok ttl=300", "  A 127.0.0.2",
                     "cancelled",
                     "A mx1.example.test ok ttl=300", "  A 127.0.0.2"]
    assert st["hits"] == 2 and st["sent"] == 1


def test_reload_keeps_working(zone):
    lines, st = dnsq(zone.servers, "A:mx1.example.test", "reload",
                     "A:mx2.example.test", "A:mx1.example.test")
    assert lines == ["A mx1.example.test ok ttl=300", "  A 127.0.0.2",
                     "reloaded",
                     "A mx2.example.test ok ttl=300", "  A 127.0.0.3",
                     "A mx1.example.test ok ttl=300", "  A 127.0.0.2"]
    assert zone.queries("mx2.example.test", "A") == 1


def test_reload_with_queries_in_flight(zone):
    # -p: the first query is on the wire when the channel is replaced;
    # it is asked again on the new one and answered, nothing lost.
    lines, st = dnsq(zone.servers, "A:mx1.example.test", "reload",
                     "A:mx2.example.test", opts=("-p",))
    assert lines == ["A mx1.example.test ok ttl=300", "  A 127.0.0.2",
                     "reloaded",
                     "A mx2.example.test ok ttl=300", "  A 127.0.0.3"]
    assert st["sent"] == 3 and st["tempfails"] == 0
    assert zone.queries("mx2.example.test", "A") == 1


SOA = "test. 60 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30"

STUB = {
    "servfail.test": {"rcode": "SERVFAIL"},
    "silent.test": {"drop": True},
    "trunc.test": {"tc": True,
                   "records": ["trunc.test. 300 IN MX 10 mx1.example.test."]},
    "nullmx.test": {"records": ["nullmx.test. 3600 IN MX 0 ."]},
    "nodata.test": {"authority": [SOA]},
    "gone.test": {"rcode": "NXDOMAIN", "authority": [SOA]},
    "many.test": {"records": ["many.test. 300 IN A 127.0.1.%d" % i
                              for i in range(1, 66)]},
    "c0.test": {"records": ["c0.test. 300 IN CNAME c1.test.",
                            "c1.test. 120 IN CNAME c2.test.",
                            "c2.test. 300 IN A 127.0.0.7"]},
    "loop.test": {"records": ["loop.test. 300 IN CNAME loop2.test.",
                              "loop2.test. 300 IN CNAME loop.test."]},
    "long.test": {"records": ["long.test. 300 IN CNAME l1.test."] +
                  ["l%d.test. 300 IN CNAME l%d.test." % (i, i + 1)
                   for i in range(1, 9)] + ["l9.test. 300 IN A 127.0.0.9"]},
}


@pytest.fixture
def stub(workdir):
    with DnsStub(workdir, STUB) as s:
        yield s


def test_servfail_is_temporary_and_not_cached(stub):
    lines, st = dnsq(stub.servers, "MX:servfail.test", "MX:servfail.test")
    assert lines == ["MX servfail.test tempfail ttl=0"] * 2
    assert st["hits"] == 0 and st["tempfails"] == 2
    assert stub.queries("servfail.test", "MX") >= 2


def test_timeout_is_temporary_and_bounded(stub):
    # 2 tries of 200 ms on one server: the stub is asked exactly twice.
    lines, st = dnsq(stub.servers, "MX:silent.test",
                     opts=("-t", "200", "-T", "2"))
    assert lines == ["MX silent.test tempfail ttl=0"]
    assert st["timeouts"] == 1
    assert stub.queries("silent.test", "MX") == 2


def test_our_deadline_ends_a_query(stub):
    # c-ares would try for 10 x 2 s; our 300 ms deadline fails it first.
    lines, st = dnsq(stub.servers, "MX:silent.test",
                     opts=("-t", "2000", "-T", "10", "-d", "300"))
    assert lines == ["MX silent.test tempfail ttl=0"]
    assert st["timeouts"] == 1
    assert stub.queries("silent.test", "MX") == 1


def test_truncated_without_tcp_is_temporary(stub):
    lines, _ = dnsq(stub.servers, "MX:trunc.test")
    assert lines == ["MX trunc.test tempfail ttl=0"]
    assert stub.queries("trunc.test", "MX", "udp") >= 1
    assert stub.queries("trunc.test", "MX", "tcp") == 0


def test_truncated_then_tcp(workdir):
    with DnsStub(workdir, STUB, tcp=True) as s:
        lines, _ = dnsq(s.servers, "MX:trunc.test")
        assert lines == ["MX trunc.test ok ttl=300",
                         "  MX 10 mx1.example.test"]
        assert s.queries("trunc.test", "MX", "udp") == 1
        assert s.queries("trunc.test", "MX", "tcp") == 1
        # 65 records (over TCP, too big for UDP): refused, temporary.
        lines, _ = dnsq(s.servers, "A:many.test")
        assert lines == ["A many.test tempfail ttl=0"]
        assert s.queries("many.test", "A", "tcp") == 1


def test_null_mx(stub):
    lines, _ = dnsq(stub.servers, "MX:nullmx.test")
    assert lines == ["MX nullmx.test ok ttl=3600", "  nullmx", "  MX 0 "]


def test_negative_ttl_from_soa(stub):
    lines, st = dnsq(stub.servers, "MX:nodata.test", "MX:gone.test",
                     "MX:gone.test")
    # RFC 2308: min(SOA TTL 60, MINIMUM 30).
    assert lines == ["MX nodata.test nodata ttl=30",
                     "MX gone.test nxdomain ttl=30",
                     "MX gone.test nxdomain ttl=30"]
    assert stub.queries("gone.test", "MX") == 1
    assert st["neg_hits"] == 1


def test_cname_chains(stub):
    lines, _ = dnsq(stub.servers, "A:c0.test", "A:loop.test", "A:long.test")
    assert lines == ["A c0.test ok ttl=120", "  canon c2.test",
                     "  A 127.0.0.7",
                     "A loop.test tempfail ttl=0",
                     "A long.test tempfail ttl=0"]


# ---- relayd: dns_servers, SIGHUP -------------------------------------------

def test_relayd_checks_dns_servers(relayd_factory):
    r = relayd_factory(start=False, dns_servers="ns.example.test:53")
    res = subprocess.run([RELAYD, "-t", "-c", r.conf_path], capture_output=True,
                         timeout=10, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "dns_servers" in err and "'ns.example.test:53'" in err, err


def test_relayd_reloads_resolver_on_sighup(relayd_factory, zone, workdir):
    import signal
    from conftest import wait_until
    r = relayd_factory(dns_servers=zone.servers)
    marker = "dns: resolver reloaded (servers: %s)" % zone.servers
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: marker in r.log_text(), timeout=10,
               what="relayd to log %r" % marker)
    # The file now names two servers: the next HUP uses them.
    with DnsStub(workdir, STUB) as s:
        both = "%s, %s" % (s.servers, zone.servers)
        r.conf["dns_servers"] = both
        r.write_conf()
        marker = "dns: resolver reloaded (servers: %s)" % both
        r.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: marker in r.log_text(), timeout=10,
                   what="relayd to log %r" % marker)
    # Back to resolv.conf when the key goes away.
    del r.conf["dns_servers"]
    r.write_conf()
    marker = "dns: resolver reloaded (servers: /etc/resolv.conf)"
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: marker in r.log_text(), timeout=10,
               what="relayd to log %r" % marker)
    r.stop()
    assert "dns: queries=0, sent=0" in r.log_text()


def test_ipv6_server_and_failover(workdir):
    # dns_servers in brackets; a dead first server (REFUSED for every
    # name) is passed over for the next one.
    names = {"v6only.test": {"records": ["v6only.test. 300 IN A 127.0.0.8"]}}
    d6 = os.path.join(workdir, "v6")
    d4 = os.path.join(workdir, "v4")
    os.mkdir(d6)
    os.mkdir(d4)
    with DnsStub(d6, names, addr="::1") as s6, DnsStub(d4, {}) as s4:
        assert s6.servers.startswith("[::1]:")
        lines, _ = dnsq(s6.servers, "A:v6only.test")
        assert lines == ["A v6only.test ok ttl=300", "  A 127.0.0.8"]
        lines, st = dnsq("%s, %s" % (s4.servers, s6.servers), "A:v6only.test")
        assert lines == ["A v6only.test ok ttl=300", "  A 127.0.0.8"]
        assert s4.queries("v6only.test", "A") == 1
        assert s6.queries("v6only.test", "A") == 2
