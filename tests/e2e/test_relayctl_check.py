"""tests/e2e/test_relayctl_check.py - relayctl check on real spools made by
relayd: clean after real traffic; each kind of damage (a body missing or
of the wrong size, an orphan body, stray temp files, schedule entries out
of step with the records, written straight into the LMDB index with
python3-lmdb) is named by id or file, in text and JSON, exit 1; relayd's
recovery at the next start repairs what check named, after which check is
clean again; exit 2 when there is nothing to check. Beside a running,
busy relayd (both spool_sync modes) check stays clean, and still reports
damage that does not go away when it looks again.
"""
import json
import os
import re
import smtplib
import struct
import threading
import time

import lmdb
import pytest

from conftest import wait_until

QID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{16}$")


def _submit(r, n, tag="m"):
    ids = []
    with smtplib.SMTP(r.addr, r.port, timeout=30) as s:
        s.ehlo("client.test")
        for i in range(n):
            msg = ("From: <a@client.test>\r\nTo: <b@dest.test>\r\n"
                   "Subject: %s%d\r\nMessage-ID: <%s%d@client.test>\r\n\r\n"
                   "body %d\r\n" % (tag, i, tag, i, i))
            s.mail("a@client.test")
            s.rcpt("b@dest.test")
            code, text = s.data(msg)
            assert code == 250, (code, text)
            ids.append(re.search(rb"queued as (\S+)", text).group(1).decode())
    return ids


def _check(r, *args):
    res = r.relayctl("check", *args, check=False)
    return res.returncode, res.stdout.decode(), res.stderr.decode()


def _check_json(r):
    rc, out, err = _check(r, "--json")
    doc = json.loads(out)
    assert doc["clean"] == (rc == 0), (rc, doc)
    return rc, doc


def _problem_lines(out):
    """The problem lines of the text report (all but the summary)."""
    lines = out.splitlines()
    assert lines and lines[-1].startswith("spool "), out
    return lines[:-1]


def _stopped_spool(relayd_factory, n=4, **conf):
    r = relayd_factory(**conf)
    ids = _submit(r, n)
    r.stop()
    rc, out, err = _check(r)
    assert rc == 0, (out, err)
    assert out == ("spool %s: clean (%d messages, %d scheduled, %d bodies)\n"
                   % (r.spool, n, n, n)), out
    return r, ids


def _index(r):
    return lmdb.open(os.path.join(r.spool, "index"), max_dbs=4,
                     subdir=True, map_size=1 << 30)


def _sched_keys(env):
    db = env.open_db(b"sched", create=False)
    with env.begin(db=db) as txn:
        return [bytes(k) for k, _ in txn.cursor()]


def _key(t, qid):
    return struct.pack(">Q", t) + qid.encode()


def _recovered_clean(r, n_left):
    """relayd's recovery repairs what check named: check is clean after
    a start and stop."""
    r.start()
    r.stop()
    rc, doc = _check_json(r)
    assert rc == 0, doc
    assert doc["problems"] == [] and doc["messages"] == n_left, doc


def test_clean_text_and_json(relayd_factory):
    r, ids = _stopped_spool(relayd_factory)
    rc, doc = _check_json(r)
    assert rc == 0
    assert doc == {"spool": r.spool, "clean": True, "relayd": "stopped",
                   "messages": 4, "scheduled": 4, "bodies": 4,
                   "temp_in_use": 0, "rechecks": 0, "problems": [],
                   "unlisted": 0}


def test_missing_body(relayd_factory):
    r, ids = _stopped_spool(relayd_factory)
    os.unlink(os.path.join(r.spool, "msg", ids[1]))
    rc, out, err = _check(r)
    assert rc == 1, (out, err)
    assert _problem_lines(out) == [
        "%s: index record without its body (msg/%s is missing)"
        % (ids[1], ids[1])]
    assert out.splitlines()[-1] == ("spool %s: 1 problem (4 messages, "
                                    "4 scheduled, 3 bodies)" % r.spool)
    rc, doc = _check_json(r)
    assert rc == 1
    assert [(p["kind"], p["id"], p["file"]) for p in doc["problems"]] == [
        ("missing_body", ids[1], "msg/" + ids[1])]
    _recovered_clean(r, 3)


def test_wrong_size(relayd_factory):
    r, ids = _stopped_spool(relayd_factory)
    path = os.path.join(r.spool, "msg", ids[2])
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"tail\r\n")
    rc, out, err = _check(r)
    assert rc == 1, (out, err)
    assert _problem_lines(out) == [
        "%s: body msg/%s has %d bytes, the index record says %d"
        % (ids[2], ids[2], size + 6, size)]
    # Shorter than recorded, too.
    with open(path, "r+b") as f:
        f.truncate(size - 1)
    rc, doc = _check_json(r)
    assert rc == 1
    [p] = doc["problems"]
    assert (p["kind"], p["id"], p["file"]) == ("body_size", ids[2],
                                               "msg/" + ids[2])
    assert "has %d bytes, the index record says %d" % (size - 1, size) \
        in p["message"]
    _recovered_clean(r, 3)


