"""tests/e2e/test_direct_tls.py - delivery = direct: TLS toward MX hosts
(issue 9 §3 "TLS", §4), in the world of tests/e2e/test_direct.py
(dnsmasq authoritative for `test`, aiosmtpd MX servers on 127.0.N.x).

Covered, each asserted on events (what each MX recorded, log lines, the
order of both), never on timing:
- an MX whose TLS handshake breaks after it answered 220 to STARTTLS
  (upstream_server.py's "starttls_broken": garbage bytes, or a close):
  at "may" the message is retried once in plaintext on the same host (a
  second MX gets nothing) and arrives in clear; the destination says
  "TLS broken" (log, relayctl destinations) and keeps saying it once
  idle, so the next message goes in plaintext at once; at "encrypt"
  (tls_policy_file) it is deferred with the handshake's reason and
  nothing is ever sent in clear;
- "verify": an MX certificate from a CA relayd trusts (the test CA, via
  OpenSSL's SSL_CERT_FILE: direct mode has no CA key, see below) and
  naming the MX host is used (tls=TLSv1.x/verified); a certificate from
  another CA, or naming another host, defers with the certificate
  error, never plaintext, no mail in clear;
- SIGHUP switching a domain from may to encrypt while its MX offers no
  STARTTLS: delivered in clear before, deferred after, never in clear.

Direct mode's "verify" context loads the system trust store
(SSL_CTX_set_default_verify_paths); there is no tls_ca_file-like key.
OpenSSL reads the store's file from SSL_CERT_FILE, so the tests hand
relayd the test CA through its environment.
"""
import json
import re
import signal

import pytest

from conftest import wait_until
from conftest_upstream import make_message, statuses, submit, wait_status
from test_direct import SENDER, sent_line, world  # noqa: F401 (fixture)


def destinations(r):
    res = r.relayctl("destinations", "--json")
    return json.loads(res.stdout.decode())["destinations"]


def verbs_of(conns):
    return [[x["verb"].upper() for x in c["commands"]] for c in conns]


def deferred_line(r, qid, rcpt):
    return [l for st, l in wait_status(r, qid, rcpt, "deferred",
                                       fail_on=("sent", "bounced"))
            if st == "deferred"][0]


@pytest.mark.parametrize("mode", ["garbage", "close"])
def test_broken_handshake_after_220_retried_in_plaintext(world, mode):
    w = world(2)
    up = w.start_mx(0, behaviour={"ehlo_add": ["STARTTLS"],
                                  "starttls_broken": mode})
    # A worse MX that would get the mail if relayd moved on instead of
    # retrying the same host in plaintext.
    other = w.start_mx(1)
    w.start_dns({"mx": [("hs.test", "mx1.hs.test", 10),
                        ("hs.test", "mx2.hs.test", 20)],
                 "hosts": [("mx1.hs.test", w.host(0)),
                           ("mx2.hs.test", w.host(1))]})
    # debug: the scan's "deliver: N ready, ..." line (below).
    r = w.relayd(log_level="debug")
    content, mid = make_message("broken handshake", to="h@hs.test")
    qid = submit(r, SENDER, ["h@hs.test"], content)
    line = sent_line(r, qid, "h@hs.test")
    assert "relay=mx1.hs.test[%s]:%d" % (w.host(0), w.port) in line, line
    assert "tls=none" in line, line
    # Sent on the first attempt: the plaintext retry is within it.
    assert statuses(r, qid, "h@hs.test") == ["sent"]

    conns = up.connections()
    assert len(conns) == 2, conns
    # The first connection: STARTTLS answered 220, then relayd's
    # ClientHello met the broken handshake; no mail on it.
    assert conns[0]["handshake_error"] == "broken on purpose: %s" % mode
    assert conns[0]["broken_bytes"] > 0, conns[0]
    assert conns[0]["replies"][-1].startswith("220 2.0.0 Ready"), conns[0]
    v = verbs_of(conns)
    assert v[0][-1] == "STARTTLS" and "MAIL" not in v[0], v
    # The second, in plaintext on the same host, without STARTTLS.
    assert "STARTTLS" not in v[1] and "MAIL" in v[1], v
    got = up.wait_messages(1)
    assert got[0]["rcpt_tos"] == ["h@hs.test"]
    assert got[0]["tls"] is None
    assert mid.encode() in got[0]["data"]
    assert other.connections() == []

    log = r.log_text()
    # The destination is the MX set, both hosts.
    m = re.search(r"destination (mx1\.hs\.test,mx2\.hs\.test/may): TLS "
                  r"broken \((TLS handshake with mx1\.hs\.test\[%s\]:%d "
                  r"failed: [^)]*)\); plaintext for \d+ s, retrying "
                  r"mx1\.hs\.test now" % (re.escape(w.host(0)), w.port), log)
    assert m, log[-3000:]
    assert m.start() < log.find("%s: to=<h@hs.test>" % qid), log[-3000:]
    name = "mx:" + m.group(1)

    def broken_dest():
        return [d for d in destinations(r) if d["name"] == name]
    (d,) = broken_dest()
    assert d["tls_broken_until"] > 0, d
    assert d["tls_broken_reason"] == m.group(2), d
    table = r.relayctl("destinations").stdout.decode()
    assert re.search(r"^  TLS broken until .*, plaintext: TLS handshake "
                     r"with mx1\.hs\.test", table, re.M), table

    # Still remembered once the destination is idle: relayd's idle
    # session to the MX closes, and a scan with no session left (the
    # one that forgets idle destinations) runs; the next message then
    # goes in plaintext at once.
    wait_until(lambda: all(c["closed"] for c in up.connections()),
               timeout=30, what="relayd's idle session to close")
    before = r.log_text().count("deliver: 0 ready, 0 busy, 0 sessions")
    wait_until(lambda: r.log_text().count(
        "deliver: 0 ready, 0 busy, 0 sessions") > before, timeout=90,
        what="a scan with nothing in flight")
    assert broken_dest(), destinations(r)
    c2, _ = make_message("broken handshake 2", to="h2@hs.test")
    q2 = submit(r, SENDER, ["h2@hs.test"], c2)
    sent_line(r, q2, "h2@hs.test")
    v = verbs_of(up.connections())
    assert len(v) == 3 and "STARTTLS" not in v[2] and "MAIL" in v[2], v
    assert other.connections() == []


