"""
tests/e2e/conftest_upstream.py - Fixtures and helpers for the delivery
tests (smarthost mode): the test CA, upstream smarthosts (upstream.py),
relayd pointed at one, and the relay-side helpers those tests share
(submit a message, read the queue, the delivery log lines, DSNs).
conftest.py imports this module's fixtures.

Fixtures:
  test_ca                     session: ScratchCA (ca_cert, certs[...])
  upstream_factory(**kw)      a started Upstream (kw: tls, cert, users,
                              mechs, behaviour, endpoint, start)
  relay_to(upstream, **conf)  a started Relayd delivering to it: delivery
                              smarthost, its address and TLS mode, the test
                              CA, smarthost_tls_name smarthost.test,
                              retry_min 1s, retry_max 2s, delivery_timeout
                              10s, and the upstream's first user (password
                              in a file, or env with password_via="env");
                              a conf value of None leaves that key out
"""
import email
import email.policy
import json
import os
import re
import smtplib
import subprocess
import time
import uuid

import pytest

from conftest import wait_until
from dsn import parse_dsn
from upstream import TLS_NAME, Upstream, make_test_ca, new_upstream_dir

__all__ = ["test_ca", "upstream_factory", "relay_to",
           "pytest_runtest_makereport"]

SENDER = "sender@client.test"


# ---- fixtures ------------------------------------------------------------

