"""tests/e2e/test_auth_tls.py - SMTP AUTH (RFC 4954) against credentials
made with relayctl: PLAIN and LOGIN inside TLS (STARTTLS on submission,
implicit TLS on smtps) with smtplib and swaks; refused outside TLS (538,
not advertised) unless auth_plaintext_networks allows it; a wrong password
is 535 and never logged; no lockout per credential (a client that failed
waits in the name's slow lane; test_auth_lockout.py has the rest), the
lockout per client address (421, disconnected), released after the
lockout time; credentials file changes picked up without a restart."""
import re
import smtplib
import socket
import subprocess
import time

import pytest

from authutil import (PASSWORD, add_user, auth_login, auth_plain, ctl_user,
                      plain)
from conftest import smtp_connect, wait_until
from tlsutil import TLS_NAME, TestCA, connect, starttls, tls_relayd

MSG = b"From: app@shop.example\r\nTo: b@dest.test\r\nSubject: auth\r\n\r\nhi\r\n"


@pytest.fixture
def ca(tmp_path):
    return TestCA(str(tmp_path / "ca"))


class _SMTP(smtplib.SMTP):
    def starttls(self, context):
        self._host = TLS_NAME
        return super().starttls(context=context)


class _SMTP_SSL(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=TLS_NAME)


def _auth_relayd(factory, ca, tmp_path, **conf):
    creds = str(tmp_path / "credentials")
    conf.setdefault("credentials_file", creds)
    # The client is not trusted: it must AUTH to relay.
    conf.setdefault("trusted_networks", "192.0.2.0/24")
    r = tls_relayd(factory, ca, start=False, **conf)
    add_user(r, "app")
    r.start()
    return r


def _received(stored):
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    m = re.match(r"Received: (.*?)\r\n(?!\t)", head, re.S)
    return m.group(1).replace("\r\n\t", " ")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_over_starttls_with_smtplib(relayd_factory, ca, tmp_path, mech):
    r = _auth_relayd(relayd_factory, ca, tmp_path)
    with _SMTP(r.addr, r.ports["submission"], timeout=10) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")      # not offered in plaintext
        s.starttls(ca.client_context())
        s.ehlo("client.test")
        assert s.has_extn("auth")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        s.user, s.password = "app", PASSWORD
        code, text = s.auth(mech, getattr(s, "auth_" + mech.lower()))
        assert code == 235 and text.startswith(b"2.7.0"), (code, text)
        s.sendmail("app@shop.example", ["b@dest.test"], MSG)
    stored = list(r.stored().values())
    assert len(stored) == 1
    assert " with ESMTPSA (" in _received(stored[0])   # RFC 3848
    log = r.log_text()
    assert re.search(r"s=\w+: AUTH as app: ok", log), log
    assert re.search(r": from=<app@shop.example>, .*auth=app", log), log
    assert PASSWORD not in log and "Y29ycmVjd" not in log


