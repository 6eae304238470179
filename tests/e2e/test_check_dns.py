"""
tests/e2e/test_check_dns.py - relayctl check-dns against real DNS servers
on 127.0.0.1: dnsmasq authoritative for the zone `test` (and the reverse
zones of 127.0.0.0/8 and ::1), and, where dnsmasq cannot answer (a PTR
with no matching A), the dnspython stub listed first in dns_servers: it
REFUSES every other name, so c-ares asks dnsmasq next. The port 25 probe
goes to an aiosmtpd (tests/e2e/upstream_server.py) on its own 127.0.x.y
address, started and stopped by PID. DKIM keys are made by the openssl
CLI and published by the test. Egress addresses are given with --ip
(loopback: each is reported as a private address, a WARN).

A good zone has no FAIL (exit 0); each broken variant yields its FAIL
(exit 1) or WARN item; --json output is parsed for every check.
"""
import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import RELAYCTL, SANITIZE
from dnsutil import Dnsmasq, DnsStub
from upstream import Upstream

DOMAIN = "example.test"
HOST = "mail.example.test"
EGRESS = "127.0.0.2"


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="relayd-checkdns-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def make_key(workdir, name, alg="ed25519"):
    """A private key file (0600) and the p= value of its public key."""
    path = os.path.join(workdir, name + ".pem")
    if alg == "ed25519":
        openssl("genpkey", "-algorithm", "ed25519", "-out", path, cwd=workdir)
    else:
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt",
                "rsa_keygen_bits:%d" % alg, "-out", path, cwd=workdir)
    os.chmod(path, 0o600)
    der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout",
                          "-outform", "DER"], check=True,
                         capture_output=True, timeout=60).stdout
    # RFC 8463 §4.2: Ed25519's p= is the raw 32-byte key; RSA's the DER
    # SubjectPublicKeyInfo (RFC 6376 §3.6.1).
    raw = der[-32:] if alg == "ed25519" else der
    return path, base64.b64encode(raw).decode()


def split255(s):
    return [s[i:i + 255] for i in range(0, len(s), 255)]


def dkim_txt(p, k="ed25519"):
    return split255("v=DKIM1; k=%s; p=%s" % (k, p))


def good_zone(p):
    return {
        "mx": [(DOMAIN, HOST, 10)],
        "hosts": [(HOST, EGRESS)],
        "txt": [
            (DOMAIN, ["v=spf1 ip4:%s -all" % EGRESS]),
            (HOST, ["v=spf1 a -all"]),
            ("sel1._domainkey." + DOMAIN, dkim_txt(p)),
            ("_dmarc." + DOMAIN, ["v=DMARC1; p=reject; "
                                  "rua=mailto:dmarc@example.test"]),
            ("_mta-sts." + DOMAIN, ["v=STSv1; id=20260101"]),
            ("_smtp._tls." + DOMAIN, ["v=TLSRPTv1; "
                                      "rua=mailto:tls@example.test"]),
        ],
    }


def without_txt(zone, name):
    z = dict(zone)
    z["txt"] = [t for t in zone["txt"] if t[0] != name]
    return z


def with_txt(zone, name, strings):
    z = without_txt(zone, name)
    if strings:
        z["txt"] = z["txt"] + [(name, strings)]
    return z


def write_conf(workdir, servers, keys=(), **extra):
    conf = {
        "hostname": HOST,
        "spool_dir": os.path.join(workdir, "spool"),
        "delivery": "direct",
        "dns_servers": servers,
        "dnsbl_zones": "bl.test",
    }
    conf.update(extra)
    path = os.path.join(workdir, "relayd.conf")
    with open(path, "w") as f:
        for k, v in conf.items():
            f.write("%s = %s\n" % (k, v))
        for domain, sel, key in keys:
            f.write("dkim_key = %s %s %s\n" % (domain, sel, key))
    return path


