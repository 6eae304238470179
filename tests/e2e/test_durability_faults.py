"""tests/e2e/test_durability_faults.py - Disk faults under a running relayd.

An LD_PRELOAD shim (tests/faults/faultshim.c, built as build/faultshim.so)
makes chosen calls fail with EIO or ENOSPC while relayd runs: body writes,
fdatasync/fsync/syncfs, the link or rename that places a body, and LMDB's
commit (its page writes, its fdatasync, its meta page write on
index/data.mdb). For each fault: the client gets 451 4.3.0 (EIO) or
452 4.3.1 (ENOSPC); the shim's own log shows the fault was hit; nothing
acknowledged is lost and nothing half-written is left; when the fault stops
the next message gets 250 (after a failed LMDB commit relayd has reopened
its index in-process); and a restart without the shim finds every
acknowledged message and repairs nothing.

The shim and ASan both interpose libc: the fault tests run in the plain
pass only (skipped under SANITIZE=1). The queue_min_free tests need no shim
and run in both passes.
"""
import json
import os
import re
import signal
import smtplib
import subprocess
import tempfile

import pytest

from conftest import (RELAYD, SANITIZE, list_json, no_unfinished,
                      wait_until)
from conftest_upstream import wait_queue_empty, wait_rcpt_state

SHIM = os.path.join(os.path.dirname(RELAYD), "faultshim.so")

needs_shim = pytest.mark.skipif(
    SANITIZE, reason="the LD_PRELOAD fault shim does not mix with ASan "
                     "(both interpose libc); these run in the plain pass")

KB = 1024
MB = 1024 * KB


class Faults:
    """The shim's control file and its log of injected faults."""

    def __init__(self, workdir):
        self.ctl = os.path.join(workdir, "faults.ctl")
        self.log = os.path.join(workdir, "faults.log")
        self.set()

    def env(self):
        assert os.path.exists(SHIM), "%s not built (make all)" % SHIM
        return {"LD_PRELOAD": SHIM, "FAULTSHIM_CTL": self.ctl,
                "FAULTSHIM_LOG": self.log}

    def set(self, *rules):
        """Replaces the rules at once (the shim re-reads the file when it
        changes); no rules: no faults."""
        tmp = self.ctl + ".tmp"
        with open(tmp, "w") as f:
            for r in rules:
                f.write(r + "\n")
        os.replace(tmp, self.ctl)

    def hits(self):
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


