"""tests/e2e/test_relayctl_send_test.py - `relayctl send-test ADDR` against
a running relayd that delivers to an aiosmtpd smarthost (upstream.py):
the test message is submitted to relayd's listener, its queue id read from
the 250 reply, and the message followed until the smarthost accepts it
(exit 0, its 250 reply shown), answers 451 (exit 75, the reply and the next
retry shown) or 550 (exit 1). Each outcome names the next step. Also: a
relayd that only holds mail (exit 75, "HELD"), relayd not running (exit 1,
says so), a bad address (exit 2)."""
import os
import re
import subprocess

from conftest import RELAYCTL
from conftest_upstream import SENDER, queue_entry

RCPT = "someone@dest.test"


def send_test(relayd, *args, timeout=90):
    r = subprocess.run([RELAYCTL, "-c", relayd.conf_path, "send-test"] +
                       list(args), capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def in_order(text, *parts):
    """Each part (a regex) is found in text after the previous one."""
    pos = 0
    for p in parts:
        m = re.compile(p, re.M).search(text, pos)
        assert m, "%r not found after offset %d in:\n%s" % (p, pos, text)
        pos = m.end()


def accepted_qid(out):
    m = re.search(r"^Accepted as ([0-9A-Z]{16}) by relayd: 250 2\.0\.0 "
                  r"Ok: queued as \1$", out, re.M)
    assert m, out
    return m.group(1)


def test_sent(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", users={"u1": "pw-1"})
    r = relay_to(up)
    rc, out, err = send_test(r, RCPT, "--from", SENDER, "--timeout", "60s")
    assert rc == 0, (rc, out, err)
    qid = accepted_qid(out)
    in_order(out,
             r"^Submitting to relayd at %s:%d as a local application" % (
                 re.escape(r.addr), r.port),
             r"^Accepted as %s" % qid,
             r"^  attempt: to=<%s>, relay=[^ ]*\[%s\]:%d, .*status=sent "
             r"\(250 " % (re.escape(RCPT), re.escape(up.addr), up.port),
             r"^SENT: the receiving server answered: 250 2\.0\.0 Ok: "
             r"queued as \d+$",
             r"^Next: check that the message arrived")
    rec = up.wait_messages(1, match=lambda m: m["rcpt_tos"] == [RCPT])[0]
    assert rec["mail_from"] == SENDER
    data = rec["data"].decode()
    assert re.search(r"^Subject: relayd test message from relay\.test, ",
                     data, re.M), data
    assert re.search(r"^Message-ID: <[^>]+@relay\.test>\r$", data, re.M), data
    assert re.search(r"^Date: ", data, re.M), data


def test_deferred(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", users={"u1": "pw-1"},
                          behaviour={"rcpt": "451 4.3.0 Mailbox busy, later"})
    # A long retry_min, so the next retry is in the future and is shown.
    r = relay_to(up, retry_min="10m", retry_max="1h")
    rc, out, err = send_test(r, RCPT, "--from", SENDER)
    assert rc == 75, (rc, out, err)
    qid = accepted_qid(out)
    in_order(out,
             r"^Accepted as %s" % qid,
             r"^  attempt: to=<%s>, .*status=deferred \(451 4\.3\.0 "
             r"Mailbox busy, later\)$" % re.escape(RCPT),
             r"^DEFERRED: 451 4\.3\.0 Mailbox busy, later$",
             r"^Next retry: \d{4}-\d\d-\d\dT[\d:]+Z \(in \d+[sm]\)",
             r"^Next: relayctl show %s and relayctl log --id %s" % (qid, qid))
    e = queue_entry(r, qid)
    assert e is not None, "a deferred message stays queued"
    # The next step named works: the attempt is in `relayctl log --id`.
    log = r.relayctl("log", "--id", qid).stdout.decode()
    assert "status=deferred (451 4.3.0 Mailbox busy, later)" in log, log
    assert up.messages() == []


def test_bounced(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls", users={"u1": "pw-1"},
                          behaviour={"rcpt": {RCPT: "550 5.1.1 No such user",
                                              "*": "250 2.1.5 Ok"}})
    r = relay_to(up)
    rc, out, err = send_test(r, RCPT, "--from", SENDER)
    assert rc == 1, (rc, out, err)
    qid = accepted_qid(out)
    in_order(out,
             r"^Accepted as %s" % qid,
             r"^  attempt: to=<%s>, .*status=bounced \(550 5\.1\.1 No such "
             r"user\)$" % re.escape(RCPT),
             r"^BOUNCED: 550 5\.1\.1 No such user$",
             r"^Next: the reply above says why")
    assert [m for m in up.messages() if RCPT in m["rcpt_tos"]] == []


def test_held(relayd):
    rc, out, err = send_test(relayd, RCPT, "--from", SENDER, "--timeout", "20s")
    assert rc == 75, (rc, out, err)
    qid = accepted_qid(out)
    in_order(out, r"^Note: delivery = hold", r"^Accepted as %s" % qid,
             r"^HELD: %s stays in the queue \(delivery = hold" % qid,
             r"^Next: set delivery = smarthost or direct")


def test_relayd_not_running(relayd):
    r = relayd
    r.stop()     # its spool stays: only the daemon is missing
    rc, out, err = send_test(r, RCPT)
    assert rc == 1, (rc, out, err)
    assert re.search(r"submitting to relayd at %s:%d: connect to %s:%d: "
                     r"Connection refused" % (re.escape(r.addr), r.port,
                                              re.escape(r.addr), r.port),
                     err), err
    assert "Is relayd running?" in err, err
    assert "Accepted" not in out


def test_bad_address(relayd):
    for bad in ("no-at-sign", "a@b@c", "<x@y>", "x@"):
        rc, out, err = send_test(relayd, bad)
        assert rc == 2, (bad, rc, out, err)
        assert "is not an address" in err, (bad, err)
    rc, out, err = send_test(relayd, RCPT, "--from", "bad from")
    assert rc == 2 and "--from" in err, (rc, err)


def test_listener_that_wants_auth(upstream_factory, relay_to, tmp_path):
    from authutil import add_user
    up = upstream_factory(tls="starttls", users={"u1": "pw-1"})
    # Nobody is trusted: relaying needs AUTH, offered in plaintext to
    # loopback clients.
    r = relay_to(up, start=False, trusted_networks="",
                 auth_plaintext_networks="127.0.0.0/8",
                 credentials_file=str(tmp_path / "credentials"))
    add_user(r, "app", "app-password-1")
    r.start()
    rc, out, err = send_test(r, RCPT, "--from", SENDER)
    assert rc == 1, (rc, out, err)
    assert re.search(r"^relayd refused the message: 554 5\.7\.1 ", out,
                     re.M), out
    assert "or log in: --user NAME --password-file FILE" in out
    assert "Accepted" not in out
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    rc, out, err = send_test(r, RCPT, "--from", SENDER, "--user", "app",
                             "--password-file", str(pw))
    assert rc == 1, (rc, out, err)
    assert re.search(r"AUTH refused by \S+: 535 ", err), err
    pw.write_text("app-password-1\n")
    rc, out, err = send_test(r, RCPT, "--from", SENDER, "--user", "app",
                             "--password-file", str(pw))
    assert rc == 0, (rc, out, err)
    in_order(out, r"^Accepted as ", r"^SENT: ")
    assert "app-password-1" not in out + err
    assert up.wait_messages(1)[0]["rcpt_tos"] == [RCPT]


def test_follows_the_queue_without_a_log(upstream_factory, relay_to):
    """relayctl told there is no log_file (RELAYD_LOG_FILE empty for it
    only): the attempt and the deferral come from the queue index."""
    up = upstream_factory(tls="starttls", users={"u1": "pw-1"},
                          behaviour={"rcpt": "451 4.3.0 Not now"})
    r = relay_to(up, retry_min="10m", retry_max="1h")
    res = subprocess.run([RELAYCTL, "-c", r.conf_path, "send-test", RCPT,
                          "--from", SENDER], capture_output=True, timeout=90,
                         stdin=subprocess.DEVNULL,
                         env=dict(os.environ, RELAYD_LOG_FILE=""))
    out = res.stdout.decode()
    assert res.returncode == 75, (res.returncode, out, res.stderr)
    qid = accepted_qid(out)
    in_order(out, r"^Following %s \(relayd's queue; " % qid,
             r"^  attempt 1: via [^:]+: $",
             r"^    451 4\.3\.0 Not now$",
             r"^DEFERRED: 451 4\.3\.0 Not now$",
             r"^Next retry: ")
    assert "  attempt: to=" not in out