def check_dns(conf, *args, domain=DOMAIN):
    env = dict(os.environ)
    if SANITIZE:
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.pop("RELAYD_CONFIG", None)
    p = subprocess.run([RELAYCTL, "-c", conf, "check-dns", domain, "--json",
                        *args], capture_output=True, timeout=120, env=env)
    err = p.stderr.decode("utf-8", "replace")
    assert "Sanitizer" not in err and "runtime error" not in err, err
    assert p.returncode in (0, 1), (p.returncode, err)
    out = json.loads(p.stdout.decode())
    fails = [i for i in out["items"] if i["status"] == "FAIL"]
    assert out["fail"] == len(fails)
    assert p.returncode == (1 if fails else 0), (p.returncode, fails)
    for i in out["items"]:
        assert set(i) == {"name", "subject", "status", "detail", "fix"}, i
        assert i["status"] in ("OK", "INFO", "WARN", "FAIL"), i
        assert i["detail"], i
        # A problem always says what to do.
        if i["status"] in ("WARN", "FAIL"):
            assert i["fix"], i
    return p.returncode, out


def items(out, name, subject=None):
    return [i for i in out["items"] if i["name"] == name and
            (subject is None or i["subject"] == subject)]


def one(out, name, subject=None):
    got = items(out, name, subject)
    assert len(got) == 1, (name, subject, out["items"])
    return got[0]


@pytest.fixture
def mx(workdir):
    """An aiosmtpd that greets with 220, as a port 25 would."""
    d = os.path.join(workdir, "mx")
    os.mkdir(d)
    u = Upstream(d, None, tls="none").start()
    yield u
    u.stop()


@pytest.fixture
def key(workdir):
    return make_key(workdir, "sel1")


def run_zone(workdir, zone, mx, keys, *args, stub=None, domain=DOMAIN,
             **conf):
    with Dnsmasq(workdir, zone) as z:
        servers = z.servers
        if stub is not None:
            s = DnsStub(workdir, stub).start()
            servers = s.servers + ", " + z.servers
        try:
            path = write_conf(workdir, servers, keys, **conf)
            return check_dns(path, "--probe", mx.smarthost, *args,
                             domain=domain)
        finally:
            if stub is not None:
                s.stop()


def test_good_zone(workdir, mx, key):
    path, p = key
    rc, out = run_zone(workdir, good_zone(p), mx,
                       [(DOMAIN, "sel1", path)], "--ip", EGRESS)
    assert rc == 0, out
    assert out["domain"] == DOMAIN and out["hostname"] == HOST
    assert out["addresses"] == [EGRESS]
    for name in ("ptr", "fcrdns", "ptr-hostname"):
        assert one(out, name, EGRESS)["status"] == "OK"
    assert HOST in one(out, "ptr", EGRESS)["detail"]
    assert one(out, "spf-record", DOMAIN)["status"] == "OK"
    assert one(out, "spf-record", HOST)["status"] == "OK"
    d = one(out, "dkim", "sel1._domainkey." + DOMAIN)
    assert d["status"] == "OK" and "ed25519" in d["detail"], d
    d = one(out, "dmarc", DOMAIN)
    assert d["status"] == "OK" and "policy reject" in d["detail"], d
    assert "organizational domain example.test" in d["detail"]
    assert one(out, "dmarc-alignment", DOMAIN)["status"] == "OK"
    assert one(out, "mx", DOMAIN)["status"] == "OK"
    d = one(out, "port25")
    assert d["status"] == "OK" and "220" in d["detail"], d
    assert one(out, "dnsbl", EGRESS + " bl.test")["status"] == "OK"
    assert "published" in one(out, "mta-sts")["detail"]
    assert "published" in one(out, "tls-rpt")["detail"]
    assert one(out, "verdict-all-senders")["status"] == "OK"
    assert out["verdict"]["all_senders"] is True
    d = one(out, "spf", DOMAIN + " " + EGRESS)
    assert d["status"] == "OK", d
    assert d["detail"].startswith("SPF pass for 127.0.0.2 at example.test "
                                  "(the From: domain): ip4:127.0.0.2"), d
    d = one(out, "spf", HOST + " " + EGRESS)
    assert d["status"] == "OK" and "(the HELO name): a;" in d["detail"], d
    assert one(out, "verdict-bulk")["status"] == "OK"
    assert out["verdict"]["bulk"] is True
    # The only WARN a good zone gets from loopback: the private address.
    warns = [i["name"] for i in out["items"] if i["status"] == "WARN"]
    assert warns == ["address"], out["items"]
    assert one(out, "address", EGRESS)["status"] == "WARN"
    # The probe really connected to the MX (its connection record).
    assert len(mx.connections()) == 1


