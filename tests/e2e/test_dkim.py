"""tests/e2e/test_dkim.py - DKIM signing (issue 10 §1, §5), checked by an
independent verifier: dkimpy (Debian's python3-dkim) with the public keys
served by dnsmasq (dnsutil.Dnsmasq, zone `test`), asked through dnspython
(dkim.verify's dnsfunc: resolv.conf cannot name a port).

Keys are made in each test with `openssl genpkey` (RSA-2048, Ed25519).
Messages carry 8-bit text, lines with leading dots and a line over 998
octets (long_lines = wrap folds it before signing); every delivered copy
verifies, a copy changed after signing does not (the test of the test).
A message deferred once carries byte-identical signatures on the retry.
SIGHUP with a broken key file keeps signing with the old key and says
why; relayd -t refuses a key that does not load. dkim_required refuses a
From: domain without a key with 550 5.7.1, nothing queued; without it
such a message goes out unsigned. A DSN is signed with the key of
hostname's domain; with rewrite_from_header the delivered From: is the
rewritten one and verifies with d= of its domain. Smarthost and direct
mode (test_direct.py's world fixture)."""
import base64
import os
import re
import signal
import smtplib
import subprocess

import dkim
import dns.message
import dns.query
import dns.rdatatype
import pytest

from conftest import wait_until
from conftest_upstream import (SENDER, make_message, queue_list, stats,
                               submit)
from dnsutil import Dnsmasq
from test_direct import world  # noqa: F401 (the fixture)

DOMAIN = "client.test"      # SENDER's domain
RW_DOMAIN = "rewritten.test"   # rewrite_sender's domain (key "rw1")


def genkey(directory, name, alg):
    """A private key file (mode 0600) and its DKIM record's p= value."""
    path = os.path.join(directory, name + ".pem")
    if alg == "rsa":
        args = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    else:
        args = ["-algorithm", "ED25519"]
    subprocess.run(["openssl", "genpkey"] + args + ["-out", path],
                   check=True, capture_output=True)
    os.chmod(path, 0o600)
    der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout",
                          "-outform", "DER"], check=True,
                         capture_output=True).stdout
    # Ed25519: the 32 raw bytes (RFC 8463 §4.2), the tail of the SPKI.
    p = base64.b64encode(der if alg == "rsa" else der[-32:]).decode()
    return path, p


def txt_strings(alg, p):
    """The record as TXT character-strings of at most 255 octets, without
    blanks or commas (dnsmasq takes them literally)."""
    rec = "v=DKIM1;k=%s;p=%s" % (alg, p)
    return [rec[i:i + 255] for i in range(0, len(rec), 255)]


