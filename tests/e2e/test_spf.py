"""
tests/e2e/test_spf.py - the SPF evaluator (dns/spf.c) end to end against
real DNS servers on 127.0.0.1: dnsmasq authoritative for `test` with the
records below, and the dnspython stub (tests/e2e/dnsstub.py) for what
dnsmasq cannot serve (SERVFAIL, silence). Each check runs through
tests/dns/spfq (build/spfq), which prints the result as key=value lines.
What was asked is checked in the servers' query logs, never by timing.
"""
import os
import subprocess
import tempfile

import pytest

from conftest import RELAYD
from dnsutil import Dnsmasq, DnsStub

SPFQ = os.path.join(os.path.dirname(RELAYD), "spfq")

HOSTS = ([("host.spf.test", "127.0.0.7"), ("host6.spf.test", "::1"),
          ("mail.spf.test", "127.0.0.8"), ("pt.spf.test", "127.0.0.11"),
          ("127.0.0.9._ip.spf.test", "127.0.0.2"),
          ("bad.strong.lp.spf.test", "127.0.0.2")] +
         [("h%d.spf.test" % i, "127.0.1.%d" % i) for i in range(1, 12)])

TXT = [
    ("ip4.spf.test", ["v=spf1 ip4:127.0.0.0/24 -all"]),
    ("ip6.spf.test", ["v=spf1 ip6:::1 -all"]),
    ("a.spf.test", ["v=spf1 a:host.spf.test a:host6.spf.test -all"]),
    ("mx.spf.test", ["v=spf1 mx ~all"]),
    ("inc.spf.test", ["v=spf1 include:ip4.spf.test ~all"]),
    ("red.spf.test", ["v=spf1 ip4:127.0.5.5 redirect=ip4.spf.test"]),
    ("neu.spf.test", ["v=spf1 ip4:127.0.9.9 ?all"]),
    ("nomatch.spf.test", ["v=spf1 ip4:127.0.9.9"]),
    # Two SPF records (and an unrelated TXT, which does not count).
    ("two.spf.test", ["v=spf1 -all"]),
    ("two.spf.test", ["v=spf1 ip4:127.0.0.0/8 ~all"]),
    ("two.spf.test", ["site-verification=abc"]),
    ("one.spf.test", ["site-verification=abc"]),
    ("one.spf.test", ["v=spf1 ip4:127.0.0.5", " -all"]),   # two strings
    ("many.spf.test", ["v=spf1 " + " ".join("a:h%d.spf.test" % i
                                            for i in range(1, 12)) +
                       " ip4:127.0.0.5 -all"]),
    ("ten.spf.test", ["v=spf1 " + " ".join("a:h%d.spf.test" % i
                                           for i in range(1, 11)) +
                      " ip4:127.0.0.5 -all"]),
    ("void.spf.test", ["v=spf1 a:nx1.spf.test a:nx2.spf.test "
                       "a:nx3.spf.test ip4:127.0.0.5 -all"]),
    ("void2.spf.test", ["v=spf1 a:nx1.spf.test a:nx2.spf.test "
                        "ip4:127.0.0.5 -all"]),
    ("loop1.spf.test", ["v=spf1 include:loop2.spf.test -all"]),
    ("loop2.spf.test", ["v=spf1 ip4:127.0.9.9 include:loop1.spf.test ~all"]),
    ("mac.spf.test", ["v=spf1 exists:%{i}._ip.%{d2} -all"]),
    ("lp.spf.test", ["v=spf1 exists:%{lr-}.lp.%{d2} -all"]),
    ("ptr.spf.test", ["v=spf1 ptr:spf.test -all"]),
    ("syntax.spf.test", ["v=spf1 ip4:127.0.0.5 ip4:127.0.0.300 -all"]),
    ("incnone.spf.test", ["v=spf1 include:host.spf.test -all"]),
    ("tmp.spf.test", ["v=spf1 include:servfail.test -all"]),
    ("mx11.spf.test", ["v=spf1 mx ip4:127.0.0.5 -all"]),
]