def test_text_output(workdir, mx, key):
    """Without --json: one line per item, a fix line under problems, the
    counts, and exit 1 on a FAIL."""
    path, p = key
    zone = without_txt(good_zone(p), "_dmarc." + DOMAIN)
    with Dnsmasq(workdir, zone) as z:
        conf = write_conf(workdir, z.servers, [(DOMAIN, "sel1", path)])
        r = subprocess.run([RELAYCTL, "-c", conf, "check-dns", DOMAIN,
                            "--ip", EGRESS, "--probe", mx.smarthost],
                           capture_output=True, timeout=120)
    assert r.returncode == 1, r
    text = r.stdout.decode()
    lines = text.splitlines()
    assert lines[0].startswith("check-dns example.test (EHLO "
                               "mail.example.test, egress 127.0.0.2)")
    fail = [k for k, l in enumerate(lines) if l.startswith("FAIL  dmarc ")]
    assert len(fail) == 1, text
    assert lines[fail[0] + 1] == (
        '      fix: publish: _dmarc.example.test. TXT "v=DMARC1; p=none; '
        'rua=mailto:postmaster@example.test"'), text
    assert any(l.startswith("OK    ptr ") for l in lines), text
    assert lines[-1].startswith("1 FAIL, "), text


def stub_ptr(addr_rev, target):
    return {addr_rev: {"records": ["%s. 300 IN PTR %s." % (addr_rev, target)]}}


def test_no_ptr(workdir, mx, key):
    path, p = key
    rc, out = run_zone(workdir, good_zone(p), mx, [(DOMAIN, "sel1", path)],
                       "--ip", "127.0.0.3")
    assert rc == 1
    d = one(out, "ptr", "127.0.0.3")
    assert d["status"] == "FAIL" and "no PTR record" in d["detail"], d
    assert "127.0.0.3" in d["fix"] and HOST in d["fix"], d
    assert not items(out, "fcrdns", "127.0.0.3")
    assert one(out, "verdict-all-senders")["status"] == "FAIL"
    assert out["verdict"]["all_senders"] is False


def test_ptr_mismatch(workdir, mx, key):
    """The PTR of 127.0.0.4 names mail.example.test, whose A is
    127.0.0.2: not forward-confirmed."""
    path, p = key
    rc, out = run_zone(workdir, good_zone(p), mx, [(DOMAIN, "sel1", path)],
                       "--ip", "127.0.0.4",
                       stub=stub_ptr("4.0.0.127.in-addr.arpa", HOST))
    assert rc == 1
    assert one(out, "ptr", "127.0.0.4")["status"] == "OK"
    d = one(out, "fcrdns", "127.0.0.4")
    assert d["status"] == "FAIL", d
    assert "mail.example.test has A 127.0.0.2, not 127.0.0.4" in d["detail"]
    assert d["fix"].startswith("publish: mail.example.test. A 127.0.0.4")
    # It does name relayd's hostname, though.
    assert one(out, "ptr-hostname", "127.0.0.4")["status"] == "OK"