class Zone:
    """dnsmasq serving the DKIM records; dnsfunc for dkim.verify."""

    def __init__(self, workdir, records):
        self.dns = Dnsmasq(workdir, {"txt": records}).start()
        self.addr, port = self.dns.servers.rsplit(":", 1)
        self.port = int(port)

    def dnsfunc(self, name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        q = dns.message.make_query(name, dns.rdatatype.TXT)
        a = dns.query.udp(q, self.addr, port=self.port, timeout=timeout)
        for rrset in a.answer:
            for rd in rrset:
                return b"".join(rd.strings)
        return None

    def stop(self):
        self.dns.stop()


@pytest.fixture
def keys(tmp_path):
    """RSA and Ed25519 keys for client.test, and the zone serving them."""
    d = str(tmp_path / "keys")
    os.mkdir(d, 0o700)
    made = {}
    for sel, alg in (("rsa1", "rsa"), ("ed1", "ed25519"), ("rsa2", "rsa"),
                     ("rw1", "ed25519")):
        made[sel] = genkey(d, sel, alg)
    records = [("%s._domainkey.%s" % (sel, RW_DOMAIN if sel == "rw1"
                                      else DOMAIN),
                txt_strings("rsa" if sel.startswith("rsa") else "ed25519",
                            made[sel][1]))
               for sel in made]
    zone = Zone(str(tmp_path), records)
    yield made, zone
    zone.stop()


def key_line(made, sel, domain=DOMAIN):
    return "%s %s %s" % (domain, sel, made[sel][0])


def with_key_lines(r, lines):
    """relayd's configuration with one dkim_key line per entry (the
    fixture's dict holds each key once)."""
    plain = r.write_conf

    def write():
        plain()
        with open(r.conf_path, "a") as f:
            for line in lines:
                f.write("dkim_key = %s\n" % line)
    r.write_conf = write
    write()
    return r


def sigs(msg):
    """The DKIM-Signature fields of a message, raw (folded) bytes."""
    head = msg.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    return re.findall(rb"^DKIM-Signature:.*?\r\n(?![ \t])", head,
                      re.M | re.S)


def verify_all(msg, zone):
    """Each signature of msg verifies (dkimpy checks one per call)."""
    n = len(sigs(msg))
    out = []
    for i in range(n):
        try:
            out.append(dkim.DKIM(msg).verify(idx=i, dnsfunc=zone.dnsfunc))
        except dkim.ValidationError:
            out.append(False)   # e.g. "body hash mismatch"
    return n, out


def tricky_body():
    long_line = b"L" * 1500 + b"\r\n"          # wrapped at 998 octets
    return ("Gr\u00fc\u00dfe, na\u00efve caf\u00e9 \u2014 8-bit text\r\n"
            .encode("utf-8") +
            b".\r\n..\r\n.leading dot\r\n" + long_line +
            b"\r\nlast line\r\n")


def test_smarthost_dual_signed_and_verified(upstream_factory, relay_to, keys,
                                            tmp_path):
    made, zone = keys
    up = upstream_factory(tls="none")
    r = relay_to(up, start=False, smarthost_tls="none")
    # rsa1 then rsa2 for the same domain: the last line (rsa2) signs.
    with_key_lines(r, [key_line(made, "rsa1"), key_line(made, "ed1"),
                       key_line(made, "rsa2")])
    r.start()
    content, _ = make_message("dkim dual", body=tricky_body(),
                              headers=("MIME-Version: 1.0",
                                       "Content-Type: text/plain; "
                                       "charset=utf-8",
                                       "Content-Transfer-Encoding: 8bit"))
    submit(r, SENDER, ["one@dest.test"], content,
           mail_options=("BODY=8BITMIME",))
    # From a domain without a key: delivered, unsigned.
    other, _ = make_message("no key", frm="x@nokey.test")
    submit(r, "x@nokey.test", ["two@dest.test"], other)
    got = up.wait_messages(2, timeout=30)
    by_rcpt = {m["rcpt_tos"][0]: m["data"] for m in got}
    msg = by_rcpt["one@dest.test"]
    fields = sigs(msg)
    assert len(fields) == 2, msg[:2000]
    assert b"a=rsa-sha256" in fields[0] and b"s=rsa2" in fields[0]
    assert b"a=ed25519-sha256" in fields[1] and b"s=ed1" in fields[1]
    for f in fields:
        assert b"c=relaxed/relaxed" in f and b"d=client.test" in f
        tags = dict(t.split(b"=", 1) for t in
                    re.sub(rb"\s", b"", f.split(b":", 1)[1]).split(b";") if t)
        assert b"l" not in tags, tags
        h = tags[b"h"]
        names = [x.lower() for x in h.split(b":")]
        assert names.count(b"from") == 2   # oversigned
        for want in (b"to", b"subject", b"date", b"message-id",
                     b"mime-version", b"content-type",
                     b"content-transfer-encoding"):
            assert want in names, (want, names)
        assert b"received" not in names
    n, ok = verify_all(msg, zone)
    assert n == 2 and ok == [True, True], ok
    # The long line arrived wrapped (what was signed), 8-bit intact.
    assert b"L" * 998 + b"\r\n" in msg
    assert "Gr\u00fc\u00dfe".encode() in msg
    # The test of the test: a changed body or header fails.
    bad = msg.replace(b"last line", b"last lime")
    assert verify_all(bad, zone)[1] == [False, False]
    bad = msg.replace(b"Subject: dkim dual", b"Subject: dkim duel")
    assert verify_all(bad, zone)[1] == [False, False]
    # No key, no signature.
    assert sigs(by_rcpt["two@dest.test"]) == []
    log = r.log_text()
    assert re.search(r"dkim: signed, d=client\.test, s=rsa2\+ed1", log), log


@pytest.mark.parametrize("sel", ["rsa1", "ed1"])
def test_retry_sends_identical_signature(upstream_factory, relay_to, keys,
                                         sel):
    made, zone = keys
    up = upstream_factory(tls="none",
                          behaviour={"data": {SENDER: ["451 4.3.0 later"]}})
    # The key through the environment (RELAYD_DKIM_KEY).
    r = relay_to(up, smarthost_tls="none",
                 env={"RELAYD_DKIM_KEY": key_line(made, sel)})
    content, _ = make_message("retry " + sel, body=tricky_body())
    submit(r, SENDER, ["r@dest.test"], content)
    got = up.wait_messages(2, timeout=40, all=True)
    assert [m["accepted"] for m in got[:2]] == [False, True]
    first, second = sigs(got[0]["data"]), sigs(got[1]["data"])
    assert len(first) == 1 and first == second
    assert got[0]["data"] == got[1]["data"]
    assert verify_all(got[1]["data"], zone)[1] == [True]


def test_sighup_broken_key_keeps_old_one(upstream_factory, relay_to, keys):
    made, zone = keys
    up = upstream_factory(tls="none")
    r = relay_to(up, start=False, smarthost_tls="none")
    with_key_lines(r, [key_line(made, "rsa1")])
    r.start()   # RSA only: leak detection stays on
    path = made["rsa1"][0]
    with open(path, "w") as f:
        f.write("-----BEGIN PRIVATE KEY-----\nbroken\n"
                "-----END PRIVATE KEY-----\n")
    before = len(r.log_text())
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in r.log_text()[before:],
               timeout=10, what="the reload")
    log = r.log_text()[before:]
    assert re.search(r"dkim: key client\.test \(selector rsa1\) not "
                     r"reloaded, the old one is kept: .*%s" %
                     re.escape(path), log), log
    content, _ = make_message("after hup")
    submit(r, SENDER, ["h@dest.test"], content)
    got = up.wait_messages(1, timeout=30)
    assert verify_all(got[0]["data"], zone)[1] == [True]
    assert b"s=rsa1" in sigs(got[0]["data"])[0]


