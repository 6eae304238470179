"""tests/e2e/test_tls_reload.py - SIGHUP reloads the listeners' certificate
and key without dropping sessions, as after a certbot or acme.sh renewal
in place: new sessions see the new certificate (fingerprints compared),
a session open across the reload (in TLS, mid-transaction) finishes its
message, and a broken new certificate or key keeps the old one in use,
with the reason logged."""
import os
import shutil
import signal

import pytest

from conftest import wait_until
from tlsutil import (TestCA, connect, fingerprint, leaf_fingerprint_of_file,
                     starttls, tls_relayd)

MSG = b"Subject: across a reload\r\n\r\nstill here\r\n.\r\n"


@pytest.fixture
def ca(tmp_path):
    return TestCA(str(tmp_path / "ca"))


class Live:
    """The files relayd is configured with, replaced the way certbot does
    it (new file, then rename over the old name)."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.cert = os.path.join(directory, "fullchain.pem")
        self.key = os.path.join(directory, "privkey.pem")

    def install(self, cert=None, key=None):
        for src, dst in ((cert, self.cert), (key, self.key)):
            if src is None:
                continue
            tmp = dst + ".new"
            shutil.copyfile(src, tmp)
            os.rename(tmp, dst)


def _hup(r, marker):
    before = r.log_text().count(marker)
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: r.log_text().count(marker) > before, timeout=10,
               what="relayd to log %r" % marker)


def _send_rest(c):
    assert c.cmd("DATA").code == 354
    c.send(MSG)
    rep = c.reply()
    assert rep.pair == (250, "2.0.0"), rep


def test_sighup_installs_a_new_certificate(relayd_factory, ca, tmp_path):
    a, b = ca.leaf(tag="a"), ca.leaf(tag="b")
    fa, fb = leaf_fingerprint_of_file(a[0]), leaf_fingerprint_of_file(b[0])
    assert fa != fb
    live = Live(str(tmp_path / "live"))
    live.install(*a)
    r = tls_relayd(relayd_factory, ca, cert=(live.cert, live.key))
    ctx = ca.client_context()

    # Open across the reload: one in TLS mid-transaction, one still in
    # plaintext that will ask for STARTTLS afterwards.
    old = connect(r, "smtps", ctx)
    assert fingerprint(old.sock) == fa
    assert old.cmd("EHLO client.test").code == 250
    assert old.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert old.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
    plain = connect(r, "submission")
    assert "250-STARTTLS" in plain.cmd("EHLO client.test").lines

    live.install(*b)
    _hup(r, "TLS certificate loaded from")
    assert "sha256=%s" % fb.upper() in r.log_text()

    # New sessions, both kinds, get the new certificate.
    new = connect(r, "smtps", ctx)
    assert fingerprint(new.sock) == fb
    assert new.cmd("EHLO client.test").code == 250
    new.close()
    sub = connect(r, "submission")
    sub.cmd("EHLO client.test")
    starttls(sub, ctx)
    assert fingerprint(sub.sock) == fb
    sub.close()
    # A handshake after the reload uses the newest certificate, even for a
    # session that connected before it.
    starttls(plain, ctx)
    assert fingerprint(plain.sock) == fb
    plain.close()

    # The session in TLS across the reload is unharmed.
    _send_rest(old)
    assert old.cmd("QUIT").pair == (221, "2.0.0")
    assert len(r.stored()) == 1


@pytest.mark.parametrize("breakage", ["key-mismatch", "missing", "garbage",
                                      "key-only-renewed"])
def test_broken_new_certificate_keeps_the_old_one(relayd_factory, ca, tmp_path,
                                                  breakage):
    a, b = ca.leaf(tag="a"), ca.leaf(tag="b")
    fa = leaf_fingerprint_of_file(a[0])
    live = Live(str(tmp_path / "live"))
    live.install(*a)
    r = tls_relayd(relayd_factory, ca, cert=(live.cert, live.key))
    ctx = ca.client_context()
    old = connect(r, "smtps", ctx)
    assert old.cmd("EHLO client.test").code == 250
    assert old.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert old.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")

    if breakage == "key-mismatch":
        live.install(cert=b[0])            # the key stays a's
        why = "tls_key_file %s does not match the certificate in %s" % (
            live.key, live.cert)
    elif breakage == "key-only-renewed":
        live.install(key=b[1])             # the certificate stays a's
        why = "does not match the certificate"
    elif breakage == "missing":
        os.unlink(live.cert)
        why = "tls_cert_file %s: No such file or directory" % live.cert
    else:
        with open(live.cert, "w") as f:
            f.write("not a certificate\n")
        why = "tls_cert_file %s: " % live.cert

    _hup(r, "TLS certificate not reloaded")
    log = r.log_text()
    line = [l for l in log.splitlines() if "not reloaded" in l][-1]
    assert why in line, line
    assert "keeping the one loaded before" in line, line

    # New sessions still get the old certificate; the open one finishes.
    new = connect(r, "smtps", ctx)
    assert fingerprint(new.sock) == fa
    new.close()
    sub = connect(r, "submission")
    sub.cmd("EHLO client.test")
    starttls(sub, ctx)
    assert fingerprint(sub.sock) == fa
    sub.close()
    _send_rest(old)
    old.close()

    # Fixed and reloaded again: the new pair is taken.
    live.install(*b)
    _hup(r, "TLS certificate loaded from")
    new = connect(r, "smtps", ctx)
    assert fingerprint(new.sock) == leaf_fingerprint_of_file(b[0])
    new.close()
    assert len(r.stored()) == 1


def test_removing_the_certificate_from_the_config(relayd_factory, ca):
    """tls_cert_file emptied: with an smtps listener the file does not
    load (the listener needs it; keeping the running configuration); with
    STARTTLS listeners only, new sessions get no STARTTLS while sessions
    already in TLS go on."""
    r = tls_relayd(relayd_factory, ca)
    r.conf["tls_cert_file"] = ""
    r.conf["tls_key_file"] = ""
    r.write_conf()
    _hup(r, "keeping the running configuration")
    assert "/smtps is implicit TLS" in r.log_text()
    c = connect(r, "smtps", ca.client_context())
    assert c.cmd("EHLO client.test").code == 250
    c.close()

    r2 = tls_relayd(relayd_factory, ca, modes=("submission",))
    ctx = ca.client_context()
    old = connect(r2, "submission")
    old.cmd("EHLO client.test")
    starttls(old, ctx)
    assert old.cmd("EHLO client.test").code == 250
    assert old.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert old.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
    r2.conf["tls_cert_file"] = ""
    r2.conf["tls_key_file"] = ""
    r2.write_conf()
    _hup(r2, "no TLS for new sessions")
    new = connect(r2, "submission")
    ehlo = new.cmd("EHLO client.test")
    assert "250-STARTTLS" not in ehlo.lines, ehlo
    assert new.cmd("STARTTLS").pair == (454, "4.7.0")
    new.close()
    _send_rest(old)
    old.close()
    assert len(r2.stored()) == 1