def test_ptr_name_without_address(workdir, mx, key):
    """PTR to a name with no A (127.0.0.5), and ::1 whose PTR name has an
    A but no AAAA: FCrDNS fails for each, per family."""
    path, p = key
    v6rev = "1." + "0." * 31 + "ip6.arpa"
    stub = stub_ptr("5.0.0.127.in-addr.arpa", "ghost.example.test")
    stub.update(stub_ptr(v6rev, HOST))
    rc, out = run_zone(workdir, good_zone(p), mx, [(DOMAIN, "sel1", path)],
                       "--ip", "127.0.0.5", "--ip", "::1", stub=stub)
    assert rc == 1
    assert out["addresses"] == ["127.0.0.5", "::1"]
    d = one(out, "fcrdns", "127.0.0.5")
    assert d["status"] == "FAIL"
    assert "ghost.example.test has no A record" in d["detail"], d
    assert one(out, "ptr-hostname", "127.0.0.5")["status"] == "WARN"
    d = one(out, "fcrdns", "::1")
    assert d["status"] == "FAIL"
    assert "mail.example.test has no AAAA record" in d["detail"], d
    assert d["fix"].startswith("publish: mail.example.test. AAAA ::1")
    assert one(out, "address", "::1")["status"] == "WARN"


def test_two_spf_records(workdir, mx, key):
    path, p = key
    zone = good_zone(p)
    zone["txt"].append((DOMAIN, ["v=spf1 mx -all"]))
    rc, out = run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path)],
                       "--ip", EGRESS)
    assert rc == 1
    d = one(out, "spf-record", DOMAIN)
    assert d["status"] == "FAIL" and "2 SPF records" in d["detail"], d
    assert "permerror" in d["detail"]


def test_no_spf_record(workdir, mx, key):
    path, p = key
    zone = without_txt(good_zone(p), DOMAIN)
    rc, out = run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path)],
                       "--ip", EGRESS)
    assert rc == 1
    d = one(out, "spf-record", DOMAIN)
    assert d["status"] == "FAIL" and "no SPF record" in d["detail"], d
    assert d["fix"] == 'publish: example.test. TXT "v=spf1 ip4:127.0.0.2 -all"'


def test_dkim_key_mismatch(workdir, mx, key):
    """The record serves another key than the one loaded: FAIL, and the
    fix is the loaded key's record. An RSA key of its own is checked with
    its size."""
    path, p = key
    _, other = make_key(workdir, "other")
    rsa_path, rsa_p = make_key(workdir, "rsa1", alg=2048)
    zone = with_txt(good_zone(p), "sel1._domainkey." + DOMAIN,
                    dkim_txt(other))
    zone["txt"].append(("rsa1._domainkey." + DOMAIN, dkim_txt(rsa_p, "rsa")))
    rc, out = run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path),
                                           (DOMAIN, "rsa1", rsa_path)],
                       "--ip", EGRESS)
    assert rc == 1
    d = one(out, "dkim", "sel1._domainkey." + DOMAIN)
    assert d["status"] == "FAIL" and "does not serve the loaded key" in \
        d["detail"], d
    assert d["fix"] == ('publish: sel1._domainkey.example.test. TXT '
                        '"v=DKIM1; k=ed25519; p=%s" in place of the record '
                        'served' % p), d
    d = one(out, "dkim", "rsa1._domainkey." + DOMAIN)
    assert d["status"] == "OK" and "rsa, 2048 bits" in d["detail"], d


def test_no_dkim_record(workdir, mx, key):
    path, p = key
    zone = without_txt(good_zone(p), "sel1._domainkey." + DOMAIN)
    rc, out = run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path)],
                       "--ip", EGRESS, "--selector", "other")
    assert rc == 1
    d = one(out, "dkim", "sel1._domainkey." + DOMAIN)
    assert d["status"] == "FAIL" and "no DKIM record" in d["detail"], d
    assert d["fix"] == ('publish: sel1._domainkey.example.test. TXT '
                        '"v=DKIM1; k=ed25519; p=%s"' % p), d
    # --selector without a dkim_key line: the record is looked for too.
    d = one(out, "dkim", "other._domainkey." + DOMAIN)
    assert d["status"] == "FAIL", d
    # SPF passes and aligns, so DMARC still would.
    assert one(out, "dmarc-alignment", DOMAIN)["status"] == "OK"