def test_start_refuses_a_broken_key(relayd_factory, tmp_path):
    bad = str(tmp_path / "bad.pem")
    with open(bad, "w") as f:
        f.write("not a key\n")
    os.chmod(bad, 0o600)
    r = relayd_factory(start=False)
    with_key_lines(r, ["%s sel %s" % (DOMAIN, bad)])
    from conftest import RELAYD
    p = subprocess.run([RELAYD, "-t", "-c", r.conf_path],
                       capture_output=True, timeout=30)
    assert p.returncode == 1
    assert bad.encode() in p.stderr, p.stderr


def refused_then_signed(r, up, zone, frm, bad, code, enh, subject):
    """One session: bad (from frm, to x@dest.test) refused with code and
    enh at the end of its data; then, the session going on, a message from
    SENDER's domain (to y@dest.test) accepted, the only one delivered, its
    signatures verified. Returns what the upstream got."""
    with smtplib.SMTP(r.addr, r.port, timeout=60) as s:
        s.ehlo("client.test")
        assert s.mail(frm)[0] == 250
        assert s.rcpt("x@dest.test")[0] == 250
        c, msg = s.data(bad)
        assert c == code and msg.startswith(enh), (c, msg)
        # The session goes on: a message from the key's domain is signed.
        good, _ = make_message(subject)
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt("y@dest.test")[0] == 250
        c, msg = s.data(good)
        assert c == 250, msg
    got = up.wait_messages(1, timeout=30)
    assert got[0]["rcpt_tos"] == ["y@dest.test"]
    assert verify_all(got[0]["data"], zone)[1] == [True]
    return got


def test_dkim_required(upstream_factory, relay_to, keys):
    made, zone = keys
    up = upstream_factory(tls="none")
    r = relay_to(up, start=False, smarthost_tls="none", dkim_required="yes")
    with_key_lines(r, [key_line(made, "ed1")])
    r.start()
    content, _ = make_message("unsigned", frm="a@nokey.test")
    got = refused_then_signed(r, up, zone, "a@nokey.test", content, 550,
                              b"5.7.1 ", "signed")
    assert [m for m in queue_list(r) if m["sender"] == "a@nokey.test"] == []
    assert "from=<a@nokey.test>" not in r.log_text()   # never committed
    assert re.search(r"dkim: no DKIM key for nokey\.test, dkim_required: "
                     r"550 5\.7\.1, not queued", r.log_text())


