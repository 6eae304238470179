"""tests/e2e/test_crash_mixed.py - 20 SIGKILLs at random moments of a mixed
load: 20 smtplib clients submitting, relayd delivering to a slow aiosmtpd
smarthost, and an operator running relayctl hold, release and delete on
queued ids. After each restart `relayctl check` is clean (beside the
running, busy relayd); at the end every message that got a 250 and was not
deleted by the test has arrived at the smarthost at least once (matched by
Message-ID). Duplicates are allowed after a crash (at-least-once
delivery): counted and printed. The kill moments and the operator's
choices come from a seeded RNG; the seed is printed (RELAYD_CRASH_SEED
replays one).
"""
import collections
import json
import os
import random
import re
import smtplib
import threading
import time

from conftest import SANITIZE, wait_until
from conftest_upstream import (SENDER, make_message, message_id,
                               wait_queue_empty)

KILLS = 20
NCLIENTS = 20
RCPT = "rcpt@dest.test"
# Seconds of load between a restart and the next SIGKILL (uniform); the
# sanitized relayd takes longer to restart, which is load time too.
LOAD_S = (0.2, 0.7) if SANITIZE else (0.3, 1.0)
# A client's pause between its messages: enough load to keep commits,
# deliveries and relayctl changes in flight at every kill, and no more
# than the slow smarthost (about 35 messages a second here) drains. The
# sanitized daemon is several times slower: the load is scaled down, not
# the assertions.
PAUSE_S = (0.8, 1.6) if SANITIZE else (0.6, 1.2)
SLOW_REPLY_MS = 40


class Client(threading.Thread):
    """Submits messages until told to stop; reconnects after a kill.
    acked: (Message-ID, queue id) of every message that got a 250."""

    def __init__(self, relayd, idx, seed, stop):
        super().__init__(daemon=True)
        self.relayd, self.idx, self.stop = relayd, idx, stop
        self.rnd = random.Random(seed * 100 + idx)
        self.acked = []
        self.unexpected = []

    def run(self):
        n = 0
        while not self.stop.is_set():
            try:
                s = smtplib.SMTP(self.relayd.addr, self.relayd.port,
                                 timeout=20)
            except OSError:
                self.stop.wait(0.05)        # relayd is down: try again
                continue
            try:
                s.ehlo("client%d.test" % self.idx)
                while not self.stop.is_set():
                    n += 1
                    content, mid = make_message(
                        "crash c%02d m%04d" % (self.idx, n), to=RCPT,
                        body=b"client %d message %d\r\n%s" % (
                            self.idx, n, b"x" * 70 + b"\r\n") *
                        self.rnd.randint(1, 40))
                    code, text = s.mail(SENDER)
                    if code != 250:
                        if code // 100 != 4:
                            self.unexpected.append(("MAIL", code, text))
                        break
                    code, text = s.rcpt(RCPT)
                    if code != 250:
                        if code // 100 != 4:
                            self.unexpected.append(("RCPT", code, text))
                        break
                    code, text = s.data(content)
                    if code == 250:
                        qid = re.search(rb"queued as ([0-9A-Z]{16})", text)
                        self.acked.append((mid, qid.group(1).decode()))
                    elif code // 100 != 4:
                        self.unexpected.append(("DATA", code, text))
                    self.stop.wait(self.rnd.uniform(*PAUSE_S))
            except (OSError, smtplib.SMTPException):
                pass                        # killed mid-session
            finally:
                try:
                    s.close()
                except OSError:
                    pass


class Operator(threading.Thread):
    """hold / release / delete on queued ids, through relayctl (the control
    socket, or the spool directly while relayd is down)."""

    def __init__(self, relayd, clients, seed, stop):
        super().__init__(daemon=True)
        self.relayd, self.clients, self.stop = relayd, clients, stop
        self.rnd = random.Random(seed)
        self.held = set()
        self.deleted = set()        # qids relayctl said it deleted
        self.maybe_deleted = set()  # delete with an unknown outcome
        self.ops = collections.Counter()

    def recent(self):
        ids = []
        for c in self.clients:
            ids += [q for _, q in c.acked[-8:]]
        return ids

    def run(self):
        while not self.stop.wait(self.rnd.uniform(0.03, 0.12)):
            ids = self.recent()
            if not ids:
                continue
            op = self.rnd.choices(("hold", "release", "delete"),
                                  (5, 3, 2))[0]
            if op == "release" and self.held:
                qid = self.rnd.choice(sorted(self.held))
            else:
                op = "hold" if op == "release" else op
                qid = self.rnd.choice(ids)
            if qid in self.deleted:
                continue
            res = self.relayd.relayctl(op, qid, check=False)
            err = res.stderr.decode()
            if res.returncode == 0:
                self.ops[op] += 1
                if op == "hold":
                    self.held.add(qid)
                elif op == "release":
                    self.held.discard(qid)
                else:
                    self.deleted.add(qid)
                    self.held.discard(qid)
            elif "no message with id" in err or "no such message" in err:
                self.ops[op + " (gone)"] += 1    # delivered already
            else:
                # Killed mid-request: it may or may not have happened.
                self.ops[op + " (unknown)"] += 1
                if op == "delete":
                    self.maybe_deleted.add(qid)
                elif op == "hold":
                    self.held.add(qid)