def test_no_dkim_key(workdir, mx, key):
    """No dkim_key for the domain at all: a WARN (mail goes unsigned)."""
    _, p = key
    rc, out = run_zone(workdir, good_zone(p), mx, [], "--ip", EGRESS)
    d = one(out, "dkim", DOMAIN)
    assert d["status"] == "WARN" and "unsigned" in d["detail"], d
    assert "relayctl dkim keygen example.test" in d["fix"]


def test_no_dmarc(workdir, mx, key):
    path, p = key
    zone = without_txt(good_zone(p), "_dmarc." + DOMAIN)
    rc, out = run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path)],
                       "--ip", EGRESS)
    assert rc == 1
    d = one(out, "dmarc", DOMAIN)
    assert d["status"] == "FAIL" and "no DMARC record" in d["detail"], d
    assert one(out, "verdict-bulk")["status"] == "WARN"
    assert out["verdict"]["bulk"] is False


@pytest.mark.parametrize("record,why", [
    ("v=DMARC1; p=block", "p=block: want none, quarantine or reject"),
    ("v=DMARC1; rua=mailto:d@example.test", "no p= tag"),
])
def test_dmarc_invalid(workdir, mx, key, record, why):
    path, p = key
    zone = with_txt(good_zone(p), "_dmarc." + DOMAIN, [record])
    rc, out = run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path)],
                       "--ip", EGRESS)
    assert rc == 1
    d = one(out, "dmarc", DOMAIN)
    assert d["status"] == "FAIL" and why in d["detail"], d


def test_dmarc_inherited_from_org_domain(workdir, mx, key):
    """A subdomain without its own record: the tree walk finds the
    parent's, sp= applies."""
    path, p = key
    zone = with_txt(good_zone(p), "_dmarc." + DOMAIN,
                    ["v=DMARC1; p=reject; sp=quarantine"])
    rc, out = run_zone(workdir, zone, mx, [], "--ip", EGRESS,
                       domain="news." + DOMAIN)
    d = one(out, "dmarc", "news." + DOMAIN)
    assert d["status"] == "OK", d
    assert "policy quarantine from _dmarc.example.test" in d["detail"]
    assert "organizational domain example.test" in d["detail"]


def test_dmarc_misaligned(workdir, mx, key):
    """news.example.test signed with example.test's key (dkim_subdomains)
    under adkim=s, and the envelope in another organization: DMARC would
    fail."""
    path, p = key
    zone = with_txt(good_zone(p), "_dmarc." + DOMAIN,
                    ["v=DMARC1; p=reject; adkim=s; aspf=r"])
    zone["txt"].append(("bounces.other.test", ["v=spf1 ip4:%s -all" %
                                               EGRESS]))
    rc, out = run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path)],
                       "--ip", EGRESS, "--mail-from", "bounces.other.test",
                       domain="news." + DOMAIN, dkim_subdomains="yes")
    assert rc == 1
    assert one(out, "dkim", "sel1._domainkey." + DOMAIN)["status"] == "OK"
    d = one(out, "dmarc-alignment", "news." + DOMAIN)
    assert d["status"] == "FAIL", d
    assert "DKIM d=example.test not aligned with news.example.test " \
        "(adkim=s, strict)" in d["detail"], d
    assert "SPF domain bounces.other.test not aligned" in d["detail"], d
    assert one(out, "spf-record", "bounces.other.test")["status"] == "OK"


def test_probe_refused(workdir, mx, key):
    """Nothing listens on the probed port: FAIL naming port 25 blocking."""
    path, p = key
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                   # bound, never listened: refused
    zone = good_zone(p)
    with Dnsmasq(workdir, zone) as z:
        conf = write_conf(workdir, z.servers, [(DOMAIN, "sel1", path)])
        rc, out = check_dns(conf, "--ip", EGRESS, "--probe",
                            "127.0.0.1:%d" % port)
    assert rc == 1
    d = one(out, "port25")
    assert d["status"] == "FAIL" and "refused" in d["detail"].lower(), d
    assert "provider may block port 25" in d["fix"]
    assert mx.connections() == []