def send(relayd, marker, size=2 * KB):
    """Sends one message; (code, reply text, qid or None). A refusal at
    MAIL or RCPT is returned as is."""
    line = ("%s " % marker + "z" * 70)[:76] + "\r\n"
    body = (line * max(1, size // len(line))).encode()
    msg = ("From: <a@b.test>\r\nTo: <c@d.test>\r\nSubject: %s\r\n"
           "Message-ID: <%s@client.test>\r\n\r\n" % (marker, marker)).encode()
    with smtplib.SMTP(relayd.addr, relayd.port, timeout=30) as s:
        s.ehlo("client.test")
        code, resp = s.mail("a@b.test")
        if code != 250:
            return code, resp.decode(), None
        code, resp = s.rcpt("c@d.test")
        if code != 250:
            return code, resp.decode(), None
        code, resp = s.data(msg + body)
        m = re.search(rb"queued as ([0-9A-Z]{16})", resp)
        return code, resp.decode(), m.group(1).decode() if m else None


def assert_spool_consistent(relayd, want):
    """relayctl check finds the spool clean, and the queue holds exactly
    the messages in want ({qid: marker}), each with its body under msg/ at
    the recorded size, and nothing else: no stray body, no unfinished
    one."""
    r = relayd.relayctl("check", "--json", check=False)
    doc = json.loads(r.stdout.decode())
    assert r.returncode == 0 and doc["clean"] and doc["problems"] == [], \
        (r.returncode, doc, r.stderr.decode())
    assert doc["messages"] == len(want), (doc, want)
    doc = list_json(relayd)
    listed = {m["id"]: m for m in doc["messages"]}
    assert sorted(listed) == sorted(want), (sorted(listed), sorted(want))
    bodies = {n for n in os.listdir(relayd.msg_dir()) if not n.startswith(".")}
    assert bodies == set(want), (bodies, set(want))
    for qid, marker in want.items():
        path = os.path.join(relayd.msg_dir(), qid)
        assert os.path.getsize(path) == listed[qid]["size"], qid
        with open(path, "rb") as f:
            assert ("Subject: %s" % marker).encode() in f.read(), qid
    assert no_unfinished(relayd) == []


def start_faulty(relayd_factory, **conf):
    r = relayd_factory(start=False, **conf)
    faults = Faults(r.workdir)
    r.start(env=faults.env())
    return r, faults


# (spool_sync, rule, expected reply). Paths are substrings of the spool's
# own paths: msg/ holds bodies (an unnamed O_TMPFILE body reads
# "msg/#N (deleted)"), index/data.mdb is LMDB's data file.
CASES = [
    ("syncfs", "write EIO /spool/msg/ -1", "451 4.3.0"),
    ("syncfs", "write ENOSPC /spool/msg/ -1", "452 4.3.1"),
    ("fsync", "fdatasync EIO /spool/msg/ -1", "451 4.3.0"),
    ("fsync", "fsync EIO /spool/msg -1", "451 4.3.0"),
    ("syncfs", "syncfs EIO /spool -1", "451 4.3.0"),
    ("syncfs", "linkat,renameat2 EIO /spool/msg/ -1", "451 4.3.0"),
    ("fsync", "renameat2 ENOSPC /spool/msg/ -1", "452 4.3.1"),
    ("syncfs", "pwrite,writev EIO /spool/index/data.mdb -1", "451 4.3.0"),
    ("fsync", "pwrite,writev ENOSPC /spool/index/data.mdb -1", "452 4.3.1"),
    ("syncfs", "fdatasync EIO /spool/index/data.mdb -1", "451 4.3.0"),
    ("fsync", "fdatasync EIO /spool/index/data.mdb -1", "451 4.3.0"),
]


@needs_shim
@pytest.mark.parametrize("sync,rule,want", CASES,
                         ids=["%s:%s" % (c[0], c[1].split()[0] + "-" +
                                         c[1].split()[1] + "-" +
                                         c[1].split()[2].rsplit("/", 1)[-1])
                              for c in CASES])
def test_fault_gets_4xx_and_relayd_recovers(relayd_factory, sync, rule, want):
    relayd, faults = start_faulty(relayd_factory, spool_sync=sync)
    acked = {}

    code, text, qid = send(relayd, "before-fault")
    assert code == 250, (code, text)
    acked[qid] = "before-fault"

    faults.set(rule)
    for i in range(2):   # and again: a failure leaves nothing sticky behind
        code, text, qid = send(relayd, "during-fault-%d" % i)
        assert ("%d %s" % (code, text)).startswith(want), (rule, code, text)
        assert qid is None
    op = rule.split()[0].split(",")
    hits = faults.hits()
    assert any(h.split()[0] in op for h in hits), (rule, hits)
    assert all(h.split()[1] == rule.split()[1] for h in hits), hits

    faults.set()
    n_hits = len(faults.hits())
    code, text, qid = send(relayd, "after-fault")
    assert code == 250, (code, text, relayd.log_text()[-3000:])
    acked[qid] = "after-fault"
    assert len(faults.hits()) == n_hits   # the fault really stopped
    assert_spool_consistent(relayd, acked)
    log = relayd.log_text()
    assert re.search(r"commit failed|commit refused|cannot write body", log), \
        log[-3000:]
    if "data.mdb" in rule:
        assert "queue: index reopened after a failed write" in log, log[-3000:]

    # Durable: a restart without the shim finds exactly what was
    # acknowledged, and has nothing to repair.
    relayd.stop()
    relayd.start()
    assert_spool_consistent(relayd, acked)
    assert re.search(r"recovery: 2 messages in queue, 0 repaired",
                     relayd.log_text()), relayd.log_text()[-3000:]


@needs_shim
@pytest.mark.parametrize("sync", ["syncfs", "fsync"])
def test_failed_meta_page_write_reopens_the_index(relayd_factory, sync):
    """A failed meta page write is the one LMDB marks fatal: every later
    transaction on that environment gets MDB_PANIC. The fault fires once
    (count 1) and stays configured: the next message gets 250 only because
    relayd closed and reopened its index in-process."""
    relayd, faults = start_faulty(relayd_factory, spool_sync=sync)
    acked = {}
    code, text, qid = send(relayd, "before-panic")
    assert code == 250, (code, text)
    acked[qid] = "before-panic"

    faults.set("pwrite EIO /spool/index/data.mdb 1 after=fdatasync")
    code, text, qid = send(relayd, "panic")
    assert (code, text.split()[0]) == (451, "4.3.0"), (code, text)
    hits = faults.hits()
    assert len(hits) == 1 and hits[0].startswith("pwrite EIO "), hits
    wait_until(lambda: "queue: index reopened after a failed write"
               in relayd.log_text(), timeout=10, what="the index reopened")

    # The rule is spent but still in place: nothing else fails now.
    for i in range(3):
        code, text, qid = send(relayd, "after-panic-%d" % i)
        assert code == 250, (code, text, relayd.log_text()[-3000:])
        acked[qid] = "after-panic-%d" % i
    assert len(faults.hits()) == 1
    # Reads on the loop thread (relayctl goes through LMDB directly; the
    # daemon's own control socket reads through the reopened index).
    assert_spool_consistent(relayd, acked)
    relayd.stop()
    relayd.start()
    assert_spool_consistent(relayd, acked)
    assert re.search(r"recovery: 4 messages in queue, 0 repaired",
                     relayd.log_text()), relayd.log_text()[-3000:]


@needs_shim
def test_index_that_cannot_be_reopened_yet(relayd_factory):
    """The commit fails and so does the reopen (the index directory's
    fsync fails too): relayd runs without an index, answering 451, and
    reopens it by itself within a second of the fault going away - before
    any new message arrives."""
    relayd, faults = start_faulty(relayd_factory)
    acked = {}
    code, text, qid = send(relayd, "before")
    assert code == 250, (code, text)
    acked[qid] = "before"

    faults.set("fdatasync EIO /spool/index/data.mdb 1",
               "fsync EIO /spool/index -1")
    for i in range(2):
        code, text, qid = send(relayd, "no-index-%d" % i)
        assert (code, qid) == (451, None), (code, text)
    log = relayd.log_text()
    assert "queue: cannot reopen the index" in log, log[-3000:]
    assert "queue: index reopened after a failed write" not in log
    ops = sorted({h.split()[0] for h in faults.hits()})
    assert ops == ["fdatasync", "fsync"], faults.hits()

    faults.set()
    wait_until(lambda: "queue: index reopened after a failed write"
               in relayd.log_text(), timeout=10,
               what="the index reopened with no new message")
    code, text, qid = send(relayd, "after")
    assert code == 250, (code, text, relayd.log_text()[-3000:])
    acked[qid] = "after"
    assert_spool_consistent(relayd, acked)
    relayd.stop()
    relayd.start()
    assert_spool_consistent(relayd, acked)
    assert re.search(r"recovery: 2 messages in queue, 0 repaired",
                     relayd.log_text()), relayd.log_text()[-3000:]


@needs_shim
def test_records_of_a_failed_batch_are_taken_back(relayd_factory):
    """syncfs fails after the batch's index commit, so relayd takes the
    record back; that transaction fails too (once). The record of a
    message nobody got a 250 for must still go, and soon - not at the next
    commit, which may never come - and before anything else is sent."""
    relayd, faults = start_faulty(relayd_factory, spool_sync="syncfs")
    acked = {}
    code, text, qid = send(relayd, "before")
    assert code == 250, (code, text)
    acked[qid] = "before"

    faults.set("syncfs EIO /spool -1",
               "pwrite,writev EIO /spool 1 after=syncfs")
    code, text, qid = send(relayd, "failed-batch")
    assert (code, qid) == (451, None), (code, text)
    hits = [h.split()[0] for h in faults.hits()]
    assert hits[:2] == ["syncfs", "pwrite"] or \
        hits[:2] == ["syncfs", "writev"], hits
    assert re.search(r"cannot take back 1 failed record", relayd.log_text())
    wait_until(lambda: re.search(r"[0-9A-Z]{16}: record of the failed commit "
                                 r"taken back", relayd.log_text()),
               timeout=10, what="the record taken back without a new commit")
    faults.set()
    assert_spool_consistent(relayd, acked)

    code, text, qid = send(relayd, "after")
    assert code == 250, (code, text)
    acked[qid] = "after"
    assert_spool_consistent(relayd, acked)
    relayd.stop()
    relayd.start()
    assert_spool_consistent(relayd, acked)
    assert re.search(r"recovery: 2 messages in queue, 0 repaired",
                     relayd.log_text()), relayd.log_text()[-3000:]


MIXED_RULES = [
    "write EIO /spool/msg/ -1",
    "syncfs EIO /spool -1",
    "linkat,renameat2 ENOSPC /spool/msg/ -1",
    "pwrite,writev EIO /spool/index/data.mdb -1",
    "fdatasync EIO /spool/index/data.mdb -1",
]


@needs_shim
def test_concurrent_clients_through_faults(relayd_factory):
    """Six clients at once, so that batches hold several messages: while a
    fault is on every one of them gets 4xx; then the fault goes away
    while they are sending (batches with and without the fault). Whatever
    mix results, the queue holds exactly the messages that got 250."""
    import threading

    relayd, faults = start_faulty(relayd_factory)
    acked, refused, lock = {}, [], threading.Lock()

    def sender(tag, n, out):
        for i in range(n):
            marker = "%s-%d" % (tag, i)
            code, text, qid = send(relayd, marker)
            with lock:
                out.append((marker, code, text, qid))

    def run(tag, n, switch_off_after=None):
        out = []
        threads = [threading.Thread(target=sender, args=("%s-c%d" % (tag, c),
                                                         n, out))
                   for c in range(6)]
        for t in threads:
            t.start()
        if switch_off_after is not None:
            wait_until(lambda: len(out) >= switch_off_after, timeout=60,
                       what="%d replies" % switch_off_after)
            faults.set()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive()
        return out

    for k, rule in enumerate(MIXED_RULES):
        faults.set(rule)
        for marker, code, text, qid in run("r%d-on" % k, 3):
            assert code in (451, 452) and qid is None, (rule, code, text)
            refused.append(marker)
        assert faults.hits(), rule
        for marker, code, text, qid in run("r%d-mixed" % k, 6,
                                           switch_off_after=4):
            if code == 250:
                acked[qid] = marker
            else:
                assert code in (451, 452) and qid is None, (rule, code, text)
                refused.append(marker)
        faults.set()
        code, text, qid = send(relayd, "r%d-after" % k)
        assert code == 250, (rule, code, text, relayd.log_text()[-3000:])
        acked[qid] = "r%d-after" % k

    print("acknowledged %d, refused %d" % (len(acked), len(refused)))
    assert len(refused) >= 6 * 3 * len(MIXED_RULES)
    assert_spool_consistent(relayd, acked)
    relayd.stop()
    relayd.start()
    assert_spool_consistent(relayd, acked)
    assert re.search(r"recovery: %d messages in queue, 0 repaired" %
                     len(acked), relayd.log_text()), relayd.log_text()[-3000:]


@needs_shim
def test_index_fault_during_delivery(upstream_factory, relay_to):
    """Through a smarthost: a message accepted before the fault is deferred
    by the upstream (every attempt, until the end), the index fails while
    relayd records those attempts and accepts new mail (451), then
    recovers: the earlier 250 and the next message are delivered, the
    refused one never is."""
    up = upstream_factory(behaviour={"data": "451 4.3.0 not yet"})
    relayd = relay_to(up, start=False)
    faults = Faults(relayd.workdir)
    relayd.start(env=faults.env())

    code, text, early = send(relayd, "early-mail")
    assert code == 250, (code, text)
    wait_rcpt_state(relayd, early, "c@d.test",
                    lambda r: r["state"] == "deferred" and r["attempts"] >= 1,
                    what="the first attempt to be deferred")

    faults.set("pwrite,writev,fdatasync EIO /spool/index/data.mdb -1")
    code, text, refused = send(relayd, "refused-mail")
    assert (code, refused) == (451, None), (code, text)
    # The retries (retry_min 1s) run into the fault too: recording their
    # result fails, and the message stays due.
    wait_until(lambda: len(faults.hits()) >= 2 and "cannot record the "
               "delivery state" in relayd.log_text(), timeout=15,
               what="a delivery result hitting the index fault")
    faults.set()
    up.set_behaviour({})

    code, text, late = send(relayd, "late-mail")
    assert code == 250, (code, text, relayd.log_text()[-3000:])

    def subjects():
        return [re.search(rb"Subject: (\S+)", m["data"]).group(1).decode()
                for m in up.messages()]
    wait_until(lambda: {"early-mail", "late-mail"} <= set(subjects()),
               timeout=40, step=0.2, what="both acknowledged messages "
                                          "delivered")
    wait_queue_empty(relayd, timeout=30)
    assert "refused-mail" not in subjects(), subjects()
    dup = len(subjects()) - len(set(subjects()))
    print("duplicates delivered: %d" % dup)
    log = relayd.log_text()
    assert "queue: index reopened after a failed write" in log, log[-3000:]
    assert no_unfinished(relayd) == []
    left = [n for n in os.listdir(relayd.msg_dir()) if not n.startswith(".p")]
    assert left == [], left


# ---- queue_min_free ---------------------------------------------------------

def mail_reply(relayd, size=None):
    """(code, text) of MAIL FROM (with SIZE= when given), then QUIT."""
    with smtplib.SMTP(relayd.addr, relayd.port, timeout=30) as s:
        s.ehlo("client.test")
        opts = ["SIZE=%d" % size] if size is not None else []
        code, resp = s.mail("a@b.test", opts)
        return code, resp.decode()


def test_min_free_refuses_mail_before_data(relayd_factory):
    relayd = relayd_factory(queue_min_free="1000000G")
    with smtplib.SMTP(relayd.addr, relayd.port, timeout=30) as s:
        s.ehlo("client.test")
        code, resp = s.mail("a@b.test")
        assert (code, resp.decode()) == (
            452, "4.3.1 Insufficient system storage, try again later")
        code, resp = s.rcpt("c@d.test")
        assert code == 503, (code, resp)   # no transaction was started
        code, resp = s.docmd("DATA")
        assert code == 503, (code, resp)
    assert list_json(relayd)["messages"] == []
    log = relayd.log_text()
    assert re.search(r"below queue_min_free \(1073741824000000\): MAIL is "
                     r"answered 452 4\.3\.1", log), log[-2000:]
    assert "MAIL refused: less than queue_min_free" in log

    # SIGHUP with the check off: accepted again.
    relayd.conf["queue_min_free"] = "0"
    relayd.write_conf()
    relayd.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: configuration reloaded" in relayd.log_text(),
               timeout=10, what="the reload")
    code, text, qid = send(relayd, "after-reload")
    assert code == 250, (code, text)
    assert [m["id"] for m in list_json(relayd)["messages"]] == [qid]


@pytest.fixture
def tmpfs8m():
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a tmpfs (CI runs the e2e tests as "
                    "root)")
    d = tempfile.mkdtemp(prefix="relayd-minfree-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755",
                        "tmpfs", d], capture_output=True, timeout=30)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.fail("cannot mount a tmpfs on %s: %s" % (d, r.stderr.decode()))
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], capture_output=True, timeout=30)
        try:
            os.rmdir(d)
        except OSError:
            pass