@pytest.fixture(scope="session")
def test_ca(tmp_path_factory):
    return make_test_ca(str(tmp_path_factory.mktemp("ca")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When a delivery test fails, its report ends with the tail of each
    relayd log and upstream stderr it used (their files are removed at
    teardown)."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    for i, r in enumerate(getattr(item, "_delivery_relays", [])):
        rep.sections.append(("relayd %d log (tail)" % i, r.log_text()[-6000:]))
    for i, u in enumerate(getattr(item, "_delivery_upstreams", [])):
        rep.sections.append(("upstream %d %s (tail)" % (i, u.smarthost),
                             u.stderr_text()[-4000:]))


@pytest.fixture
def upstream_factory(test_ca, request):
    made = []
    request.node._delivery_upstreams = made

    def make(start=True, **kw):
        u = Upstream(new_upstream_dir(), test_ca, **kw)
        made.append(u)
        if start:
            u.start()
        return u

    yield make
    errors = []
    for u in made:
        try:
            u.stop()
        except AssertionError as e:
            errors.append(str(e))
    for u in made:
        subprocess.run(["rm", "-rf", u.workdir], check=False)
    if errors:
        raise AssertionError("\n".join(errors))


@pytest.fixture
def relay_to(upstream_factory, relayd_factory, test_ca, tmp_path, request):
    # upstream_factory comes first so that relayd is stopped before the
    # upstreams are.
    relays = request.node._delivery_relays = []

    def make(upstream, start=True, env=None, spool=None, user=None,
             password=None, password_via="file", **conf):
        base = {
            "delivery": "smarthost",
            "smarthost": upstream.smarthost,
            "smarthost_tls": upstream.tls,
            "smarthost_tls_ca": test_ca.ca_cert,
            "smarthost_tls_name": TLS_NAME,
            "retry_min": "1s",
            "retry_max": "2s",
            "delivery_timeout": "10s",
        }
        env = dict(env or {})
        if upstream.users:
            if user is None:
                user = sorted(upstream.users)[0]
            if password is None:
                password = upstream.users[user]
        if user is not None:
            base["smarthost_user"] = user
            if password_via == "env":
                env["RELAYD_SMARTHOST_PASSWORD"] = password
            else:
                path = str(tmp_path / ("password-%s" % uuid.uuid4().hex[:8]))
                write_password_file(path, password)
                base["smarthost_password_file"] = path
        base.update(conf)
        base = {k: v for k, v in base.items() if v is not None}
        r = relayd_factory(start=False, spool=spool, **base)
        relays.append(r)
        if start:
            r.start(env=env or None)
        return r

    return make


def write_password_file(path, password):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(password + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# ---- messages in ---------------------------------------------------------

def make_message(subject, body=b"Hello.\r\n", frm=SENDER, to="rcpt@dest.test",
                 headers=()):
    """A message with CRLF line ends and a unique Message-ID; returns
    (bytes, message_id)."""
    mid = "<%s@client.test>" % uuid.uuid4().hex
    lines = ["From: %s" % frm, "To: %s" % to, "Subject: %s" % subject,
             "Message-ID: %s" % mid, "Date: Sat, 01 Jun 2024 12:00:00 +0000"]
    lines += list(headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + body, mid


def submit(relayd, sender, rcpts, content, mail_options=(), rcpt_options=None):
    """Sends one message to relayd with smtplib; returns its queue id.
    rcpt_options: {rcpt: [options]}."""
    with smtplib.SMTP(relayd.addr, relayd.port, timeout=30) as s:
        code, msg = s.ehlo("client.test")
        assert code == 250, (code, msg)
        code, msg = s.mail(sender, list(mail_options))
        assert code == 250, ("MAIL", sender, code, msg)
        for r in rcpts:
            code, msg = s.rcpt(r, list((rcpt_options or {}).get(r, [])))
            assert code == 250, ("RCPT", r, code, msg)
        code, msg = s.data(content)
        assert code == 250, ("DATA", code, msg)
    m = re.search(rb"queued as ([0-9A-Z]{16})", msg)
    assert m, "no queue id in %r" % msg
    return m.group(1).decode()


# ---- the queue, through relayctl -------------------------------------------

def queue_list(relayd):
    """relayctl list --json: the list of messages (the top level may be the
    array itself or {"messages": [...]})."""
    doc = json.loads(relayd.relayctl("list", "--json").stdout.decode())
    if isinstance(doc, dict):
        doc = doc["messages"]
    return doc


def queue_entry(relayd, qid):
    for m in queue_list(relayd):
        if m["id"] == qid:
            return m
    return None


def rcpt_entry(entry, addr):
    found = [r for r in entry["recipients"] if r["address"] == addr]
    assert len(found) == 1, (addr, entry)
    return found[0]


def wait_gone(relayd, qid, timeout=30.0):
    """Waits until qid is no longer listed and `QID: removed` is logged
    (after every status line of the message)."""
    try:
        wait_until(lambda: queue_entry(relayd, qid) is None
                   and removed(relayd, qid), timeout=timeout, step=0.1,
                   what="%s to leave the queue, and '%s: removed'" % (qid, qid))
    except AssertionError as e:
        raise AssertionError("%s: %r\nlog:\n%s" % (
            e, queue_entry(relayd, qid), relayd.log_text()[-4000:]))


def wait_queue_empty(relayd, timeout=30.0):
    try:
        wait_until(lambda: queue_list(relayd) == [], timeout=timeout,
                   step=0.2, what="the queue to empty")
    except AssertionError as e:
        left = queue_list(relayd)
        raise AssertionError("%s: %d left, e.g. %r\nlog:\n%s" % (
            e, len(left), left[:2], relayd.log_text()[-4000:]))


def wait_rcpt_state(relayd, qid, addr, pred, timeout=30.0, what=None):
    """Waits until pred(recipient entry) holds; returns the entry."""
    got = [None]

    def ok():
        e = queue_entry(relayd, qid)
        if e is None:
            return False
        got[0] = rcpt_entry(e, addr)
        return pred(got[0])
    try:
        wait_until(ok, timeout=timeout, step=0.05,
                   what=what or "%s of %s" % (addr, qid))
    except AssertionError as e:
        raise AssertionError("%s; last seen %r\nlog:\n%s" % (
            e, got[0], relayd.log_text()[-3000:]))
    return got[0]


def stats(relayd):
    return json.loads(relayd.relayctl("stats", "--json").stdout.decode())


# ---- the delivery log --------------------------------------------------------

def delivery_lines(relayd, qid, rcpt=None):
    """Log lines `QID: to=<rcpt>, ... status=S ...`, in order, as
    (status, line)."""
    pat = re.compile(r"\b%s: to=<%s>,.*?\bstatus=(\w+)" % (
        re.escape(qid), re.escape(rcpt) if rcpt else r"[^>]*"))
    out = []
    for line in relayd.log_text().splitlines():
        m = pat.search(line)
        if m:
            out.append((m.group(1), line))
    return out


def statuses(relayd, qid, rcpt):
    return [s for s, _ in delivery_lines(relayd, qid, rcpt)]


def wait_log(relayd, regex, timeout=30.0, count=1):
    """Waits until regex matches at least count log lines; returns the
    matches."""
    pat = re.compile(regex)
    found = []

    def ok():
        found[:] = [m for m in map(pat.search, relayd.log_text().splitlines())
                    if m]
        return len(found) >= count
    try:
        wait_until(ok, timeout=timeout, step=0.05,
                   what="%d log line(s) matching %r" % (count, regex))
    except AssertionError as e:
        raise AssertionError("%s\nlog:\n%s" % (e, relayd.log_text()[-4000:]))
    return found


def wait_status(relayd, qid, rcpt, status, timeout=30.0, count=1,
                fail_on=()):
    """Waits for count `QID: to=<rcpt>, ... status=STATUS` lines; fails at
    once when a status in fail_on shows up for that recipient instead."""
    def check():
        for st, line in delivery_lines(relayd, qid, rcpt):
            if st in fail_on:
                raise AssertionError("%s got status=%s:\n%s\nlog:\n%s" % (
                    rcpt, st, line, relayd.log_text()[-3000:]))
        return sum(1 for st, _ in delivery_lines(relayd, qid, rcpt)
                   if st == status) >= count
    try:
        wait_until(check, timeout=timeout, step=0.05,
                   what="%d status=%s line(s) for %s of %s" % (
                       count, status, rcpt, qid))
    except AssertionError as e:
        if "timed out" not in str(e):
            raise
        raise AssertionError("%s\nlog:\n%s" % (e, relayd.log_text()[-4000:]))
    return delivery_lines(relayd, qid, rcpt)


def removed(relayd, qid):
    return re.search(r"\b%s: removed\b" % re.escape(qid),
                     relayd.log_text()) is not None


def notification_id(relayd, qid):
    """NEWQID of `QID: sender non-delivery notification: NEWQID`, or None."""
    m = re.search(r"\b%s: sender non-delivery notification: ([0-9A-Z]{16})"
                  % re.escape(qid), relayd.log_text())
    return m.group(1) if m else None


# ---- what the upstream got ---------------------------------------------------

def header_of(data, name):
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return msg.get(name)


def message_id(data):
    m = re.search(rb"^Message-ID:\s*(<[^>\r\n]+>)", data, re.I | re.M)
    return m.group(1).decode() if m else None


def body_of(data):
    i = data.find(b"\r\n\r\n")
    assert i >= 0, "no end of header section in %r" % data[:200]
    return data[i + 4:]


def dsns(upstream, qid=None):
    """(record, DSN) for each accepted null-sender message at the upstream
    that parses as a DSN, optionally only those about qid."""
    out = []
    for rec in upstream.messages():
        if rec["mail_from"] != "":
            continue
        d = parse_dsn(rec["data"])
        if qid is None or d.queue_id == qid:
            out.append((rec, d))
    return out


def wait_dsn(upstream, qid, timeout=30.0):
    """Waits for the DSN about qid; returns (record, DSN)."""
    def is_it(rec):
        if rec["mail_from"] != "":
            return False
        return parse_dsn(rec["data"]).queue_id == qid
    rec = upstream.wait_messages(1, timeout=timeout, match=is_it)[0]
    return rec, parse_dsn(rec["data"])


def settle(relayd, upstream, sender="settle@client.test",
           rcpt="sentinel@dest.test"):
    """Sends one more message and waits until it arrives and is removed:
    anything relayd had queued before it (a DSN it should not have sent)
    has had its chance to arrive too. Returns the sentinel's queue id."""
    content, mid = make_message("sentinel %s" % time.time(), to=rcpt)
    qid = submit(relayd, sender, [rcpt], content)
    upstream.wait_messages(1, match=lambda r: message_id(r["data"]) == mid)
    wait_gone(relayd, qid)
    return qid


def assert_same_bytes(got, want, what="message"):
    """got == want, or an error naming the first difference."""
    if got == want:
        return
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
             min(len(got), len(want)))
    raise AssertionError(
        "%s differs at byte %d (got %d bytes, want %d):\n got  %r\n want %r"
        % (what, n, len(got), len(want), got[max(0, n - 60):n + 60],
           want[max(0, n - 60):n + 60]))
