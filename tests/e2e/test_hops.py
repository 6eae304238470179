"""tests/e2e/test_hops.py - The hop limit (issue 9 §3, hop_limit). Scrubbing
removes the Received fields MTAs count hops with, so relayd counts them
first and puts, where each stood, a line naming only itself: the count
survives. Two relayds in smarthost mode pointing at each other pass one
message back and forth, the count growing by one a pass, until one of
them refuses it with 554 5.4.6 at the end of DATA; the other bounces it to
the sender, that bounce (sender <>) loops the same way and is dropped at
its own limit, and both queues end empty. A message arriving with 60
Received fields is refused (DATA and BDAT), nothing queued; one with 10
is stored with relayd's ten origin-free lines and nothing of its origin.
hop_limit moves the boundary. A loop between relayd and a real Postfix
(a private instance, bench/benchlib.py's, relayhost = relayd) is stopped by
Postfix's own hopcount_limit, which sees the count grow by two a pass."""
import os
import pwd
import re
import shutil
import socket
import sys
import tempfile

import pytest

from conftest import no_unfinished, smtp_connect, wait_until
from conftest_upstream import (SENDER, make_message, queue_list, submit,
                               wait_log, wait_queue_empty)

DATE_RE = rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000"
HOP = rb"Received: by relay\.test \(relayd: earlier hop, details removed\); "
REFUSED = (r"554 5\.4\.6 Too many hops \((\d+) Received: header fields, "
           r"limit (\d+)\), mail loop suspected")


def trace(n):
    """n Received fields as MTAs write them, folded, each naming a host,
    an address, an id and a time relayd must not pass on."""
    return b"".join(
        b"%s: from origin%d.corp.test (origin%d.corp.test [10.77.%d.%d])\r\n"
        b"\tby mx%d.corp.test (Postfix) with ESMTP id SECRETID%d\r\n"
        b"\tfor <c@dest.test>; Tue, 2 Jan 2024 03:04:%02d +0100\r\n"
        % (b"Received" if i % 2 else b"RECEIVED", i, i, i // 250, i % 250,
           i, i, i % 60)
        for i in range(n))


def accepted_hops(r, sender):
    """hops=N of each message relayd accepted from sender, in log order."""
    pat = re.compile(r": from=<%s>, .*\bhops=(\d+)\b" % re.escape(sender))
    return [int(m.group(1)) for m in map(pat.search, r.log_text().splitlines())
            if m]


def data(r, content):
    """One message to c@dest.test over DATA; returns the final reply."""
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<c@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(content + b".\r\n")
        rep = c.reply()
        # Refused or not, the session goes on.
        assert c.cmd("NOOP").pair == (250, "2.0.0")
        return rep


def test_loop_between_two_relayds_is_stopped(relayd_factory):
    # A's smarthost is B and B's is A, plain SMTP, no AUTH: each trusts
    # the other's 127/8 address (trusted_networks' default).
    a = relayd_factory(start=False, delivery="smarthost", smarthost_tls="none",
                       retry_min="1s", retry_max="2s",
                       delivery_timeout="10s")
    b = relayd_factory(start=False, delivery="smarthost", smarthost_tls="none",
                       retry_min="1s", retry_max="2s",
                       delivery_timeout="10s")
    for x, y in ((a, b), (b, a)):
        x.conf["smarthost"] = "%s:%d" % (y.addr, y.port)
        x.write_conf()
    a.start()
    b.start()
    content, _ = make_message("loop", to="loop@dest.test")
    submit(a, SENDER, ["loop@dest.test"], content)

    # The message goes round until a relayd sees it with 50 Received
    # fields (the default hop_limit): A took it with 0, B with 1, A with
    # 2 ... B with 49, and A refuses it at the end of DATA.
    wait_log(a, r"reject: DATA: " + REFUSED, timeout=120)
    got_a, got_b = accepted_hops(a, SENDER), accepted_hops(b, SENDER)
    assert got_a == list(range(0, 50, 2)), got_a
    assert got_b == list(range(1, 50, 2)), got_b
    m = re.search(REFUSED, a.log_text())
    assert m.groups() == ("50", "50"), m.group(0)
    # B, whose delivery was refused, bounces it to the sender as it
    # bounces any refused message: status=bounced with A's reply, and a
    # non-delivery notification.
    bounced = wait_log(b, r"(\w{16}): to=<loop@dest\.test>, .*dsn=5\.4\.6, "
                          r"status=bounced \(" + REFUSED)
    qid = bounced[0].group(1)
    wait_log(b, r"%s: sender non-delivery notification: \w{16}" % qid)
    # That bounce (sender <>) loops the same way and is stopped the same
    # way; with no postmaster it is then dropped. Nothing is left
    # anywhere: the loop has ended.
    wait_until(lambda: "non-delivery notification dropped: the sender is "
               "<>" in a.log_text() + b.log_text(), timeout=120,
               what="the looping bounce to be dropped")
    null_hops = accepted_hops(a, "") + accepted_hops(b, "")
    assert sorted(null_hops) == list(range(min(null_hops), 50)), null_hops
    refusals = re.findall(r"reject: DATA: " + REFUSED,
                          a.log_text() + b.log_text())
    assert len(refusals) == 2, refusals
    wait_queue_empty(a, timeout=60)
    wait_queue_empty(b, timeout=60)
    assert queue_list(a) == [] and queue_list(b) == []


