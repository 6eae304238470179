"""tests/e2e/test_auth_from.py - A credential restricted to some senders
(from=) must also name only allowed authors in the From: header (issue 4
§3): with an allowed envelope sender, a From: at another domain, a missing
From: or a From: listing one disallowed mailbox is refused with 553 5.7.1
after DATA (and after BDAT LAST), nothing is queued, and the refusal is
logged with the credential and the address; an allowed From: is queued.
An unrestricted credential is not checked. smtplib over smtps."""
import re
import smtplib
import socket

import pytest

from authutil import PASSWORD, add_user
from conftest import list_json
from tlsutil import TLS_NAME, TestCA, connect, tls_relayd
from authutil import auth_plain


@pytest.fixture
def ca(tmp_path):
    return TestCA(str(tmp_path / "ca"))


class _SMTP_SSL(smtplib.SMTP_SSL):
    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=TLS_NAME)


@pytest.fixture
def relay(relayd_factory, ca, tmp_path):
    r = tls_relayd(relayd_factory, ca, modes=("smtps",), start=False,
                   credentials_file=str(tmp_path / "credentials"),
                   trusted_networks="192.0.2.0/24")
    add_user(r, "shop", "shop password", "--from-domains",
             "shop.example,noreply@other.example")
    add_user(r, "app")
    r.start()
    return r


def _msg(head):
    return (head + "To: b@dest.test\r\nSubject: from check\r\n\r\nhi\r\n"
            ).encode()


def _sendmail(r, ca, user, password, head, sender="news@shop.example"):
    with _SMTP_SSL(r.addr, r.ports["smtps"], timeout=10,
                   context=ca.client_context()) as s:
        s.ehlo("client.test")
        s.login(user, password)
        s.sendmail(sender, ["b@dest.test"], _msg(head))


def _count(r):
    return list_json(r)["count"]


@pytest.mark.parametrize("head,bad", [
    ("From: Evil <x@evil.example>\r\n", "x@evil.example"),
    ("From: a@shop.example.evil.org\r\n", "a@shop.example.evil.org"),
    ("From: \"news@shop.example\" <x@evil.example>\r\n", "x@evil.example"),
    ("From: news@shop.example,\r\n x@evil.example\r\n", "x@evil.example"),
    ("Sender: news@shop.example\r\n", None),          # no From: at all
    ("From: undisclosed-recipients:;\r\n", None),
    ("From: news@shop.example\r\nFrom: x@evil.example\r\n", None),
])
def test_from_header_refused(relay, ca, head, bad):
    with pytest.raises(smtplib.SMTPDataError) as e:
        _sendmail(relay, ca, "shop", "shop password", head)
    assert e.value.smtp_code == 553, e.value
    assert e.value.smtp_error.startswith(b"5.7.1 "), e.value
    assert _count(relay) == 0
    assert relay.stored() == {}
    log = relay.log_text()
    assert re.search(r"reject: header From: .*auth=shop\)", log), log
    if bad:
        assert "reject: header From: <%s>: address not allowed" % bad in log


def test_from_header_allowed(relay, ca):
    _sendmail(relay, ca, "shop", "shop password",
              "From: \"Shop, Inc.\" <News@SHOP.example>,\r\n"
              " noreply@other.example (the robot)\r\n")
    assert _count(relay) == 1
    stored = list(relay.stored().values())
    assert b"From: \"Shop, Inc.\" <News@SHOP.example>," in stored[0]


def test_from_header_bdat(relay, ca):
    """BDAT LAST ends the data too: the same check, the session goes on."""
    c = connect(relay, "smtps", ca.client_context())
    c.cmd("EHLO client.test")
    assert auth_plain(c, "shop", "shop password").pair == (235, "2.7.0")
    for head, ok in (("From: x@evil.example\r\n", False),
                     ("From: a@shop.example\r\n", True)):
        assert c.cmd("MAIL FROM:<a@shop.example>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.test>").code == 250
        body = _msg(head)
        c.send(b"BDAT %d LAST\r\n" % len(body) + body)
        rep = c.reply()
        want = (250, "2.0.0") if ok else (553, "5.7.1")
        assert rep.pair == want, (head, rep)
    c.close()
    assert _count(relay) == 1


def test_unrestricted_credential_not_checked(relay, ca):
    _sendmail(relay, ca, "app", PASSWORD, "From: x@evil.example\r\n",
              sender="x@evil.example")
    _sendmail(relay, ca, "app", PASSWORD, "", sender="x@evil.example")
    assert _count(relay) == 2
