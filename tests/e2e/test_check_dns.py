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
    # The only WARN a good zone gets from loopback: the private address
    # (and, until the SPF evaluator is in, the bulk verdict saying SPF
    # was not evaluated).
    warns = {i["name"] for i in out["items"] if i["status"] == "WARN"}
    assert warns <= {"address", "verdict-bulk"}, out["items"]
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