def test_probe_default_is_the_mx(workdir, mx, key):
    """Without --probe the best MX is tried on port 25 (nothing listens
    on 127.0.0.2:25 here: refused), never the second one."""
    path, p = key
    zone = good_zone(p)
    zone["mx"].append((DOMAIN, "mx2.example.test", 20))
    zone["hosts"].append(("mx2.example.test", "127.0.0.9"))
    with Dnsmasq(workdir, zone) as z:
        conf = write_conf(workdir, z.servers, [(DOMAIN, "sel1", path)])
        rc, out = check_dns(conf, "--ip", EGRESS)
    d = one(out, "port25")
    assert d["subject"] == "mail.example.test[127.0.0.2]:25", d


def test_dnsbl(workdir, mx, key):
    """Listed: FAIL with the zone's reason; Spamhaus' 127.255.255.x error
    answer: WARN could not check, not a listing."""
    path, p = key
    zone = good_zone(p)
    zone["hosts"] += [("2.0.0.127.bl.test", "127.0.0.10"),
                      ("2.0.0.127.zen.test", "127.255.255.254")]
    zone["txt"].append(("2.0.0.127.bl.test",
                        ["listed: see https://bl.test/q?127.0.0.2"]))
    rc, out = run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path)],
                       "--ip", EGRESS, dnsbl_zones="bl.test, zen.test, "
                       "ok.test")
    assert rc == 1
    d = one(out, "dnsbl", EGRESS + " bl.test")
    assert d["status"] == "FAIL", d
    assert "listed in bl.test (127.0.0.10): listed: see " \
        "https://bl.test/q?127.0.0.2" in d["detail"], d
    d = one(out, "dnsbl", EGRESS + " zen.test")
    assert d["status"] == "WARN" and "could not check" in d["detail"], d
    assert one(out, "dnsbl", EGRESS + " ok.test")["status"] == "OK"


def test_usage_errors(workdir):
    conf = write_conf(workdir, "127.0.0.1:9")
    for args in (["check-dns"], ["check-dns", "bad domain!"],
                 ["check-dns", DOMAIN, "--ip", "not-an-ip"],
                 ["check-dns", DOMAIN, "--selector", "a b"],
                 ["check-dns", DOMAIN, "--probe", "127.0.0.1:0"],
                 ["check-dns", DOMAIN, "--probe", "127.0.0.1:99999"],
                 ["check-dns", DOMAIN, "--probe", "[::1"],
                 ["check-dns", DOMAIN, "--probe", ":25"],
                 ["check-dns", DOMAIN, "--probe", "bad host:25"],
                 ["check-dns", DOMAIN, "--bogus"]):
        r = subprocess.run([RELAYCTL, "-c", conf, *args],
                           capture_output=True, timeout=30)
        assert r.returncode == 2, (args, r)
        assert r.stdout == b"", args
    # A configuration it cannot use: exit 2 too.
    bad = os.path.join(workdir, "bad.conf")
    with open(bad, "w") as f:
        f.write("dnsbl_zones = no way!\n")
    r = subprocess.run([RELAYCTL, "-c", bad, "check-dns", DOMAIN],
                       capture_output=True, timeout=30)
    assert r.returncode == 2, r
    assert b"dnsbl_zones" in r.stderr


def spf_variant(workdir, mx, key, records, *args, hosts=(), **kw):
    path, p = key
    zone = good_zone(p)
    zone["hosts"] = zone["hosts"] + list(hosts)
    for name, strings in records:
        zone = with_txt(zone, name, strings)
    return run_zone(workdir, zone, mx, [(DOMAIN, "sel1", path)], "--ip",
                    EGRESS, *args, **kw)


