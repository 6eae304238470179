"""tests/e2e/test_smoke.py - One message through smtplib lands in the spool."""
import smtplib


def test_smtplib_message_is_queued(relayd):
    with smtplib.SMTP(relayd.addr, relayd.port, timeout=10) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        s.sendmail("a@b.test", ["c@d.test"], b"Subject: hi\r\n\r\nbody\r\n")
    stored = relayd.stored()
    assert len(stored) == 1
    body = list(stored.values())[0]
    assert body.endswith(b"\r\n\r\nbody\r\n")
    out = relayd.relayctl("list").stdout.decode()
    assert list(stored)[0] in out