@pytest.mark.parametrize("mode", ["garbage", "close"])
def test_broken_handshake_at_encrypt_never_sends_in_clear(world, tmp_path,
                                                          mode):
    w = world(1)
    up = w.start_mx(0, behaviour={"ehlo_add": ["STARTTLS"],
                                  "starttls_broken": mode})
    w.start_dns({"mx": [("hse.test", "mx.hse.test", 10)],
                 "hosts": [("mx.hse.test", w.host(0))]})
    pol = tmp_path / "tls_policy"
    pol.write_text("hse.test encrypt\n")
    r = w.relayd(tls_policy_file=str(pol))
    content, mid = make_message("broken handshake encrypt", to="e@hse.test")
    qid = submit(r, SENDER, ["e@hse.test"], content)
    line = deferred_line(r, qid, "e@hse.test")
    assert "TLS handshake with mx.hse.test[%s]:%d failed" % (
        w.host(0), w.port) in line, line
    # Tried again (the retry delay is 1-2 s): the same, never plaintext.
    wait_status(r, qid, "e@hse.test", "deferred", count=2,
                fail_on=("sent", "bounced"))
    conns = up.connections()
    assert len(conns) >= 2, conns
    for c in conns:
        assert c["handshake_error"] == "broken on purpose: %s" % mode, c
    assert all(v[-1] == "STARTTLS" for v in verbs_of(conns)), verbs_of(conns)
    assert up.mail_in_clear() == []
    assert up.messages(all=True) == []
    assert "TLS broken" not in r.log_text()


# ---- verify -------------------------------------------------------------

def _verify_world(world, test_ca, tmp_path, cert, mx_name):
    w = world(1)
    up = w.start_mx(0, tls="starttls", cert=cert)
    w.start_dns({"mx": [("vfy.test", mx_name, 10)],
                 "hosts": [(mx_name, w.host(0))]})
    pol = tmp_path / "tls_policy"
    pol.write_text("vfy.test verify\n")
    r = w.relayd_factory(start=False, **dict(w_conf(w),
                                             tls_policy_file=str(pol)))
    r.start(env={"SSL_CERT_FILE": test_ca.ca_cert})
    return w, up, r


def w_conf(w):
    return {"delivery": "direct", "dns_servers": w.dns.servers,
            "mx_allow_private": "yes", "mx_port": str(w.port),
            "retry_min": "1s", "retry_max": "2s",
            "delivery_timeout": "10s"}


