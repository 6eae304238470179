"""tests/e2e/test_spool_upgrade.py - A spool written by the previous
release (index format 1: data/spool-v1.tar.gz, made by relayd bb1fcad,
see data/README) under the current relayd. relayctl reads it as it is;
relayd upgrades it in place at start with one log line giving the count;
afterwards every record is format 2 and the "meta" DB says so, `relayctl
list`/`show` show the same messages as the old release did, `relayctl
check` is clean, and the messages deliver to an aiosmtpd smarthost: the
deferred recipients only (the ones already sent are not sent again), the
held messages once released. The index is read directly with
python3-lmdb to see the format bytes."""
import json
import os
import re
import tarfile
import time

import lmdb

from conftest_upstream import SENDER, queue_list, wait_queue_empty

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
UPGRADED = re.compile(r"queue: index upgraded in place from format 1 to 2: "
                      r"(\d+) records rewritten")
# Fields `relayctl list --json` gave in the old release (age_seconds
# moves with the clock).
KEEP = ("id", "arrival", "flags", "sender", "size", "state", "recipients")


def _fixture():
    with open(os.path.join(DATA, "spool-v1.json")) as f:
        return json.load(f)


def _unpack(spool):
    os.makedirs(spool)
    with tarfile.open(os.path.join(DATA, "spool-v1.tar.gz")) as t:
        t.extractall(spool)


# ---- moving the fixture in time -------------------------------------------
# The fixture's messages arrived when it was made, and a message older than
# max_queue_lifetime (365 days at most) bounces instead of delivering. So
# the test moves the spool's times forward by whole days before using it:
# each record's arrival and next attempts, and the "sched" keys (8-byte
# big-endian seconds + qid), re-encoded in format 1 exactly as relayd
# bb1fcad wrote it (queue/queue_codec.c's comment). With a shift of 0 the
# re-encoded bytes must equal the stored ones: the codec below is checked
# on every run, not only once the fixture is old.

def _varint(b, i):
    v = shift = 0
    for _ in range(10):
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if not c & 0x80:
            return v, i
        shift += 7
    raise ValueError("varint too long")