ZONE = {"hosts": HOSTS, "txt": TXT,
        "mx": [("mx.spf.test", "mail.spf.test", 10)] +
              [("mx11.spf.test", "m%d.spf.test" % i, i) for i in range(1, 12)]}


def spfq(servers, ip, domain, sender=None, helo=None, opts=()):
    args = [SPFQ, "--server", servers, *opts, ip, domain]
    if sender is not None:
        args.append(sender)
    if helo is not None:
        args.append(helo)
    p = subprocess.run(args, capture_output=True, timeout=60)
    err = p.stderr.decode("utf-8", "replace")
    assert "Sanitizer" not in err and "runtime error" not in err, err
    assert p.returncode == 0, err
    out = p.stdout.decode()
    if "--cancel" in opts:
        return out
    res = dict(line.split("=", 1) for line in out.splitlines())
    res["lookups"] = int(res["lookups"])
    res["void"] = int(res["void"])
    return res


@pytest.fixture(scope="module")
def zone():
    d = tempfile.mkdtemp(prefix="relayd-spf-")
    with Dnsmasq(d, ZONE) as z:
        yield z
    subprocess.run(["rm", "-rf", d], check=False)


def test_pass_ip4_and_fail_all(zone):
    r = spfq(zone.servers, "127.0.0.5", "ip4.spf.test", "a@ip4.spf.test")
    assert (r["verdict"], r["mechanism"], r["lookups"]) == \
        ("pass", "ip4:127.0.0.0/24", 0)
    assert r["record"] == "v=spf1 ip4:127.0.0.0/24 -all"
    r = spfq(zone.servers, "127.0.1.5", "ip4.spf.test", "a@ip4.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("fail", "-all")


def test_pass_ip6(zone):
    r = spfq(zone.servers, "::1", "ip6.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("pass", "ip6:::1")
    r = spfq(zone.servers, "127.0.0.1", "ip6.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("fail", "-all")


def test_pass_a_v4_and_v6(zone):
    a0 = zone.queries("host.spf.test", "A")
    r = spfq(zone.servers, "127.0.0.7", "a.spf.test")
    assert (r["verdict"], r["mechanism"], r["lookups"]) == \
        ("pass", "a:host.spf.test", 1)
    assert zone.queries("host.spf.test", "A") == a0 + 1
    # IPv6: host.spf.test has no AAAA (a void lookup), host6 has ::1.
    aaaa0 = zone.queries("host.spf.test", "AAAA")
    h0 = zone.queries("host6.spf.test", "AAAA")
    r = spfq(zone.servers, "::1", "a.spf.test")
    assert (r["verdict"], r["mechanism"], r["lookups"], r["void"]) == \
        ("pass", "a:host6.spf.test", 2, 1)
    assert zone.queries("host.spf.test", "AAAA") == aaaa0 + 1
    assert zone.queries("host6.spf.test", "AAAA") == h0 + 1


def test_pass_mx_and_softfail(zone):
    m0 = zone.queries("mx.spf.test", "MX")
    a0 = zone.queries("mail.spf.test", "A")
    r = spfq(zone.servers, "127.0.0.8", "mx.spf.test")
    assert (r["verdict"], r["mechanism"], r["lookups"]) == ("pass", "mx", 1)
    assert zone.queries("mx.spf.test", "MX") == m0 + 1
    assert zone.queries("mail.spf.test", "A") == a0 + 1
    r = spfq(zone.servers, "127.0.0.9", "mx.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("softfail", "~all")


def test_include_pass_and_its_fail_is_no_match(zone):
    r = spfq(zone.servers, "127.0.0.5", "inc.spf.test")
    assert (r["verdict"], r["mechanism"], r["path"], r["lookups"]) == \
        ("pass", "include:ip4.spf.test",
         "include:ip4.spf.test > ip4:127.0.0.0/24", 1)
    # The included record says -all: no match, then this record's ~all.
    r = spfq(zone.servers, "127.0.1.5", "inc.spf.test")
    assert (r["verdict"], r["mechanism"], r["path"]) == \
        ("softfail", "~all", "~all")


def test_redirect(zone):
    r = spfq(zone.servers, "127.0.0.5", "red.spf.test")
    assert (r["verdict"], r["mechanism"], r["path"], r["lookups"]) == \
        ("pass", "redirect=ip4.spf.test",
         "redirect=ip4.spf.test > ip4:127.0.0.0/24", 1)
    # The record is the top one's, not the redirect target's.
    assert r["record"] == "v=spf1 ip4:127.0.5.5 redirect=ip4.spf.test"
    r = spfq(zone.servers, "127.0.3.3", "red.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("fail", "redirect=ip4.spf.test")


def test_neutral(zone):
    r = spfq(zone.servers, "127.0.0.5", "neu.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("neutral", "?all")
    r = spfq(zone.servers, "127.0.0.5", "nomatch.spf.test")
    assert (r["verdict"], r["mechanism"], r["path"]) == ("neutral", "", "")


def test_two_records_permerror_and_strings_joined(zone):
    r = spfq(zone.servers, "127.0.0.5", "two.spf.test")
    assert r["verdict"] == "permerror"
    assert r["why"] == "two SPF records at two.spf.test"
    # One SPF record beside another TXT, its strings joined as they are.
    r = spfq(zone.servers, "127.0.0.6", "one.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("fail", "-all")
    assert r["record"] == "v=spf1 ip4:127.0.0.5 -all"


def test_eleven_lookups_permerror(zone):
    h10 = zone.queries("h10.spf.test", "A")
    r = spfq(zone.servers, "127.0.0.5", "many.spf.test")
    assert r["verdict"] == "permerror"
    assert r["lookups"] == 10
    assert r["why"].startswith("more than 10 DNS lookups (a:h1.spf.test, ")
    assert r["why"].endswith("a:h10.spf.test, then a:h11.spf.test)")
    # The 11th term was never asked about; the 10th was.
    assert zone.queries("h10.spf.test", "A") == h10 + 1
    assert zone.queries("h11.spf.test", "A") == 0
    r = spfq(zone.servers, "127.0.0.5", "ten.spf.test")
    assert (r["verdict"], r["lookups"], r["mechanism"]) == \
        ("pass", 10, "ip4:127.0.0.5")


def test_three_void_lookups_permerror(zone):
    r = spfq(zone.servers, "127.0.0.5", "void.spf.test")
    assert (r["verdict"], r["void"]) == ("permerror", 3)
    assert r["why"] == ("more than 2 void lookups at a:nx3.spf.test "
                        "(in void.spf.test)")
    r = spfq(zone.servers, "127.0.0.5", "void2.spf.test")
    assert (r["verdict"], r["void"], r["mechanism"]) == \
        ("pass", 2, "ip4:127.0.0.5")


def test_include_loop(zone):
    r = spfq(zone.servers, "127.0.0.5", "loop1.spf.test")
    assert r["verdict"] == "permerror"
    assert r["why"] == ("include loop at include:loop1.spf.test "
                        "(loop1.spf.test > loop2.spf.test > loop1.spf.test)")
    assert r["lookups"] == 2


def test_macros_in_exists(zone):
    r = spfq(zone.servers, "127.0.0.9", "mac.spf.test")
    assert (r["verdict"], r["mechanism"]) == \
        ("pass", "exists:%{i}._ip.%{d2}")
    assert zone.queries("127.0.0.9._ip.spf.test", "A") == 1
    r = spfq(zone.servers, "127.0.0.10", "mac.spf.test")
    assert (r["verdict"], r["void"]) == ("fail", 1)
    assert zone.queries("127.0.0.10._ip.spf.test", "A") == 1
    # %{lr-}: the local-part's parts reversed.
    r = spfq(zone.servers, "127.0.0.1", "lp.spf.test",
             "strong-bad@lp.spf.test")
    assert r["verdict"] == "pass"
    r = spfq(zone.servers, "127.0.0.1", "lp.spf.test", "", "lp.spf.test")
    assert r["verdict"] == "fail"     # postmaster.lp.spf.test: none
    assert zone.queries("postmaster.lp.spf.test", "A") == 1


def test_ptr_validated(zone):
    p0 = zone.queries("pt.spf.test", "A")
    r = spfq(zone.servers, "127.0.0.11", "ptr.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("pass", "ptr:spf.test")
    assert zone.queries("pt.spf.test", "A") == p0 + 1
    # IPv6: ::1's PTR names host6.spf.test, whose AAAA is ::1.
    before = zone.queries("host6.spf.test", "AAAA")
    r = spfq(zone.servers, "::1", "ptr.spf.test")
    assert (r["verdict"], r["mechanism"]) == ("pass", "ptr:spf.test")
    assert zone.queries("host6.spf.test", "AAAA") == before + 1
    # 127.0.0.12 has no PTR: a void lookup, no match.
    r = spfq(zone.servers, "127.0.0.12", "ptr.spf.test")
    assert (r["verdict"], r["void"]) == ("fail", 1)


def test_none(zone):
    r = spfq(zone.servers, "127.0.0.5", "host.spf.test")
    assert (r["verdict"], r["why"], r["record"]) == \
        ("none", "no SPF record at host.spf.test", "")
    r = spfq(zone.servers, "127.0.0.5", "nx.spf.test")
    assert (r["verdict"], r["why"]) == ("none", "no SPF record at nx.spf.test")


def test_syntax_error_and_include_without_record(zone):
    r = spfq(zone.servers, "127.0.0.5", "syntax.spf.test")
    assert r["verdict"] == "permerror"
    assert r["why"] == ("syntax error at syntax.spf.test: bad address in "
                        "'ip4:127.0.0.300'")
    r = spfq(zone.servers, "127.0.0.5", "incnone.spf.test")
    assert r["verdict"] == "permerror"
    assert r["why"] == ("include:host.spf.test: no SPF record at "
                        "host.spf.test")


STUB = {
    "x.test": {"records": ['x.test. 300 IN TXT "v=spf1 include:sf.test -all"']},
    "sf.test": {"rcode": "SERVFAIL"},
    "slow.test": {"records": ['slow.test. 300 IN TXT '
                              '"v=spf1 a:silent.test -all"']},
    "silent.test": {"drop": True},
}


@pytest.fixture
def stub():
    d = tempfile.mkdtemp(prefix="relayd-spfstub-")
    with DnsStub(d, STUB) as s:
        yield s
    subprocess.run(["rm", "-rf", d], check=False)


def test_servfail_is_temperror(stub):
    r = spfq(stub.servers, "127.0.0.5", "x.test")
    assert r["verdict"] == "temperror"
    assert r["why"] == "DNS tempfail for TXT sf.test"


def test_deadline_ends_the_check(stub):
    # The server never answers for silent.test: our deadline (500 ms)
    # ends the check before dns/'s own (15 s) would.
    r = spfq(stub.servers, "127.0.0.5", "slow.test",
             opts=("--deadline", "500"))
    assert (r["verdict"], r["why"]) == ("temperror",
                                        "no result within 500 ms")


def test_cancel(zone):
    out = spfq(zone.servers, "127.0.0.5", "ip4.spf.test",
               opts=("--cancel",))
    assert out == "cancelled\n"


def test_more_than_ten_mx_permerror(zone):
    r = spfq(zone.servers, "127.0.0.5", "mx11.spf.test")
    assert r["verdict"] == "permerror"
    assert r["why"] == "more than 10 MX records for mx at mx11.spf.test"
    # Refused before any MX host was looked up.
    assert sum(zone.queries("m%d.spf.test" % i, "A")
               for i in range(1, 12)) == 0