def test_spf_missing_the_ip(workdir, mx, key):
    rc, out = spf_variant(workdir, mx, key,
                          [(DOMAIN, ["v=spf1 ip4:127.0.0.99 mx:nomx.test "
                                     "~all"])])
    assert rc == 1
    d = one(out, "spf", DOMAIN + " " + EGRESS)
    assert d["status"] == "FAIL", d
    assert d["detail"].startswith("SPF softfail for 127.0.0.2 at "
                                  "example.test"), d
    assert "decided by ~all" in d["detail"], d
    assert d["fix"] == ('publish: example.test. TXT "v=spf1 ip4:127.0.0.2 '
                        'ip4:127.0.0.99 mx:nomx.test ~all" (in place of the '
                        'record now served)'), d
    # DKIM still passes: all senders' rules hold; bulk's need SPF too.
    assert one(out, "verdict-all-senders")["status"] == "OK"
    assert one(out, "verdict-bulk")["status"] == "WARN"


def test_spf_eleven_lookups(workdir, mx, key):
    hosts = ["h%d.example.test" % i for i in range(11)]
    rc, out = spf_variant(workdir, mx, key, [
        (DOMAIN, ["v=spf1 " + " ".join("a:" + h for h in hosts) + " -all"])],
        hosts=[(h, "127.0.1.%d" % (i + 1)) for i, h in enumerate(hosts)])
    assert rc == 1
    d = one(out, "spf", DOMAIN + " " + EGRESS)
    assert d["status"] == "FAIL", d
    assert "SPF permerror" in d["detail"], d
    assert "more than 10 DNS lookups" in d["detail"], d
    assert "at most 10 terms that cause DNS lookups" in d["fix"], d


def test_spf_three_void_lookups(workdir, mx, key):
    rc, out = spf_variant(workdir, mx, key, [
        (DOMAIN, ["v=spf1 a:nx1.example.test a:nx2.example.test "
                  "a:nx3.example.test ip4:127.0.0.2 -all"])])
    assert rc == 1
    d = one(out, "spf", DOMAIN + " " + EGRESS)
    assert d["status"] == "FAIL", d
    assert "more than 2 void lookups" in d["detail"], d
    assert "without records" in d["fix"], d


def test_spf_include_loop(workdir, mx, key):
    rc, out = spf_variant(workdir, mx, key, [
        (DOMAIN, ["v=spf1 include:_spf.example.test -all"]),
        ("_spf.example.test", ["v=spf1 include:example.test -all"])])
    assert rc == 1
    d = one(out, "spf", DOMAIN + " " + EGRESS)
    assert d["status"] == "FAIL", d
    assert "include loop" in d["detail"], d
    assert "leads back to itself" in d["fix"], d


def test_spf_helo_and_mail_from(workdir, mx, key):
    """The HELO name without SPF (bounces), and a --mail-from domain whose
    SPF passes: SPF for DMARC is the envelope's."""
    rc, out = spf_variant(workdir, mx, key, [
        (HOST, []), ("bounce.example.test", ["v=spf1 ip4:127.0.0.2 -all"])],
        "--mail-from", "x@bounce.example.test")
    z = [i for i in out["items"] if i["subject"] == HOST]
    assert one(out, "spf-record", HOST)["status"] == "FAIL", z
    assert one(out, "spf", HOST + " " + EGRESS)["status"] == "FAIL"
    d = one(out, "spf", "bounce.example.test " + EGRESS)
    assert d["status"] == "OK" and "(the envelope domain)" in d["detail"], d
    d = one(out, "dmarc-alignment", DOMAIN)
    assert "SPF domain bounce.example.test aligned" in d["detail"], d


def test_egress_from_configuration(workdir, mx, key):
    """Without --ip: smtp_bind_address, and with ip_preference = ipv4 no
    IPv6 address is looked for."""
    path, p = key
    zone = good_zone(p)
    with Dnsmasq(workdir, zone) as z:
        conf = write_conf(workdir, z.servers, [(DOMAIN, "sel1", path)],
                          smtp_bind_address=EGRESS, ip_preference="ipv4")
        rc, out = check_dns(conf, "--probe", mx.smarthost)
    assert out["addresses"] == [EGRESS], out
    assert one(out, "fcrdns", EGRESS)["status"] == "OK"
    assert rc == 0, [i for i in out["items"] if i["status"] == "FAIL"]