def test_body_not_a_file(relayd_factory):
    r, ids = _stopped_spool(relayd_factory)
    path = os.path.join(r.spool, "msg", ids[0])
    os.unlink(path)
    os.symlink("/etc/passwd", path)
    rc, out, err = _check(r)
    assert rc == 1
    assert _problem_lines(out) == ["%s: msg/%s is not a regular file"
                                   % (ids[0], ids[0])]


def test_orphan_body_and_stray_files(relayd_factory):
    r, ids = _stopped_spool(relayd_factory)
    msg = os.path.join(r.spool, "msg")
    orphan = "0" * 15 + "1"
    with open(os.path.join(msg, ids[0]), "rb") as f:
        data = f.read()
    with open(os.path.join(msg, orphan), "wb") as f:
        f.write(data)
    # Leftovers of bodies relayd was receiving when it stopped, and
    # files that have no business in the spool.
    for name, content in ((".p00000000000000ab", b""),
                          ("." + ids[3], b"Received: partial\r\n"),
                          (".probe77", b"")):
        with open(os.path.join(msg, name), "wb") as f:
            f.write(content)
    with open(os.path.join(r.spool, "tmp", "left\x1bover"), "wb") as f:
        f.write(b"x")
    with open(os.path.join(msg, "notes.txt"), "wb") as f:
        f.write(b"x")

    rc, out, err = _check(r)
    assert rc == 1, (out, err)
    got = sorted(_problem_lines(out))
    assert got == sorted([
        "%s: body msg/%s has no index record (orphan body)" % (orphan, orphan),
        "msg/.p00000000000000ab: stray temp file (an unfinished body; relayd "
        "removes it at start)",
        "msg/.%s: stray temp file (an unfinished body; relayd removes it at "
        "start)" % ids[3],
        "msg/.probe77: stray temp file (an unfinished body; relayd removes "
        "it at start)",
        # The escape keeps a control byte in a file name off the terminal.
        "tmp/left\\x1bover: stray temp file (an unfinished body; relayd "
        "removes it at start)",
        "msg/notes.txt: stray file (not a queue id)"]), out
    assert out.splitlines()[-1].startswith("spool %s: 6 problems" % r.spool)
    rc, doc = _check_json(r)
    kinds = sorted((p["kind"], p["id"], p["file"]) for p in doc["problems"])
    assert kinds == sorted([
        ("orphan_body", orphan, "msg/" + orphan),
        ("temp_file", None, "msg/.p00000000000000ab"),
        ("temp_file", None, "msg/." + ids[3]),
        ("temp_file", None, "msg/.probe77"),
        ("temp_file", None, "tmp/left\x1bover"),
        ("stray_file", None, "msg/notes.txt")])
    _recovered_clean(r, 4)


def test_schedule_out_of_step(relayd_factory):
    r, ids = _stopped_spool(relayd_factory, n=5)
    # ids[4] is held offline: it has no schedule entry.
    r.relayctl("hold", ids[4])
    assert _check(r)[0] == 0

    env = _index(r)
    keys = {k[8:].decode(): k for k in _sched_keys(env)}
    assert sorted(keys) == sorted(ids[:4])
    due = {q: struct.unpack(">Q", k[:8])[0] for q, k in keys.items()}
    ghost = "Z" * 16
    sched = env.open_db(b"sched", create=False)
    with env.begin(write=True, db=sched) as txn:
        # An active message loses its entry: never delivered.
        assert txn.delete(keys[ids[0]])
        # One's entry moves a day later: delivered late.
        assert txn.delete(keys[ids[1]])
        txn.put(_key(due[ids[1]] + 86400, ids[1]), b"")
        # A held message gets one, and so does a message that is gone.
        txn.put(_key(due[ids[2]], ids[4]), b"")
        txn.put(_key(due[ids[2]], ghost), b"")
        # A key that is not a time and a queue id.
        txn.put(b"garbage", b"")
    env.close()

    def ts(t):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    rc, out, err = _check(r)
    assert rc == 1, (out, err)
    assert sorted(_problem_lines(out)) == sorted([
        "%s: active with recipients due at %s, but no schedule entry for "
        "that time" % (ids[0], ts(due[ids[0]])),
        "%s: active with recipients due at %s, but no schedule entry for "
        "that time" % (ids[1], ts(due[ids[1]])),
        "%s: schedule entry at %s, but the message is due at %s"
        % (ids[1], ts(due[ids[1]] + 86400), ts(due[ids[1]])),
        "%s: schedule entry at %s for a message on hold"
        % (ids[4], ts(due[ids[2]])),
        "%s: schedule entry at %s for a message not in the index"
        % (ghost, ts(due[ids[2]])),
        "schedule entry with a key that is not a time and a queue id "
        "(hex 67617262616765)"]), out
    rc, doc = _check_json(r)
    kinds = sorted((p["kind"], p["id"] or "") for p in doc["problems"])
    assert kinds == sorted([
        ("unscheduled", ids[0]), ("unscheduled", ids[1]),
        ("stale_schedule", ids[1]), ("stale_schedule", ids[4]),
        ("stale_schedule", ghost), ("stale_schedule", "")])
    assert doc["scheduled"] == 6 and doc["messages"] == 5
    _recovered_clean(r, 5)