def _put_varint(v):
    out = bytearray()
    while True:
        c = v & 0x7F
        v >>= 7
        out.append(c | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _svarint(b, i):
    v, i = _varint(b, i)
    return (v >> 1) ^ -(v & 1), i


def _put_svarint(v):
    return _put_varint((v << 1) ^ (v >> 63))


def _shift_v1(rec, delta):
    """A format-1 record with its arrival and next attempts moved by delta
    seconds, everything else byte for byte."""
    assert rec[0] == 1
    out = bytearray(rec[:1])
    arrival, i = _svarint(rec, 1)
    out += _put_svarint(arrival + delta)
    j = i
    _, i = _varint(rec, i)          # size
    i += 2                          # state, flags
    for optional in (False, True):  # sender, envid
        n, i = _varint(rec, i)
        i += n - 1 if optional and n else (0 if optional else n)
    nrcpt, i = _varint(rec, i)
    for _ in range(nrcpt):
        for optional in (False, True):   # addr, orcpt
            n, i = _varint(rec, i)
            i += n - 1 if optional and n else (0 if optional else n)
        i += 2                           # notify, state
        _, i = _varint(rec, i)           # attempts
        out += rec[j:i]
        t, i = _svarint(rec, i)
        out += _put_svarint(t + delta if t else 0)
        j = i
        n, i = _varint(rec, i)           # last_reply
        i += n - 1 if n else 0
    assert i == len(rec), "trailing bytes in a format-1 record"
    out += rec[j:i]
    return bytes(out)


def _shift_spool(spool, fx, delta):
    env = lmdb.open(os.path.join(spool, "index"), max_dbs=8)
    try:
        msg = env.open_db(b"msg", create=False)
        sched = env.open_db(b"sched", create=False)
        with env.begin(write=True) as txn:
            for k, v in list(txn.cursor(db=msg)):
                new = _shift_v1(bytes(v), delta)
                if delta == 0:
                    assert new == bytes(v), k
                txn.put(k, new, db=msg)
            keys = [bytes(k) for k, _ in txn.cursor(db=sched)]
            for k in keys:
                t = int.from_bytes(k[:8], "big")
                txn.delete(k, db=sched)
                txn.put((t + delta).to_bytes(8, "big") + k[8:], b"",
                        db=sched)
    finally:
        env.close()
    for m in fx["list"]:
        m["arrival"] += delta
        for x in m["recipients"]:
            if x["next_attempt"]:
                x["next_attempt"] += delta


def _records(spool):
    """{qid: first byte of its record}, and the "meta" format (or None)."""
    env = lmdb.open(os.path.join(spool, "index"), max_dbs=8, readonly=True,
                    lock=False)
    try:
        msg = env.open_db(b"msg", create=False)
        with env.begin() as txn:
            recs = {k.decode(): v[0] for k, v in txn.cursor(db=msg)}
        try:
            meta = env.open_db(b"meta", create=False)
        except lmdb.NotFoundError:
            return recs, None
        with env.begin() as txn:
            v = txn.get(b"format", db=meta)
        return recs, v
    finally:
        env.close()


def _same(listing, want):
    got = {m["id"]: {k: m[k] for k in KEEP} for m in listing}
    exp = {m["id"]: {k: m[k] for k in KEEP} for m in want}
    assert got == exp


def _listing(r):
    """The fixture's messages as relayctl lists them, without the new
    per-recipient fields (format 2: none yet for upgraded records)."""
    out = []
    for m in queue_list(r):
        m = dict(m)
        m["recipients"] = [{k: v for k, v in x.items()
                            if k not in ("dest", "mx", "last_try", "waiting")}
                           for x in m["recipients"]]
        out.append(m)
    return out


def test_v1_spool_upgraded_in_place(upstream_factory, relay_to, tmp_path):
    fx = _fixture()
    spool = str(tmp_path / "spool")
    _unpack(spool)
    # The fixture's messages arrived on 2026-12-05: moved forward by the
    # whole days since, so none is too old to deliver (see above).
    age = time.time() - min(m["arrival"] for m in fx["list"])
    _shift_spool(spool, fx, max(0, int(age // 86400)) * 86400)
    recs, meta = _records(spool)
    assert set(recs) == set(fx["held"] + fx["deferred"])
    assert set(recs.values()) == {1} and meta is None, (recs, meta)

    up = upstream_factory(tls="none")
    r = relay_to(up, start=False, spool=spool, delivery="hold",
                 max_queue_lifetime="365d", delay_warning_after="0")
    # The current relayctl reads the format-1 spool as it is.
    _same(_listing(r), fx["list"])
    assert r.relayctl("check").returncode == 0
    assert _records(spool) == (recs, None)   # reading changed nothing

    r.start()
    lines = [m for m in map(UPGRADED.search, r.log_text().splitlines()) if m]
    assert [m.group(1) for m in lines] == ["4"], r.log_text()
    text = r.log_text()
    assert text.index(lines[0].group(0)) < \
        text.index("delivery may begin"), text
    recs2, meta = _records(spool)
    assert set(recs2) == set(recs) and set(recs2.values()) == {2}, recs2
    assert meta == b"\x02"
    _same(_listing(r), fx["list"])
    for m in fx["list"]:
        shown = r.relayctl("show", m["id"], "--json").stdout.decode()
        doc = json.loads(shown)
        assert doc["id"] == m["id"] and doc["sender"] == m["sender"], doc
        assert [x["address"] for x in doc["recipients"]] == \
            [x["address"] for x in m["recipients"]]
        assert [x["state"] for x in doc["recipients"]] == \
            [x["state"] for x in m["recipients"]]
    r.stop()

    # Upgraded once: the next start has nothing to rewrite.
    seen = len(r.log_text())
    r.conf["delivery"] = "smarthost"
    r.write_conf()
    r.start()
    assert not UPGRADED.search(r.log_text()[seen:]), r.log_text()[seen:]
    assert r.relayctl("check").returncode == 0
    for qid in fx["held"]:
        r.relayctl("release", qid)
    r.relayctl("flush")
    wait_queue_empty(r, timeout=60)

    # Every recipient not yet sent was delivered once; none was sent
    # twice (the listings above compared the DSN parameters).
    by_rcpt = {}
    for m in up.messages():
        for a in m["rcpt_tos"]:
            by_rcpt.setdefault(a, []).append(m)
    want = sorted(x["address"] for m in fx["list"] for x in m["recipients"]
                  if x["state"] != "sent")
    assert sorted(by_rcpt) == want, sorted(by_rcpt)
    assert all(len(v) == 1 for v in by_rcpt.values()), by_rcpt
    senders = {m["id"]: m["sender"] for m in fx["list"]}
    for m in fx["list"]:
        for x in m["recipients"]:
            if x["state"] != "sent":
                assert by_rcpt[x["address"]][0]["mail_from"] == \
                    senders[m["id"]], (x, by_rcpt[x["address"]][0])
    assert SENDER in senders.values()
    r.stop()
    assert r.relayctl("check").returncode == 0
    recs3, meta = _records(spool)
    assert recs3 == {} and meta == b"\x02"