def test_raw_login_flow_and_cancel_over_smtps(relayd_factory, ca, tmp_path):
    r = _auth_relayd(relayd_factory, ca, tmp_path)
    c = connect(r, "smtps", ca.client_context())
    assert "250-AUTH PLAIN LOGIN" in c.cmd("EHLO client.test").lines
    assert c.cmd("AUTH PLAIN").lines == ["334 "]
    assert c.cmd("*").pair == (501, "5.7.0")
    assert c.cmd("AUTH CRAM-MD5").pair == (504, "5.5.4")
    assert c.cmd("AUTH PLAIN !!!").pair == (501, "5.5.2")
    assert auth_login(c, "app").pair == (235, "2.7.0")
    assert auth_plain(c, "app").pair == (503, "5.5.1")   # only once
    assert c.cmd("MAIL FROM:<a@shop.example>").pair == (250, "2.1.0")
    assert c.cmd("RCPT TO:<b@dest.test>").pair == (250, "2.1.5")
    c.close()


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_auth_over_smtps_and_starttls(relayd_factory, ca, tmp_path,
                                            mech):
    r = _auth_relayd(relayd_factory, ca, tmp_path)
    for mode, tls in (("smtps", "--tls-on-connect"), ("submission", "--tls")):
        res = subprocess.run(
            ["swaks", "--server", "%s:%d" % (r.addr, r.ports[mode]), tls,
             "--auth", mech, "--auth-user", "app", "--auth-password",
             PASSWORD, "--from", "app@shop.example", "--to", "b@dest.test",
             "--helo", "client.test", "--timeout", "20"],
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        out = res.stdout.decode()
        assert res.returncode == 0, out + res.stderr.decode()
        assert "235 2.7.0" in out, out
    assert len(r.stored()) == 2


def test_auth_refused_outside_tls(relayd_factory, ca, tmp_path):
    r = _auth_relayd(relayd_factory, ca, tmp_path)
    c = connect(r, "submission")
    assert not any("AUTH" in l for l in c.cmd("EHLO client.test").lines)
    assert auth_plain(c, "app").pair == (538, "5.7.11")
    assert c.cmd("AUTH LOGIN").pair == (538, "5.7.11")
    # Not authenticated, not trusted: submission wants AUTH first.
    assert c.cmd("MAIL FROM:<a@shop.example>").pair == (530, "5.7.0")
    c.close()
    res = subprocess.run(
        ["swaks", "--server", "%s:%d" % (r.addr, r.ports["submission"]),
         "--auth", "PLAIN", "--auth-user", "app", "--auth-password", PASSWORD,
         "--from", "a@shop.example", "--to", "b@dest.test", "--timeout", "20"],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode != 0
    assert r.stored() == {}


def test_auth_plaintext_networks(relayd_factory, ca, tmp_path):
    r = _auth_relayd(relayd_factory, ca, tmp_path,
                     auth_plaintext_networks="127.0.0.0/8")
    c = connect(r, "submission")
    assert "250-AUTH PLAIN LOGIN" in ["250-" + l[4:] for l in
                                      c.cmd("EHLO client.test").lines]
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    c.close()


def test_wrong_password_and_unknown_user(relayd_factory, ca, tmp_path):
    r = _auth_relayd(relayd_factory, ca, tmp_path)
    c = connect(r, "smtps", ca.client_context())
    c.cmd("EHLO client.test")
    assert auth_plain(c, "app", "wrong guess").pair == (535, "5.7.8")
    assert auth_login(c, "nobody", "wrong guess").pair == (535, "5.7.8")
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    c.close()
    log = r.log_text()
    assert re.search(r"s=\w+: AUTH as app: bad password", log), log
    assert re.search(r"s=\w+: AUTH as nobody: unknown", log), log
    assert "wrong guess" not in log and PASSWORD not in log


def _locked_relayd(factory, tmp_path, **conf):
    """AUTH in plaintext from loopback (simpler), small lockout limits."""
    creds = str(tmp_path / "credentials")
    r = factory(start=False, credentials_file=creds,
                trusted_networks="192.0.2.0/24",
                auth_plaintext_networks="127.0.0.0/8", auth_fail_limit=3,
                auth_fail_window="60s", auth_lockout="2s", **conf)
    add_user(r, "app")
    add_user(r, "other")
    r.start()
    return r


def _ehlo(r, source):
    c = smtp_connect(r, source=source)
    assert c.cmd("EHLO client.test").code == 250
    return c


def test_credential_never_locked_out(relayd_factory, tmp_path):
    """Issue 8 §3: failures for a name never lock it for everyone (they
    used to: 454 for the right password from anywhere). A client that
    failed before waits in the name's slow lane; one without failures of
    its own goes straight through."""
    r = _locked_relayd(relayd_factory, tmp_path, auth_slow_delay="10m")
    # Three failures for "app" (the limit) from three addresses: no
    # address is locked (one failure each), nor is the credential.
    for i, source in enumerate(("127.0.0.2", "127.0.0.5", "127.0.0.3")):
        c = _ehlo(r, source)
        assert auth_plain(c, "APP" if i else "app",
                          "bad%d" % i).pair == (535, "5.7.8")
        if i < 2:
            c.close()
    # From 127.0.0.3 (it failed): the right password waits in app's lane.
    c.send(("AUTH PLAIN %s\r\n" % plain("app", PASSWORD)).encode())
    wait_until(lambda: "AUTH as app: client [127.0.0.3] failed before: "
               "waiting in the name's slow lane" in r.log_text(),
               what="the check to wait")
    # From a fresh address: 235 at once, while 127.0.0.3 still waits.
    c4 = _ehlo(r, "127.0.0.4")
    assert auth_plain(c4, "app").pair == (235, "2.7.0")
    c4.close()
    c.no_more(0.2)
    # The operator lifts the slowdown (names match in any case): it goes.
    r.relayctl("lockout", "clear", "APP")
    assert c.reply().pair == (235, "2.7.0")
    c.close()
    # Another credential from a third address is unaffected.
    c = _ehlo(r, "127.0.0.4")
    assert auth_plain(c, "other").pair == (235, "2.7.0")
    c.close()
    log = r.log_text()
    assert "lockout of credential" not in log
    assert "locked out" not in log


def test_lockout_per_client_address(relayd_factory, tmp_path):
    r = _locked_relayd(relayd_factory, tmp_path)
    c = _ehlo(r, "127.0.0.5")
    for name in ("a1", "a2", "a3"):       # three names: no credential locks
        assert auth_plain(c, name, "x").pair == (535, "5.7.8")
    # The address is locked: 421 and the connection closes.
    assert auth_plain(c, "app").pair == (421, "4.7.0")
    assert c.closed_within(5)
    # A new connection from it: the same at the next AUTH.
    c = _ehlo(r, "127.0.0.5")
    assert auth_plain(c, "app").pair == (421, "4.7.0")
    assert c.closed_within(5)
    # Other addresses are fine.
    c = _ehlo(r, "127.0.0.6")
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    c.close()
    # Released after 2 s; the next lockout of that address is twice as long.
    time.sleep(2.2)
    c = _ehlo(r, "127.0.0.5")
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    c.close()
    c = _ehlo(r, "127.0.0.5")
    for name in ("b1", "b2", "b3"):
        assert auth_plain(c, name, "x").pair == (535, "5.7.8")
    c.close()
    log = r.log_text()
    assert "AUTH lockout of client [127.0.0.5] for 2s" in log, log
    assert "AUTH lockout of client [127.0.0.5] for 4s" in log, log


def test_credentials_file_changes_without_restart(relayd_factory, tmp_path):
    creds = str(tmp_path / "credentials")
    r = relayd_factory(start=False, credentials_file=creds,
                       auth_plaintext_networks="127.0.0.0/8",
                       auth_fail_limit=100)
    r.start()
    # No file: relayd runs, AUTH is unavailable (454), logged once.
    c = _ehlo(r, None)
    assert auth_plain(c, "app").pair == (454, "4.7.0")
    c.close()
    assert r.log_text().count("AUTH unavailable") == 1
    # The file appears: picked up at the next AUTH (checked once a second).
    add_user(r, "app")
    time.sleep(1.1)
    c = _ehlo(r, None)
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    c.close()
    assert "credentials loaded from %s: 1 credential" % creds in r.log_text()
    # A new user, then disabling one: both apply without a restart.
    add_user(r, "new", "another password")
    ctl_user(r, "disable", "app")
    time.sleep(1.1)
    c = _ehlo(r, None)
    assert auth_plain(c, "new", "another password").pair == (235, "2.7.0")
    c.close()
    c = _ehlo(r, None)
    assert auth_plain(c, "app").pair == (535, "5.7.8")
    c.close()
    assert re.search(r"AUTH as app: disabled", r.log_text())
    # SIGHUP reads it too.
    ctl_user(r, "enable", "app")
    import signal
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: credentials loaded" in r.log_text(),
               what="the credentials reload")
    c = _ehlo(r, None)
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    c.close()


def test_disconnect_and_shutdown_during_password_check(relayd_factory,
                                                       tmp_path):
    """The check runs on the thread pool for ~0.1 s: a client that leaves
    meanwhile, or a SIGTERM, must find nothing freed under it."""
    r = _locked_relayd(relayd_factory, tmp_path)
    c = _ehlo(r, None)
    c.send(("AUTH PLAIN %s\r\n" % plain("app", PASSWORD)).encode())
    c.close()
    c = _ehlo(r, None)
    assert auth_plain(c, "app").pair == (235, "2.7.0")
    c.close()
    c = _ehlo(r, None)
    c.send(("AUTH PLAIN %s\r\n" % plain("other", PASSWORD)).encode())
    r.stop()    # a clean exit (and no sanitizer report) is checked
    c.close()
    assert "relayd stopped" in r.log_text()
