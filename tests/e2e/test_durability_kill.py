"""tests/e2e/test_durability_kill.py - SIGKILL relayd while 20 clients are
sending, restart it on the same spool, and check the durability contract:
every message that got a 250 is in the index under the id it was given, with
its body intact; no orphan bodies or index records, tmp/ is empty, and the
log reports the recovery. Three kill cycles on one spool, killed at
different moments; once per spool_sync mode (both write paths of the
writer thread).
"""
import collections
import json
import random
import re
import smtplib
import threading
import time

import pytest

from conftest import unfinished_bodies

NTHREADS = 20
# Seconds of load before each SIGKILL: different moments in the cycle.
KILL_AFTER = (2.0, 1.3, 0.7)
JOIN_TIMEOUT = 15.0


def split_body(data):
    i = data.find(b"\r\n\r\n")
    assert i >= 0, "no end of header section in %r" % data[:200]
    return data[i + 4:]


def make_message(cycle, thread, seq, rnd):
    marker = "c%d-t%02d-m%05d" % (cycle, thread, seq)
    size = rnd.randint(1024, 20 * 1024)
    lines = ["X-Marker: %s" % marker]
    n = 0
    while sum(len(l) + 2 for l in lines) < size:
        # Some lines start with '.', to go through dot-stuffing.
        lead = "." if n % 13 == 5 else "L"
        lines.append("%s%s-%06d-%s" % (lead, marker, n, "x" * rnd.randint(0, 60)))
        n += 1
    body = ("\r\n".join(lines) + "\r\n").encode()
    headers = ("From: <t%d@client.test>\r\nTo: <r@dest.test>\r\n"
               "Subject: %s\r\nMessage-ID: <%s@client.test>\r\n\r\n"
               % (thread, marker, marker)).encode()
    return marker, headers + body, body


class Sender(threading.Thread):
    """One smtplib connection sending messages until told to stop or the
    connection breaks. records: (marker, body, outcome, qid)."""

    def __init__(self, relayd, cycle, idx, stop):
        super().__init__(daemon=True)
        self.relayd, self.cycle, self.idx, self.stop = relayd, cycle, idx, stop
        self.records = []
        self.error = None

    def run(self):
        rnd = random.Random(self.cycle * 1000 + self.idx)
        try:
            s = smtplib.SMTP(self.relayd.addr, self.relayd.port, timeout=10)
            s.ehlo("client%d.test" % self.idx)
        except (OSError, smtplib.SMTPException) as e:
            self.error = repr(e)
            return
        try:
            for seq in range(100000):
                if self.stop.is_set():
                    break
                marker, msg, body = make_message(self.cycle, self.idx, seq, rnd)
                rec = [marker, body, None, None]
                self.records.append(rec)
                stage = "MAIL"
                try:
                    code, _ = s.mail("t%d@client.test" % self.idx)
                    if code != 250:
                        rec[2] = "MAIL %d" % code
                        break
                    stage = "RCPT"
                    code, _ = s.rcpt("r@dest.test")
                    if code != 250:
                        rec[2] = "RCPT %d" % code
                        break
                    stage = "DATA"
                    code, resp = s.data(msg)
                except (OSError, smtplib.SMTPException) as e:
                    rec[2] = "%s: %s" % (stage, type(e).__name__)
                    break
                if code == 250:
                    m = re.search(rb"queued as ([0-9A-Z]{16})", resp)
                    rec[2] = 250
                    rec[3] = m.group(1).decode() if m else None
                else:
                    rec[2] = "DATA %d %s" % (code, resp[:60])
                    s.rset()
        finally:
            try:
                s.close()
            except OSError:
                pass


def queue_listing(relayd):
    out = relayd.relayctl("list", "--json").stdout.decode()
    doc = json.loads(out)
    ids = [m["id"] for m in doc["messages"]]
    assert doc["count"] == len(ids)
    return ids


