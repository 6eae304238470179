"""tests/e2e/test_received_with.py - The protocol keyword of relayd's own
Received: line (issue 8 §9): RFC 3848 ESMTP, ESMTPS (TLS), ESMTPA (AUTH),
ESMTPSA (both), and for a transaction whose MAIL FROM carried SMTPUTF8
the RFC 6531 §3.7.3 keywords UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA.
Every combination over real sockets: plain and smtps listeners, AUTH
PLAIN with a real credential, an ASCII and a non-ASCII sender."""
import re

import pytest

from authutil import add_user, auth_plain
from tlsutil import TestCA, connect, tls_relayd


@pytest.fixture
def relay(relayd_factory, tmp_path):
    ca = TestCA(str(tmp_path / "ca"))
    r = tls_relayd(relayd_factory, ca, modes=("smtp", "smtps"), start=False,
                   credentials_file=str(tmp_path / "credentials"),
                   auth_plaintext_networks="127.0.0.0/8")
    add_user(r, "app")
    r.start()
    r.ca = ca
    return r


CASES = [
    # (listener, AUTH, sender, SMTPUTF8, keyword)
    ("smtp", False, "a@client.test", False, "ESMTP"),
    ("smtps", False, "a@client.test", False, "ESMTPS"),
    ("smtp", True, "a@client.test", False, "ESMTPA"),
    ("smtps", True, "a@client.test", False, "ESMTPSA"),
    ("smtp", False, "a@client.test", True, "UTF8SMTP"),
    ("smtps", False, "\u00e4@client.test", True, "UTF8SMTPS"),
    ("smtp", True, "\u00e4@client.test", True, "UTF8SMTPA"),
    ("smtps", True, "a@client.test", True, "UTF8SMTPSA"),
]


def test_with_keyword(relay):
    for mode, auth, sender, utf8, want in CASES:
        c = connect(relay, mode, ctx=relay.ca.client_context())
        try:
            assert c.cmd("EHLO client.test").code == 250
            if auth:
                assert auth_plain(c, "app").pair == (235, "2.7.0")
            opt = " SMTPUTF8" if utf8 else ""
            rep = c.cmd(("MAIL FROM:<%s>%s" % (sender, opt)).encode())
            assert rep.pair == (250, "2.1.0"), rep
            assert c.cmd("RCPT TO:<c@dest.test>").pair == (250, "2.1.5")
            assert c.cmd("DATA").code == 354
            c.send(b"Subject: with %s\r\n\r\nbody\r\n.\r\n" % want.encode())
            qid = c.reply().queued_id()
            # The next transaction on the same session, without
            # SMTPUTF8, is back to the RFC 3848 keyword.
            assert c.cmd("MAIL FROM:<b@client.test>").pair == (250, "2.1.0")
            assert c.cmd("RCPT TO:<c@dest.test>").pair == (250, "2.1.5")
            assert c.cmd("DATA").code == 354
            c.send(b"Subject: second\r\n\r\nbody\r\n.\r\n")
            qid2 = c.reply().queued_id()
        finally:
            c.close()
        stored = relay.stored()
        m = re.match(rb"Received: by relay\.test \(relayd\) with (\S+) ",
                     stored[qid])
        assert m and m.group(1).decode() == want, (mode, auth, utf8,
                                                   stored[qid][:200])
        m2 = re.match(rb"Received: by relay\.test \(relayd\) with (\S+) ",
                      stored[qid2])
        assert m2.group(1).decode() == want.replace("UTF8SMTP", "ESMTP"), \
            stored[qid2][:200]