def test_sixty_received_refused_ten_accepted(relayd):
    # 60: refused at the end of DATA, and nothing of it kept.
    content = trace(60) + b"Subject: s\r\nFrom: a@client.test\r\n\r\nbody\r\n"
    rep = data(relayd, content)
    assert rep.pair == (554, "5.4.6"), rep
    assert rep.text == ("Too many hops (60 Received: header fields, limit "
                        "50), mail loop suspected"), rep
    assert relayd.stored() == {}
    assert no_unfinished(relayd) == []
    assert queue_list(relayd) == []

    # The same through BDAT LAST.
    with smtp_connect(relayd) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<c@dest.test>").pair == (250, "2.1.5")
        half = len(content) // 2
        c.send(b"BDAT %d\r\n" % half + content[:half] +
               b"BDAT %d LAST\r\n" % (len(content) - half) + content[half:])
        reps = c.replies(2)
        assert reps[0].pair == (250, "2.0.0"), reps
        assert reps[1].pair == (554, "5.4.6"), reps
        assert "(60 Received: header fields, limit 50)" in reps[1].text
    assert relayd.stored() == {}
    assert no_unfinished(relayd) == []
    assert len(re.findall(r"reject: (DATA|BDAT[^:]*): " + REFUSED,
                          relayd.log_text())) == 2, relayd.log_text()[-2000:]

    # 10: accepted; stored with relayd's own Received first, then one
    # origin-free line for each of the ten, where they stood.
    content = trace(10) + b"Subject: s\r\nFrom: a@client.test\r\n\r\nbody\r\n"
    rep = data(relayd, content)
    assert rep.pair == (250, "2.0.0"), rep
    qid = rep.queued_id()
    msg = relayd.stored()[qid]
    assert re.fullmatch(
        rb"Received: by relay\.test \(relayd\) with ESMTP id " + qid.encode()
        + rb"\r\n\tfor <c@dest\.test>; (?P<d>" + DATE_RE + rb")\r\n" +
        (HOP + rb"(?P=d)\r\n") * 10 +
        rb"Subject: s\r\nFrom: a@client\.test\r\n"
        rb"Message-ID: <" + qid.encode() + rb"@relay\.test>\r\n"
        rb"Date: (?P=d)\r\n\r\nbody\r\n", msg), msg
    for gone in (b"origin", b"corp", b"10.77.", b"SECRETID", b"mx",
                 b"Postfix", b"2024", b"+0100", b"127."):
        assert gone not in msg, gone
    assert re.search(r"%s: from=<a@client\.test>, .*scrubbed=10, hops=10 "
                     % qid, relayd.log_text()), relayd.log_text()[-2000:]