def check_spool(relayd, acked, label):
    """The contract after a restart; returns (ids, stored bodies)."""
    ids = queue_listing(relayd)
    idset = set(ids)
    assert len(idset) == len(ids), "duplicate ids in relayctl list"
    stored = relayd.stored()
    left = unfinished_bodies(relayd)
    assert left == [], "%s: unfinished bodies after restart: %s" % (label, left[:10])
    orphans = set(stored) - idset
    missing_body = idset - set(stored)
    assert not orphans, "%s: msg/ files without index record: %s" % (label, sorted(orphans)[:10])
    assert not missing_body, "%s: index records without body: %s" % (label, sorted(missing_body)[:10])

    lost, damaged = [], []
    for marker, body, qid in acked:
        if qid not in idset or qid not in stored:
            lost.append((marker, qid))
        elif split_body(stored[qid]) != body:
            damaged.append((marker, qid))
    assert not lost, "%s: %d acknowledged messages lost, e.g. %s" % (label, len(lost), lost[:5])
    assert not damaged, "%s: %d acknowledged messages damaged, e.g. %s" % (label, len(damaged), damaged[:5])
    return ids, stored


@pytest.mark.parametrize("spool_sync", ["syncfs", "fsync"])
def test_sigkill_under_load_loses_nothing_acknowledged(relayd_factory, spool_sync):
    relayd = relayd_factory(max_connections_per_ip=100, spool_sync=spool_sync)
    acked = []          # (marker, body, qid) over all cycles
    t_start = time.monotonic()
    for cycle, delay in enumerate(KILL_AFTER):
        stop = threading.Event()
        senders = [Sender(relayd, cycle, i, stop) for i in range(NTHREADS)]
        for s in senders:
            s.start()
        time.sleep(delay)
        # Make sure the kill lands while they are still sending.
        busy = sum(1 for s in senders if s.is_alive())
        relayd.kill()
        stop.set()
        for s in senders:
            s.join(JOIN_TIMEOUT)
        assert not any(s.is_alive() for s in senders), "client threads hung"
        assert busy >= NTHREADS // 2, "only %d senders were running at the kill" % busy
        errors = [s.error for s in senders if s.error]
        assert not errors, "cycle %d: clients could not connect: %s" % (cycle, errors[:3])

        n_ack = n_fail = 0
        unacked = {}    # this cycle's: marker -> body
        outcomes = collections.Counter()
        for s in senders:
            for marker, body, outcome, qid in s.records:
                if outcome == 250:
                    assert qid, "250 without 'queued as ID' for %s" % marker
                    acked.append((marker, body, qid))
                    n_ack += 1
                else:
                    unacked[marker] = body
                    outcomes[outcome] += 1
                    n_fail += 1
        assert n_ack > 0, "cycle %d: nothing acknowledged in %.1fs" % (cycle, delay)

        log_before = len(relayd.log_text())
        relayd.start()
        log_new = relayd.log_text()[log_before:]
        m = re.search(r"recovery: (\d+) messages in queue, (\d+) repaired", log_new)
        assert m, "no recovery line in the log after restart:\n%s" % log_new[-2000:]

        qids = [a[2] for a in acked]
        assert len(set(qids)) == len(qids), "a queue id was given out twice"
        ids, stored = check_spool(relayd, acked, "cycle %d" % cycle)
        assert int(m.group(1)) == len(ids), (m.group(0), len(ids))

        # Which unacknowledged messages made it anyway (allowed), and is any
        # message stored twice (it was submitted once, so it must not be)?
        seen = {}
        for qid, data in stored.items():
            hm = re.search(rb"\r\nX-Marker: (c\d+-t\d+-m\d+)\r\n", data) or \
                re.search(rb"\r\n\r\nX-Marker: (c\d+-t\d+-m\d+)\r\n", data)
            if hm:
                seen.setdefault(hm.group(1).decode(), []).append(qid)
        dups = {k: v for k, v in seen.items() if len(v) > 1}
        assert not dups, "messages stored more than once: %s" % list(dups.items())[:5]
        present_unacked = sum(1 for k in unacked if k in seen)
        for k in [k for k in unacked if k in seen]:
            assert split_body(stored[seen[k][0]]) == unacked[k], \
                "unacknowledged but stored message %s is damaged" % k
        print("cycle %d: killed after %.1fs; this cycle %d acknowledged, %d "
              "not; in queue %d (all %d acknowledged so far present); "
              "unacknowledged but present %d; duplicates 0; %s; "
              "unacknowledged outcomes %s"
              % (cycle, delay, n_ack, n_fail, len(ids), len(acked),
                 present_unacked, m.group(0), dict(outcomes)))
    print("total %.1fs" % (time.monotonic() - t_start))