def test_min_free_follows_the_spool_filesystem(relayd_factory, tmpfs8m):
    spool = os.path.join(tmpfs8m, "spool")
    relayd = relayd_factory(spool=spool, queue_min_free="3M")
    acked = {}
    code, text, qid = send(relayd, "room-enough", size=20 * KB)
    assert code == 250, (code, text)
    acked[qid] = "room-enough"
    # A declared SIZE must fit above the reserve too (about 5M is left).
    assert mail_reply(relayd, size=6 * MB)[0] == 452
    assert mail_reply(relayd, size=100 * KB)[0] == 250

    # Something else fills the file system: within the free-space refresh
    # (a second) MAIL is refused, before any data.
    filler = os.path.join(tmpfs8m, "filler")
    with open(filler, "wb") as f:
        f.write(b"\1" * (5 * MB + 512 * KB))
    wait_until(lambda: mail_reply(relayd)[0] == 452, timeout=10, step=0.2,
               what="MAIL to be refused below queue_min_free")
    assert mail_reply(relayd) == (
        452, "4.3.1 Insufficient system storage, try again later")
    assert "below queue_min_free (3145728)" in relayd.log_text()

    os.unlink(filler)
    wait_until(lambda: mail_reply(relayd)[0] == 250, timeout=10, step=0.2,
               what="MAIL to be accepted again")
    code, text, qid = send(relayd, "room-again", size=20 * KB)
    assert code == 250, (code, text)
    acked[qid] = "room-again"
    assert "accepting mail" in relayd.log_text()
    assert sorted(m["id"] for m in list_json(relayd)["messages"]) == \
        sorted(acked)