def _check_clean(r, when):
    res = r.relayctl("check", "--json", check=False)
    doc = json.loads(res.stdout.decode() or "{}")
    assert res.returncode == 0 and doc.get("clean") is True, (
        "relayctl check %s: exit %d\n%s\n%s\nlog tail:\n%s" % (
            when, res.returncode, res.stdout.decode()[-3000:],
            res.stderr.decode()[-1000:], r.log_text()[-3000:]))
    return doc


def test_crash_mixed_load(upstream_factory, relay_to):
    seed = int(os.environ.get("RELAYD_CRASH_SEED") or
               random.SystemRandom().randrange(1 << 32))
    print("test_crash_mixed seed=%d (RELAYD_CRASH_SEED=%d replays it)"
          % (seed, seed))
    rnd = random.Random(seed)
    t0 = time.monotonic()

    # The smarthost records each message before its slow reply, as a
    # real server commits before its 250: a kill in between makes a
    # duplicate, never a loss.
    up = upstream_factory(tls="none",
                          behaviour={"delay_data_reply_ms": SLOW_REPLY_MS})
    r = relay_to(up, max_connections_per_ip=NCLIENTS + 10,
                 smarthost_concurrency=8)
    stop = threading.Event()
    clients = [Client(r, i, seed, stop) for i in range(NCLIENTS)]
    op = Operator(r, clients, seed, stop)
    for t in clients + [op]:
        t.start()

    checks = []
    try:
        for k in range(KILLS):
            time.sleep(rnd.uniform(*LOAD_S))
            r.kill()
            r.start()
            checks.append(_check_clean(r, "after restart %d" % (k + 1)))
    finally:
        stop.set()
        for t in clients + [op]:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in clients + [op])
    kill_s = time.monotonic() - t0

    acked = [a for c in clients for a in c.acked]
    unexpected = [u for c in clients for u in c.unexpected]
    assert unexpected == [], unexpected[:5]
    assert len(acked) >= KILLS * 5, "too little load: %d acked" % len(acked)
    assert len({q for _, q in acked}) == len(acked), "a queue id given twice"

    # What the operator still holds goes now; then everything drains.
    held = {m["id"] for m in json.loads(
        r.relayctl("list", "--json", "--state", "hold").stdout)["messages"]}
    for qid in sorted(held):
        r.relayctl("release", qid)
    t1 = time.monotonic()
    wait_queue_empty(r, timeout=90 if SANITIZE else 45)
    drain_s = time.monotonic() - t1
    _check_clean(r, "at the end")

    removed = op.deleted | op.maybe_deleted
    recs = up.messages()
    counts = collections.Counter(message_id(m["data"]) for m in recs)
    required = [(mid, q) for mid, q in acked if q not in removed]
    lost = [(mid, q) for mid, q in required if counts[mid] == 0]
    dups = {m: n for m, n in counts.items() if n > 1}
    print("seed=%d: %d kills in %.1fs (%d checks looked again at what they "
          "saw: %s), drained in %.1fs; %d acknowledged, %d deleted by the "
          "test (%d more maybe), %d held at the end; operator %s; %d "
          "delivered records, %d lost, %d duplicated (%d extra copies)%s"
          % (seed, KILLS, kill_s, sum(1 for c in checks if c["rechecks"]),
             [c["rechecks"] for c in checks], drain_s, len(acked), len(op.deleted),
             len(op.maybe_deleted - op.deleted), len(held),
             dict(sorted(op.ops.items())), len(recs), len(lost), len(dups),
             sum(n - 1 for n in dups.values()),
             "".join("\n  duplicate %s x%d" % kv
                     for kv in sorted(dups.items()))))
    if lost:
        q = lost[0][1]
        raise AssertionError(
            "%d acknowledged messages never arrived (seed %d), e.g. %s\n"
            "relayd's log on %s:\n%s" % (
                len(lost), seed, lost[:5], q, "\n".join(
                    l for l in r.log_text().splitlines() if q in l)))
    # Nothing arrived that nobody sent.
    sent_mids = {mid for mid, _ in acked}
    for m in recs:
        assert m["mail_from"] == SENDER and m["rcpt_tos"] == [RCPT], m
    strays = [mid for mid in counts if mid not in sent_mids]
    # A message whose 250 the kill cut off may arrive too; it must at
    # least be one of ours.
    assert all(mid and mid.endswith("@client.test>") for mid in strays), strays
    assert any(c["relayd"] == "running" for c in checks)
