"""tests/e2e/test_tls_listen.py - TLS on relayd's listeners with a test CA
(chain: root -> intermediate -> relay.test; clients trust only the root
and check the name): STARTTLS on a submission listener and implicit TLS
on an smtps listener with smtplib and swaks, the Received header of mail
sent over TLS, STARTTLS not offered without a certificate, TLS 1.2 as the
floor, and the configuration errors."""
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import RELAYD, smtp_connect, wait_until
from tlsutil import (TLS_NAME, TestCA, connect, fingerprint,
                     leaf_fingerprint_of_file, starttls, tls_relayd)

MSG = b"From: a@client.test\r\nTo: b@dest.test\r\nSubject: over TLS\r\n\r\nhi\r\n"


@pytest.fixture
def ca(tmp_path):
    return TestCA(str(tmp_path / "ca"))


class _SMTP(smtplib.SMTP):
    """smtplib checks the certificate against the host it connected to,
    an IP address here; the certificate names relay.test."""

    def starttls(self, context):
        self._host = TLS_NAME
        return super().starttls(context=context)


class _SMTP_SSL(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=TLS_NAME)


def _received(stored):
    """relayd's own Received field (the first line(s) of the file)."""
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    m = re.match(r"Received: (.*?)\r\n(?!\t)", head, re.S)
    assert m, head
    return m.group(1).replace("\r\n\t", " ")


def test_starttls_on_submission_with_smtplib(relayd_factory, ca):
    r = tls_relayd(relayd_factory, ca)
    with _SMTP(r.addr, r.ports["submission"], timeout=10) as s:
        code, text = s.ehlo("client.test")
        assert code == 250 and s.has_extn("starttls"), text
        s.starttls(ca.client_context())
        # RFC 3207 §4.2: the client must EHLO again; STARTTLS is no longer
        # offered once TLS is on.
        code, text = s.ehlo("client.test")
        assert code == 250 and not s.has_extn("starttls"), text
        version, cipher = s.sock.version(), s.sock.cipher()[0]
        assert version in ("TLSv1.2", "TLSv1.3")
        s.sendmail("a@client.test", ["b@dest.test"], MSG)
    stored = list(r.stored().values())
    assert len(stored) == 1
    rec = _received(stored[0])
    # RFC 8314 §4.3 and RFC 3848: the TLS version and cipher, ESMTPS;
    # still no client address or name (received_client = no).
    assert "with ESMTPS (%s %s) id " % (version, cipher) in rec, rec
    assert "127.0.0.1" not in rec and "client.test" not in rec, rec
    assert "[" not in rec, rec
    log = r.log_text()
    assert re.search(r"s=\w+: TLS established: %s %s, sni=relay.test" %
                     (version, re.escape(cipher)), log), log
    assert "to submission" in log


def test_tls12_client_gets_tls12_and_the_header_says_so(relayd_factory, ca):
    r = tls_relayd(relayd_factory, ca)
    ctx = ca.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with _SMTP(r.addr, r.ports["submission"], timeout=10) as s:
        s.ehlo("client.test")
        s.starttls(ctx)
        s.ehlo("client.test")
        assert s.sock.version() == "TLSv1.2"
        cipher = s.sock.cipher()[0]
        # Forward secrecy and AEAD first, in the server's order.
        assert cipher.startswith("ECDHE-") and "GCM" in cipher, cipher
        s.sendmail("a@client.test", ["b@dest.test"], MSG)
    rec = _received(list(r.stored().values())[0])
    assert "with ESMTPS (TLSv1.2 %s) id " % cipher in rec, rec


def test_implicit_tls_on_smtps_with_smtplib(relayd_factory, ca):
    r = tls_relayd(relayd_factory, ca)
    with _SMTP_SSL(r.addr, r.ports["smtps"], timeout=10,
                   context=ca.client_context()) as s:
        assert fingerprint(s.sock) == leaf_fingerprint_of_file(r.cert[0])
        code, text = s.ehlo("client.test")
        assert code == 250 and not s.has_extn("starttls"), text
        s.sendmail("a@client.test", ["b@dest.test"], MSG)
        version, cipher = s.sock.version(), s.sock.cipher()[0]
    rec = _received(list(r.stored().values())[0])
    assert "with ESMTPS (%s %s) id " % (version, cipher) in rec, rec
    assert "to smtps" in r.log_text()