def test_dkim_required_signing_failure_451(upstream_factory, relay_to,
                                           keys):
    """A message from a domain with a key whose signing fails (here a
    header section over dkim/'s 1 MiB, DKIM_HEADER_MAX) gets 451 4.7.0
    at the end of its data under dkim_required, nothing queued, the log
    saying why; the session goes on and the next message is signed (RSA,
    relayd's own signer) and verifies."""
    made, zone = keys
    up = upstream_factory(tls="none")
    r = relay_to(up, start=False, smarthost_tls="none", dkim_required="yes")
    with_key_lines(r, [key_line(made, "rsa1")])
    r.start()
    pad = ["X-Pad-%04d: %s" % (i, "p" * 900) for i in range(1200)]
    big, _ = make_message("too big to sign", headers=pad)
    assert len(big.split(b"\r\n\r\n", 1)[0]) > 1024 * 1024
    got = refused_then_signed(r, up, zone, SENDER, big, 451, b"4.7.0 ",
                              "signed after the failure")
    assert b"a=rsa-sha256;" in sigs(got[0]["data"])[0]
    # (the From: domain is not known yet: the section never ended)
    m = re.search(r"(\w+): dkim: signing failed for \?: header section "
                  r"over 1048576 bytes; dkim_required: 451 4\.7\.0, not "
                  r"queued", r.log_text())
    assert m, r.log_text()[-3000:]
    assert "%s: from=" % m.group(1) not in r.log_text()   # never committed


def test_dsn_signed_with_hostnames_domain_key(upstream_factory, relay_to,
                                              keys):
    """relayd's own bounce (From: MAILER-DAEMON@out.client.test) is signed
    with the key of its hostname's domain: client.test, the nearest parent
    with a key (dkim_subdomains is off: that is for client mail)."""
    made, zone = keys
    up = upstream_factory(tls="none", behaviour={
        "rcpt": {"bad@dest.test": "550 5.1.1 no such user"}})
    r = relay_to(up, start=False, smarthost_tls="none",
                 hostname="out.client.test")
    with_key_lines(r, [key_line(made, "ed1")])
    r.start()
    content, mid = make_message("will bounce")
    submit(r, SENDER, ["bad@dest.test"], content)
    got = up.wait_messages(1, timeout=40,
                           match=lambda m: m["mail_from"] == "")
    dsn = got[0]["data"]
    assert re.search(rb"^From: .*MAILER-DAEMON@out\.client\.test", dsn,
                     re.M | re.I), dsn[:1500]
    fields = sigs(dsn)
    assert len(fields) == 1 and b"d=client.test" in fields[0], dsn[:1500]
    assert verify_all(dsn, zone)[1] == [True]
    assert verify_all(dsn.replace(b"will bounce", b"will bounse"),
                      zone)[1] == [False]
    st = stats(r)
    assert st["dkim_signed"] >= 1 and st["dkim_failed"] == 0, st
    # The client's message (From: client.test) was signed too: 2 in all.
    wait_until(lambda: stats(r)["dkim_signed"] == 2, timeout=10,
               what="both signatures counted")


def test_rewrite_from_then_sign(upstream_factory, relay_to, keys):
    """rewrite_from_header rewrites From: at acceptance, before signing:
    the From: that arrives is rewrite_sender's and the signature, d= its
    domain, covers it (client.test's key is configured too, and unused)."""
    made, zone = keys
    up = upstream_factory(tls="none")
    r = relay_to(up, start=False, smarthost_tls="none",
                 rewrite_sender="support@" + RW_DOMAIN,
                 rewrite_from_header="yes")
    with_key_lines(r, [key_line(made, "rw1", RW_DOMAIN),
                       key_line(made, "ed1")])
    r.start()
    content, _ = make_message("rewritten", frm="Alice <alice@client.test>")
    submit(r, "alice@client.test", ["z@dest.test"], content)
    data = up.wait_messages(1, timeout=30)[0]["data"]
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert b"From: <support@rewritten.test>" in head, head
    assert b"Reply-To: Alice <alice@client.test>" in head, head
    fields = sigs(data)
    assert len(fields) == 1 and b"d=rewritten.test" in fields[0], fields
    assert b"s=rw1" in fields[0]
    assert verify_all(data, zone)[1] == [True]
    # Put the original From: back: the signature no longer holds.
    bad = data.replace(b"From: <support@rewritten.test>",
                       b"From: Alice <alice@client.test>")
    assert verify_all(bad, zone)[1] == [False]


