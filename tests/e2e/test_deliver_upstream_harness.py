"""tests/e2e/test_deliver_upstream_harness.py - The upstream smarthost the
delivery tests rely on, checked with smtplib alone (no relayd): STARTTLS
and implicit TLS with the test CA, AUTH PLAIN and LOGIN (one offered at a
time, only after TLS), byte-exact recording with nothing added, the null
sender, and the scripted behaviours (reply lists, drop in DATA, withheld
greeting, 421)."""
import smtplib
import socket
import ssl

from conftest_upstream import make_message
from upstream import TLS_NAME

USER, PASSWORD = "relay-user", "harness-secret"


class SMTP(smtplib.SMTP):
    """smtplib names the server by its address for TLS; the test
    certificates carry only smarthost.test."""

    def starttls(self, context=None):
        host, self._host = self._host, TLS_NAME
        try:
            return super().starttls(context=context)
        finally:
            self._host = host


class SMTPS(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=TLS_NAME)


def ctx(test_ca):
    return ssl.create_default_context(cafile=test_ca.ca_cert)


def test_starttls_auth_plain_and_exact_recording(upstream_factory, test_ca):
    up = upstream_factory(tls="starttls", users={USER: PASSWORD},
                          mechs=("PLAIN",))
    dots = (b".\r\n..\r\n.leading dot\r\n...three\r\n. space\r\n"
            b"line\r\n.\r\nend\r\n")
    m1, mid1 = make_message("dots", body=dots)
    m2, mid2 = make_message("bounce", body=b"no sender\r\n")
    with SMTP(up.addr, up.port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls") and not s.has_extn("auth")
        assert s.docmd("MAIL FROM:<early@client.test>")[0] == 530
        s.starttls(context=ctx(test_ca))
        s.ehlo("client.test")
        assert s.esmtp_features["auth"].split() == ["PLAIN"]
        assert s.docmd("AUTH LOGIN")[0] == 504
        try:
            s.login(USER, "wrong")
            raise AssertionError("a wrong password was accepted")
        except smtplib.SMTPAuthenticationError as e:
            assert e.smtp_code == 535
        s.login(USER, PASSWORD)
        assert s.sendmail("a@client.test", ["x@dest.test", "y@dest.test"],
                          m1) == {}
        code, _ = s.mail("")
        assert code == 250
        assert s.rcpt("a@client.test")[0] == 250
        assert s.data(m2)[0] == 250
    got = up.wait_messages(2)
    assert [g["data"] for g in got] == [m1, m2]
    assert got[0]["mail_from"] == "a@client.test"
    assert got[0]["rcpt_tos"] == ["x@dest.test", "y@dest.test"]
    assert got[1]["mail_from"] == "" and got[1]["rcpt_tos"] == ["a@client.test"]
    for g in got:
        assert g["tls"]["version"] in ("TLSv1.2", "TLSv1.3"), g["tls"]
        assert g["auth_user"] == USER
    (conn,) = up.connections()
    assert up.commands_in_clear() == [(1, "EHLO"), (1, "MAIL"), (1, "STARTTLS")]
    assert up.mail_in_clear() == [(1, "MAIL")]
    assert [(a["mech"], a["ok"], a["tls"]) for a in conn["auth"]] == \
        [("PLAIN", False, True), ("PLAIN", True, True)]
    assert conn["messages"] == 2 and conn["tls"] is not None


def test_implicit_tls_auth_login_and_rejected_certificate(upstream_factory,
                                                          test_ca):
    up = upstream_factory(tls="implicit", users={USER: PASSWORD},
                          mechs=("LOGIN",))
    msg, _ = make_message("implicit")
    with SMTPS(up.addr, up.port, context=ctx(test_ca), timeout=10) as s:
        s.ehlo("client.test")
        assert s.esmtp_features["auth"].split() == ["LOGIN"]
        assert not s.has_extn("starttls")
        assert s.docmd("MAIL FROM:<a@client.test>")[0] == 530
        s.login(USER, PASSWORD)
        s.sendmail("a@client.test", ["x@dest.test"], msg)
    # A client that checks for another name gives up in the handshake.
    c = ssl.create_default_context(cafile=test_ca.ca_cert)
    sock = socket.create_connection((up.addr, up.port), timeout=10)
    try:
        c.wrap_socket(sock, server_hostname="other.test")
        raise AssertionError("handshake succeeded for the wrong name")
    except ssl.SSLCertVerificationError:
        pass
    finally:
        sock.close()
    (rec,) = up.wait_messages(1)
    assert rec["data"] == msg and rec["auth_user"] == USER and rec["tls"]
    conns = up.wait_connections(2)
    assert conns[0]["auth"][0]["mech"] == "LOGIN"
    assert [x["verb"] for x in conns[0]["commands"]][:3] == \
        ["EHLO", "MAIL", "AUTH"]
    assert up.commands_in_clear() == []
    assert conns[1]["commands"] == [] and conns[1]["tls"] is None


def test_scripted_behaviour(upstream_factory):
    up = upstream_factory(tls="none", behaviour={
        "rcpt": {"bad@dest.test": "550 5.1.1 no such user"},
        "data": {"<>": "250 2.0.0 dsn ok",
                 "*": ["451 4.3.0 try later", "451 4.3.0 try later"]}})
    msg, _ = make_message("scripted")
    with SMTP(up.addr, up.port, timeout=10) as s:
        s.ehlo("client.test")
        replies = []
        for _ in range(3):
            s.mail("a@client.test")
            assert s.rcpt("bad@dest.test")[0] == 550
            assert s.rcpt("ok@dest.test")[0] == 250
            replies.append(s.data(msg)[0])
        assert replies == [451, 451, 250]
        s.mail("")
        s.rcpt("a@client.test")
        assert s.data(msg) == (250, b"2.0.0 dsn ok")
    recs = up.messages(all=True)
    assert [r["accepted"] for r in recs] == [False, False, True, True]
    assert recs[0]["rcpt_rejected"] == [["bad@dest.test",
                                         "550 5.1.1 no such user"]]
    assert [r["data"] for r in up.messages()] == [msg, msg]

    # Dropped in DATA: no reply, no message recorded.
    up.set_behaviour({"drop_in_data": 1000})
    big, _ = make_message("dropped", body=b"x" * 70000 + b"\r\n")
    with SMTP(up.addr, up.port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("a@client.test")
        s.rcpt("ok@dest.test")
        try:
            s.data(big)
            raise AssertionError("DATA was answered")
        except (smtplib.SMTPServerDisconnected, OSError):
            pass
    assert len(up.messages(all=True)) == 4
    assert up.connections()[-1]["dropped_in_data"] >= 1000

    # A withheld greeting: the client's timeout ends it.
    up.set_behaviour({"greeting": "none"})
    try:
        SMTP(up.addr, up.port, timeout=1)
        raise AssertionError("got a greeting")
    except (smtplib.SMTPServerDisconnected, socket.timeout):
        pass

    # 421 is sent, then the connection is closed.
    up.set_behaviour({"mail": "421 4.3.2 going down"})
    s = SMTP(up.addr, up.port, timeout=10)
    s.ehlo("client.test")
    assert s.mail("a@client.test")[0] == 421
    try:
        s.noop()
        raise AssertionError("still open after 421")
    except smtplib.SMTPServerDisconnected:
        pass
    s.close()