def test_verify_trusted_certificate_naming_the_mx(world, test_ca, tmp_path):
    # "good" names smarthost.test (upstream.TLS_NAME): the MX host's name.
    w, up, r = _verify_world(world, test_ca, tmp_path, "good",
                             "smarthost.test")
    content, mid = make_message("verify", to="v@vfy.test")
    qid = submit(r, SENDER, ["v@vfy.test"], content)
    line = sent_line(r, qid, "v@vfy.test")
    assert re.search(r"tls=TLSv1\.[23]/verified", line), line
    assert "destination mx:smarthost.test/verify" in r.log_text()
    got = up.wait_messages(1)
    assert got[0]["tls"] is not None
    assert up.mail_in_clear() == []


@pytest.mark.parametrize("cert,mx_name,why", [
    # Another CA's certificate for the right name.
    ("untrusted", "smarthost.test", "unable to get local issuer certificate"),
    # The test CA's certificate for wrong.test, presented by smarthost.test.
    ("wrong", "smarthost.test", "hostname mismatch"),
    # The right certificate, but the MX host is another name.
    ("good", "mx.vfy.test", "hostname mismatch"),
])
def test_verify_fails_without_plaintext(world, test_ca, tmp_path, cert,
                                        mx_name, why):
    w, up, r = _verify_world(world, test_ca, tmp_path, cert, mx_name)
    content, mid = make_message("verify fails", to="f@vfy.test")
    qid = submit(r, SENDER, ["f@vfy.test"], content)
    line = deferred_line(r, qid, "f@vfy.test")
    assert "TLS handshake with %s[%s]:%d failed: certificate: %s" % (
        mx_name, w.host(0), w.port, why) in line, line
    wait_status(r, qid, "f@vfy.test", "deferred", count=2,
                fail_on=("sent", "bounced"))
    conns = up.connections()
    assert len(conns) >= 2
    for v in verbs_of(conns):
        assert v[-1] == "STARTTLS" and "MAIL" not in v, v
    assert up.mail_in_clear() == []
    assert up.messages(all=True) == []
    assert "TLS broken" not in r.log_text()


def test_verify_without_the_ca_fails(world, test_ca, tmp_path):
    """The test of the verify tests: the same good certificate, but
    relayd is not given the test CA (the system store does not have it)."""
    w = world(1)
    up = w.start_mx(0, tls="starttls", cert="good")
    w.start_dns({"mx": [("vfy.test", "smarthost.test", 10)],
                 "hosts": [("smarthost.test", w.host(0))]})
    pol = tmp_path / "tls_policy"
    pol.write_text("vfy.test verify\n")
    r = w.relayd(tls_policy_file=str(pol))
    content, mid = make_message("verify no ca", to="n@vfy.test")
    qid = submit(r, SENDER, ["n@vfy.test"], content)
    line = deferred_line(r, qid, "n@vfy.test")
    assert "failed: certificate: unable to get local issuer certificate" \
        in line, line
    assert up.mail_in_clear() == []
    assert up.messages(all=True) == []


# ---- SIGHUP -------------------------------------------------------------

def test_sighup_may_to_encrypt(world, tmp_path):
    w = world(1)
    up = w.start_mx(0)      # no STARTTLS offered
    w.start_dns({"mx": [("hup.test", "mx.hup.test", 10)],
                 "hosts": [("mx.hup.test", w.host(0))]})
    pol = tmp_path / "tls_policy"
    pol.write_text("hup.test may\n")
    r = w.relayd(tls_policy_file=str(pol))
    c1, mid1 = make_message("hup before", to="a@hup.test")
    q1 = submit(r, SENDER, ["a@hup.test"], c1)
    line = sent_line(r, q1, "a@hup.test")
    assert "tls=none" in line, line
    assert [m["rcpt_tos"] for m in up.wait_messages(1)] == [["a@hup.test"]]
    assert up.mail_in_clear() != []        # the test of the test

    pol.write_text("hup.test encrypt\n")
    before = r.log_text().count("configuration reloaded")
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: r.log_text().count("configuration reloaded") > before,
               timeout=10, what="relayd to reload")
    clear_before = len(up.mail_in_clear())
    n_before = len(up.messages(all=True))
    c2, mid2 = make_message("hup after", to="b@hup.test")
    q2 = submit(r, SENDER, ["b@hup.test"], c2)
    line = deferred_line(r, q2, "b@hup.test")
    assert "destination mx:mx.hup.test/encrypt" in r.log_text()
    wait_status(r, q2, "b@hup.test", "deferred", count=2,
                fail_on=("sent", "bounced"))
    assert len(up.mail_in_clear()) == clear_before
    assert len(up.messages(all=True)) == n_before
    assert statuses(r, q1, "a@hup.test") == ["sent"]