def test_undecodable_record(relayd_factory):
    r, ids = _stopped_spool(relayd_factory)
    env = _index(r)
    [at] = [struct.unpack(">Q", k[:8])[0] for k in _sched_keys(env)
            if k[8:] == ids[3].encode()]
    db = env.open_db(b"msg", create=False)
    with env.begin(write=True, db=db) as txn:
        txn.put(ids[3].encode(), b"\x09garbage")     # unknown version
        txn.put(b"not-a-queue-id", b"\x01")
    env.close()
    rc, out, err = _check(r)
    assert rc == 1, (out, err)
    assert sorted(_problem_lines(out)) == sorted([
        "%s: index record cannot be decoded" % ids[3],
        "%s: schedule entry at %s for a record that cannot be decoded"
        % (ids[3], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))),
        "index record with a key that is not a queue id "
        "(hex 6e6f742d612d71756575652d6964)"]), out


def test_nothing_to_check(relayd_factory, tmp_path):
    r = relayd_factory(start=False, spool=str(tmp_path / "nospool"))
    rc, out, err = _check(r)
    assert rc == 2, (rc, out, err)
    assert out == ""
    assert err == ("relayctl: no spool at %s (is spool_dir right? relayd "
                   "creates it at first start)\n" % r.spool)
    # A configuration that cannot be read is no verdict either.
    res = r.relayctl("-c", str(tmp_path / "missing.conf"), "check",
                     check=False)
    assert res.returncode == 2, res
    assert res.stdout == b""
    # Usage errors.
    res = r.relayctl("check", "extra", check=False)
    assert res.returncode == 2 and b"too many arguments" in res.stderr


@pytest.mark.parametrize("spool_sync", ["syncfs", "fsync"])
def test_clean_beside_busy_relayd(relayd_factory, spool_sync):
    """Clients commit and the operator holds, releases and deletes while
    check runs: every run is clean (what it saw mid-commit settled when it
    looked again), and relayd's own temp files are not problems."""
    r = relayd_factory(spool_sync=spool_sync, max_connections_per_ip=50)
    held = _submit(r, 6, tag="h")
    stop = threading.Event()
    errors, sent = [], [0]

    def client(i):
        try:
            with smtplib.SMTP(r.addr, r.port, timeout=30) as s:
                s.ehlo("c%d.test" % i)
                for n in range(2000):
                    if stop.is_set():
                        return
                    refused = s.sendmail(
                        "a@client.test", ["b@dest.test"],
                        "Subject: t%d-%d\r\n\r\n%s\r\n" % (
                            i, n, "x" * (100 * n % 7000)))
                    assert refused == {}, refused
                    sent[0] += 1
        except Exception as e:       # reported below, by the main thread
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sent[0] >= 20 or errors, timeout=20,
                   what="traffic")
        assert errors == [], errors
        runs = []
        for n in range(4):
            q = held[n]
            r.relayctl("hold", q)
            rc, doc = _check_json(r)
            runs.append(doc)
            assert rc == 0, doc
            assert doc["relayd"] == "running"
            r.relayctl("release", q)
            if n in (1, 3):
                r.relayctl("delete", held[4 + n // 2])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors
    assert sent[0] >= 20
    assert max(d["messages"] for d in runs) >= 20
    if spool_sync == "fsync":
        # relayd keeps empty msg/.p* files ahead of need in this mode.
        assert any(d["temp_in_use"] > 0 for d in runs), runs
    r.stop()
    rc, doc = _check_json(r)
    assert rc == 0, doc


def test_running_relayd_damage_still_reported(relayd_factory):
    """Damage that stays is reported beside a running relayd too, after
    check has looked again (rechecks > 0)."""
    r = relayd_factory()
    ids = _submit(r, 3)
    r.relayctl("hold", ids[0])       # relayd will not touch it
    os.unlink(os.path.join(r.spool, "msg", ids[0]))
    with open(os.path.join(r.spool, "tmp", "stale"), "wb") as f:
        f.write(b"x")
    rc, doc = _check_json(r)
    assert rc == 1, doc
    assert doc["relayd"] == "running" and doc["rechecks"] == 3, doc
    assert sorted((p["kind"], p["id"], p["file"]) for p in doc["problems"]) \
        == sorted([("missing_body", ids[0], "msg/" + ids[0]),
                   ("temp_file", None, "tmp/stale")])