def test_direct_mode_signed_and_verified(world, tmp_path):
    """delivery = direct (test_direct.py's world: dnsmasq with MX records,
    aiosmtpd MX hosts): the message an MX receives verifies, RSA and
    Ed25519, against the keys the same dnsmasq serves."""
    from test_direct import SENDER as DSENDER   # sender@snd.test
    d = str(tmp_path / "dkeys")
    os.mkdir(d, 0o700)
    rsa = genkey(d, "drsa", "rsa")
    ed = genkey(d, "ded", "ed25519")
    w = world(1)
    mx = w.start_mx(0)
    w.start_dns({"mx": [("dk.test", "mx.dk.test", 10)],
                 "hosts": [("mx.dk.test", w.host(0))],
                 "txt": [("drsa._domainkey.snd.test", txt_strings("rsa", rsa[1])),
                         ("ded._domainkey.snd.test",
                          txt_strings("ed25519", ed[1]))]})
    r = w.relayd(start=False)
    with_key_lines(r, ["snd.test drsa %s" % rsa[0],
                       "snd.test ded %s" % ed[0]])
    r.start()
    content, _ = make_message("direct dkim", frm=DSENDER, to="a@dk.test",
                              body=tricky_body())
    submit(r, DSENDER, ["a@dk.test"], content)
    data = mx.wait_messages(1, timeout=30)[0]["data"]

    class DirectZone(Zone):
        def __init__(self, dns):
            self.addr, port = dns.servers.rsplit(":", 1)
            self.port = int(port)
    zone = DirectZone(w.dns)
    n, ok = verify_all(data, zone)
    assert n == 2 and ok == [True, True], ok
    assert verify_all(data.replace(b"last line", b"last lime"), zone)[1] \
        == [False, False]


def test_internationalized_from_domain_signed_with_its_a_labels_key(
        upstream_factory, relay_to, tmp_path):
    """From: J\u00fcrgen <j@B\u00dcCHER.test> (an SMTPUTF8 message): the key
    configured for xn--bcher-kva.test signs, d= carries the A-labels
    (RFC 8616 \u00a74), and dkimpy verifies it against the record at
    ed1._domainkey.xn--bcher-kva.test; a From: domain that is not a
    valid name is not signed, the message still delivered."""
    d = str(tmp_path / "idnkeys")
    os.mkdir(d, 0o700)
    path, p = genkey(d, "ed1", "ed25519")
    zone = Zone(str(tmp_path), [("ed1._domainkey.xn--bcher-kva.test",
                                 txt_strings("ed25519", p))])
    try:
        up = upstream_factory(tls="none")
        r = relay_to(up, start=False, smarthost_tls="none")
        with_key_lines(r, ["xn--bcher-kva.test ed1 %s" % path])
        r.start()
        frm = "J\u00fcrgen <j@B\u00dcCHER.test>"
        content, _ = make_message("idn dkim", frm=frm,
                                  body="Gr\u00fc\u00dfe\r\n".encode())
        submit(r, SENDER, ["one@dest.test"], content,
               mail_options=("SMTPUTF8", "BODY=8BITMIME"))
        bad, _ = make_message("bad idn", frm="x@ab--\u00fc.test")
        submit(r, SENDER, ["two@dest.test"], bad,
               mail_options=("SMTPUTF8", "BODY=8BITMIME"))
        got = up.wait_messages(2, timeout=30)
        by_rcpt = {m["rcpt_tos"][0]: m["data"] for m in got}
        msg = by_rcpt["one@dest.test"]
        (f,) = sigs(msg)
        assert b"d=xn--bcher-kva.test" in f and b"s=ed1" in f, f
        n, ok = verify_all(msg, zone)
        assert n == 1 and ok == [True], ok
        assert verify_all(msg.replace("Gr\u00fc".encode(), b"Gru"),
                          zone)[1] == [False]
        assert sigs(by_rcpt["two@dest.test"]) == []
        assert re.search(r"dkim: signed, d=xn--bcher-kva\.test, s=ed1",
                         r.log_text())
    finally:
        zone.stop()