def test_smtps_greets_inside_tls_and_refuses_starttls(relayd_factory, ca):
    r = tls_relayd(relayd_factory, ca)
    with connect(r, "smtps", ca.client_context()) as c:
        assert c.greeting.lines == ["220 relay.test ESMTP relayd"]
        ehlo = c.cmd("EHLO client.test")
        assert ehlo.code == 250 and "STARTTLS" not in ehlo.lines
        assert c.cmd("STARTTLS").pair == (503, "5.5.1")
        assert c.cmd("QUIT").pair == (221, "2.0.0")
        assert c.closed_within(5)


def test_starttls_resets_the_session(relayd_factory, ca):
    r = tls_relayd(relayd_factory, ca)
    with connect(r, "submission") as c:
        assert c.cmd("EHLO client.test").code == 250
        # Not inside a transaction, not with an argument.
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("STARTTLS").pair == (503, "5.5.1")
        assert c.cmd("RSET").pair == (250, "2.0.0")
        assert c.cmd("STARTTLS now").pair == (501, "5.5.4")
        starttls(c, ca.client_context())
        # The EHLO from before TLS is forgotten.
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (503, "5.5.1")
        ehlo = c.cmd("EHLO client.test")
        assert ehlo.code == 250 and "250-STARTTLS" not in ehlo.lines
        assert c.cmd("STARTTLS").pair == (503, "5.5.1")
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(MSG + b".\r\n")
        assert c.reply().pair == (250, "2.0.0")
        assert c.cmd("QUIT").pair == (221, "2.0.0")
    assert len(r.stored()) == 1


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks missing")
@pytest.mark.parametrize("mode", ["submission", "smtps"])
def test_swaks(relayd_factory, ca, mode):
    support = subprocess.run(["swaks", "--support"], capture_output=True)
    if b"TLS supported" not in support.stdout + support.stderr:
        pytest.skip("swaks without TLS (libnet-ssleay-perl)")
    r = tls_relayd(relayd_factory, ca)
    args = ["swaks", "--server", "%s:%d" % (r.addr, r.ports[mode]),
            "--from", "a@client.test", "--to", "b@dest.test",
            "--helo", "client.test", "--tls-verify", "--tls-ca-path", ca.cert,
            "--tls-sni", TLS_NAME, "--timeout", "10"]
    args.append("--tls-on-connect" if mode == "smtps" else "--tls")
    p = subprocess.run(args, capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out + p.stderr.decode(errors="replace")
    assert "TLS started" in out, out
    assert re.search(r"<~  250 2\.0\.0 Ok: queued as", out), out
    assert len(r.stored()) == 1


def test_no_certificate_no_starttls(relayd_factory):
    r = relayd_factory()
    with smtp_connect(r) as c:
        ehlo = c.cmd("EHLO client.test")
        assert ehlo.code == 250
        assert not any("STARTTLS" in l for l in ehlo.lines), ehlo
        rep = c.cmd("STARTTLS")
        assert rep.pair == (454, "4.7.0"), rep
        # The session goes on in plaintext.
        assert c.cmd("NOOP").pair == (250, "2.0.0")


def test_tls11_is_refused(relayd_factory, ca, tmp_path):
    """TLS 1.2 is the floor: a TLS 1.1 ClientHello fails the handshake
    (openssl s_client, with its own security level lowered so that it
    offers 1.1 at all)."""
    r = tls_relayd(relayd_factory, ca)
    p = subprocess.run(
        ["openssl", "s_client", "-connect", "%s:%d" % (r.addr, r.ports["smtps"]),
         "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", TLS_NAME],
        input=b"", capture_output=True, timeout=30)
    assert p.returncode != 0
    assert b"Cipher is (NONE)" in p.stdout or b"alert" in p.stderr, p.stdout
    wait_until(lambda: "TLS handshake failed" in r.log_text(), timeout=10,
               what="the failed handshake in the log")
    assert re.search(r"TLS handshake failed with \[[0-9.]+\]:\d+: "
                     r"(unsupported protocol|no shared cipher|"
                     r"wrong version number)", r.log_text()), r.log_text()


# ---- configuration ---------------------------------------------------------

def _check(conf_path):
    return subprocess.run([RELAYD, "-t", "-c", conf_path], capture_output=True,
                          timeout=30, stdin=subprocess.DEVNULL)


def test_smtps_without_certificate_is_a_config_error(relayd_factory):
    r = relayd_factory(start=False)
    r.conf["listen"] = "%s:%d/smtps" % (r.addr, r.port)
    r.write_conf()
    lineno = [l.split(" =")[0] for l in open(r.conf_path)].index("listen") + 1
    p = _check(r.conf_path)
    assert p.returncode == 1
    want = "%s:%d: listen: %s:%d/smtps is implicit TLS: it needs " \
           "tls_cert_file and tls_key_file" % (r.conf_path, lineno, r.addr,
                                                r.port)
    assert want in p.stderr.decode(), p.stderr


def test_unknown_listener_mode_is_a_config_error(relayd_factory):
    r = relayd_factory(start=False)
    r.conf["listen"] = "%s:%d/lmtp" % (r.addr, r.port)
    r.write_conf()
    p = _check(r.conf_path)
    assert p.returncode == 1
    assert "unknown listener mode 'lmtp'" in p.stderr.decode(), p.stderr


def test_broken_certificate_stops_startup(relayd_factory, ca, tmp_path):
    cert, key = ca.leaf()
    other_cert, other_key = ca.leaf()
    cases = [
        ((str(tmp_path / "missing.crt"), key), "No such file or directory"),
        ((cert, other_key), "does not match the certificate"),
        ((key, key), "tls_cert_file"),       # a key is no certificate
    ]
    for (c, k), why in cases:
        r = tls_relayd(relayd_factory, ca, cert=(c, k), start=False)
        # relayd -t loads them too.
        p = _check(r.conf_path)
        assert p.returncode == 1 and why in p.stderr.decode(), p.stderr
        proc = subprocess.run([RELAYD, "-c", r.conf_path], capture_output=True,
                              timeout=30, stdin=subprocess.DEVNULL)
        assert proc.returncode == 1
        assert why in proc.stderr.decode(), proc.stderr
    r = tls_relayd(relayd_factory, ca, cert=(cert, key), start=False)
    p = _check(r.conf_path)
    assert p.returncode == 0, p.stderr


def test_plaintext_listener_keeps_working_beside_tls(relayd_factory, ca):
    """No suffix = smtp, and smtp offers STARTTLS when a certificate is
    set; the same message goes through in plaintext too."""
    r = tls_relayd(relayd_factory, ca, modes=("smtp", "smtps"))
    with connect(r, "smtp") as c:
        ehlo = c.cmd("EHLO client.test")
        assert "250-STARTTLS" in ehlo.lines, ehlo
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(MSG + b".\r\n")
        assert c.reply().pair == (250, "2.0.0")
    rec = _received(list(r.stored().values())[0])
    assert " with ESMTP id " in rec, rec
    assert os.path.exists(r.cert[0])


def test_large_message_and_pipelining_over_tls(relayd_factory, ca):
    """Flow control holds in TLS: a 6 MB body (many TLS records, more than
    relayd buffers) and a burst of pipelined transactions arrive intact."""
    r = tls_relayd(relayd_factory, ca)
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRST\r\n"
    body = b"Subject: big\r\n\r\n" + line * (6 * 1024 * 1024 // len(line))
    with _SMTP_SSL(r.addr, r.ports["smtps"], timeout=30,
                   context=ca.client_context()) as s:
        s.sendmail("a@client.test", ["b@dest.test"], body)
    with connect(r, "smtps", ca.client_context()) as c:
        c.cmd("EHLO client.test")
        burst = b""
        for i in range(20):
            burst += (b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b%d@dest.test>\r\n"
                      b"DATA\r\n" % i)
            burst += b"Subject: %d\r\n\r\nsmall\r\n.\r\n" % i
        c.send(burst)
        reps = c.replies(20 * 4)
        assert [x.code for x in reps] == [250, 250, 354, 250] * 20, reps
    stored = r.stored()
    assert len(stored) == 21
    big = [v for v in stored.values() if len(v) > 1000000]
    assert len(big) == 1 and big[0].endswith(line * 10)
    assert big[0].count(line) == 6 * 1024 * 1024 // len(line)
