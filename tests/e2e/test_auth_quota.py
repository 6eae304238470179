"""tests/e2e/test_auth_quota.py - Per-credential quotas (issue 4 §3 and
§4): a credential made with `relayctl user add --hourly 2` sends two
messages, then MAIL gets 450 4.7.1, and still does after relayd restarts
on the same spool (the counters live in the spool's LMDB index); one with
`--daily 3` the same on its third; other credentials and trusted clients
are unaffected. Two sessions racing for a credential's last unit: the
charge before the commit lets one through, the other's body gets 450 4.7.1
and nothing is queued. Each refusal is logged with the credential's name.

AUTH is in plaintext from loopback (auth_plaintext_networks) to keep it
simple; clients bind to 127.0.0.2 (not trusted), the trusted client is
127.0.0.1."""
import re
import time

from authutil import add_user, auth_plain
from conftest import no_unfinished, smtp_connect

MSG = b"Subject: quota\r\n\r\nhi\r\n.\r\n"
QUOTA = (450, "4.7.1")
QUOTA_TEXT = "Sending quota exceeded for this credential, try again later"


def _away_from_boundary():
    """Quotas count fixed UTC hours: a test that would cross an hour's end
    waits for the next hour instead of seeing its counts reset."""
    left = 3600 - time.time() % 3600
    if left < 30:
        time.sleep(left + 1)


def _relayd(factory, tmp_path):
    r = factory(start=False, credentials_file=str(tmp_path / "credentials"),
                trusted_networks="127.0.0.1/32",
                auth_plaintext_networks="127.0.0.0/8")
    add_user(r, "hourly2", "pw hourly", "--hourly", "2")
    add_user(r, "daily3", "pw daily", "--daily", "3")
    add_user(r, "free", "pw free")
    add_user(r, "last1", "pw last", "--hourly", "1", "--daily", "5")
    r.start()
    return r


def _session(r, user=None, password=None, source="127.0.0.2"):
    c = smtp_connect(r, source=source)
    assert c.cmd("EHLO client.test").code == 250
    if user:
        assert auth_plain(c, user, password).pair == (235, "2.7.0")
    return c


def _send(c, expect=(250, "2.0.0")):
    assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
    assert c.cmd("RCPT TO:<b@dest.example>").pair == (250, "2.1.5")
    assert c.cmd("DATA").code == 354
    c.send(MSG)
    rep = c.reply()
    assert rep.pair == expect, rep
    return rep


def _refused_at_mail(c):
    rep = c.cmd("MAIL FROM:<a@client.test>")
    assert rep.pair == QUOTA and QUOTA_TEXT in rep.text, rep
    # The transaction was refused whole: RCPT has no MAIL to go with.
    assert c.cmd("RCPT TO:<b@dest.example>").pair == (503, "5.5.1")


def test_hourly_quota_then_refused_and_after_restart(relayd_factory,
                                                     tmp_path):
    _away_from_boundary()
    r = _relayd(relayd_factory, tmp_path)
    c = _session(r, "hourly2", "pw hourly")
    _send(c)
    _send(c)
    _refused_at_mail(c)
    # RSET and another try: still over; the session is not closed for it.
    assert c.cmd("RSET").code == 250
    _refused_at_mail(c)
    assert c.cmd("QUIT").code == 221
    assert len(r.stored()) == 2
    assert re.search(r"s=\w+: quota: credential hourly2 over its hourly "
                     r"limit \(2/2\): 450 4\.7\.1", r.log_text()), r.log_text()
    assert re.search(r"s=\w+: reject: MAIL FROM:<a@client.test>: 450 4\.7\.1 "
                     r"Sending quota exceeded.*auth=hourly2", r.log_text())

    # Another credential, and a trusted client without AUTH: unaffected.
    c = _session(r, "free", "pw free")
    for _ in range(3):
        _send(c)
    c.close()
    c = _session(r, source="127.0.0.1")
    for _ in range(3):
        _send(c)
    c.close()
    assert len(r.stored()) == 8

    # The counters survive a restart on the same spool.
    r.stop()
    r.start()
    c = _session(r, "hourly2", "pw hourly")
    _refused_at_mail(c)
    c.close()
    # The name is case-insensitive: "HOURLY2" is the same credential and
    # the same quota.
    c = _session(r, "HOURLY2", "pw hourly")
    _refused_at_mail(c)
    c.close()
    c = _session(r, "free", "pw free")
    _send(c)
    c.close()
    assert len(r.stored()) == 9


def test_daily_quota(relayd_factory, tmp_path):
    r = _relayd(relayd_factory, tmp_path)
    for _ in range(3):
        c = _session(r, "daily3", "pw daily")
        _send(c)
        c.close()
    c = _session(r, "daily3", "pw daily")
    _refused_at_mail(c)
    c.close()
    assert len(r.stored()) == 3
    assert re.search(r"s=\w+: quota: credential daily3 over its daily "
                     r"limit \(3/3\): 450 4\.7\.1", r.log_text()), r.log_text()
    r.stop()
    r.start()
    c = _session(r, "daily3", "pw daily")
    _refused_at_mail(c)
    c.close()


def test_race_for_the_last_unit(relayd_factory, tmp_path):
    """Both sessions pass MAIL (one unit left); the charge before the
    commit is atomic: one message is queued, the other body gets 450 4.7.1
    and is not queued."""
    _away_from_boundary()
    r = _relayd(relayd_factory, tmp_path)
    a = _session(r, "last1", "pw last")
    b = _session(r, "last1", "pw last")
    for c in (a, b):
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<b@dest.example>").pair == (250, "2.1.5")
    for c in (a, b):
        assert c.cmd("DATA").code == 354
    a.send(MSG)
    ra = a.reply()
    assert ra.pair == (250, "2.0.0"), ra
    b.send(MSG)
    rb = b.reply()
    assert rb.pair == QUOTA and QUOTA_TEXT in rb.text, rb
    # The refused session goes on: its next MAIL is refused at once.
    _refused_at_mail(b)
    a.close()
    b.close()
    assert list(r.stored()) == [ra.queued_id()]
    assert re.search(r"\w+: quota: credential last1 over its hourly limit "
                     r"\(1/1\): 450 4\.7\.1 \(s=\w+\)", r.log_text()), \
        r.log_text()
    # The refused body left nothing behind in the spool.
    assert no_unfinished(r) == []