def test_hop_limit_key(relayd_factory):
    r = relayd_factory(hop_limit=3)
    body = b"Subject: s\r\n\r\nbody\r\n"
    rep = data(r, trace(2) + body)
    assert rep.pair == (250, "2.0.0"), rep
    assert r.stored()[rep.queued_id()].count(b"\r\nReceived: ") == 2
    rep = data(r, trace(3) + body)
    assert rep.pair == (554, "5.4.6"), rep
    assert "(3 Received: header fields, limit 3)" in rep.text, rep
    assert len(r.stored()) == 1
    # Received fields kept (not in scrub_headers) count the same.
    k = relayd_factory(hop_limit=3, scrub_headers="X-Originating-IP")
    rep = data(k, trace(3) + body)
    assert rep.pair == (554, "5.4.6"), rep
    rep = data(k, trace(2) + body)
    assert rep.pair == (250, "2.0.0"), rep
    assert trace(2) in k.stored()[rep.queued_id()]


def _postfix_instance(root, addr, port, relay):
    """A private Postfix on addr:port that relays everything it gets from
    127/8 to relay (HOST:PORT), with the default hopcount_limit (50)."""
    sys.dont_write_bytecode = True     # no __pycache__ in bench/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(
        __file__)), "..", "..", "bench"))
    try:
        import benchlib
    finally:
        sys.path.pop(0)
    main_cf = """# generated by tests/e2e/test_hops.py
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = {addr}
inet_protocols = ipv4
myhostname = postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
maillog_file = {root}/log/postfix.log
maillog_file_prefixes = {root}
biff = no
append_dot_mydomain = no
relayhost = [{rhost}]:{rport}
smtp_dns_support_level = disabled
""".format(root=root, addr=addr, rhost=relay[0], rport=relay[1])
    master_cf = benchlib.postfix_master_cf(port, extra=("smtp",),
                                           by="tests/e2e/test_hops.py",
                                           host=addr)
    return benchlib.PostfixInstance(root, main_cf, master_cf)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("postfix", path=
                    "/usr/sbin:/usr/bin:/sbin:/bin"), reason="needs root "
                    "and Postfix (a private instance)")
def test_loop_through_postfix_is_stopped(relayd_factory):
    pwd.getpwnam("postfix")
    # Postfix listens only on an address an interface has: 127.0.0.1.
    addr = "127.0.0.1"
    with socket.socket() as sk:
        sk.bind((addr, 0))
        port = sk.getsockname()[1]
    a = relayd_factory(start=False, delivery="smarthost", smarthost_tls="none",
                       smarthost="%s:%d" % (addr, port), retry_min="1s",
                       retry_max="2s", delivery_timeout="10s")
    root = tempfile.mkdtemp(prefix="relayd-e2e-postfix-")
    os.chmod(root, 0o755)
    pf = _postfix_instance(root, addr, port, (a.addr, a.port))
    try:
        a.start()
        pf.start(port, host=addr)
        content, _ = make_message("loop via postfix", to="loop@dest.test")
        submit(a, SENDER, ["loop@dest.test"], content)
        # Each pass relayd sends one Received more than it got (its own),
        # and Postfix adds its own: relayd takes the message with 0, 2,
        # ... 48. With 49 from relayd and its own, Postfix counts 50, its
        # hopcount_limit, and refuses it; relayd bounces it.
        # (Postfix says "554 5.4.0 Error: too many hops".)
        bounced = wait_log(a, r"(\w{16}): to=<loop@dest\.test>, .*"
                              r"dsn=5\.4\.\d, status=bounced \(554 5\.4\.\d "
                              r"[^)]*too many hops", timeout=120)
        assert accepted_hops(a, SENDER) == list(range(0, 50, 2)), \
            accepted_hops(a, SENDER)
        qid = bounced[0].group(1)
        wait_log(a, r"%s: sender non-delivery notification: \w{16}" % qid)
        # The bounce (sender <>) loops the same way until Postfix stops
        # it; then it is dropped, and nothing is left on either side.
        wait_log(a, r"non-delivery notification dropped: the sender is <>",
                 timeout=120)
        wait_queue_empty(a, timeout=60)
        wait_until(lambda: pf.queued() == 0, timeout=60,
                   what="Postfix's queue to empty")
        # relayd never refused: the loop was stopped by Postfix's count.
        assert "5.4.6 Too many hops" not in "\n".join(
            x for x in a.log_text().splitlines() if "reject:" in x)
    finally:
        pf.stop()
        shutil.rmtree(root, ignore_errors=True)
