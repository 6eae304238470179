"""tests/e2e/test_durability_diskfull.py - A full disk and a full LMDB map
are answered with 452 4.3.1, leave nothing half-written in the spool, and
relayd keeps serving once there is room again.

The spool lives on a 4 MiB tmpfs (mounted here: the tests run as root, as
CI does); a filler file takes most of it so the spool fills after a few
messages.
"""
import json
import os
import re
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import no_unfinished

KB = 1024
MB = 1024 * KB


@pytest.fixture
def small_tmpfs():
    """A 4 MiB tmpfs, lazily unmounted and removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("test_durability_diskfull needs root to mount a tmpfs "
                    "(CI runs the e2e tests as root)")
    d = tempfile.mkdtemp(prefix="relayd-tmpfs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755",
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


def split_body(data):
    i = data.find(b"\r\n\r\n")
    assert i >= 0, "no end of header section in %r" % data[:200]
    return data[i + 4:]


def make_message(marker, size):
    line = ("%s " % marker + "y" * 70)[:76] + "\r\n"
    n = max(1, size // len(line))
    body = (line * n).encode()
    headers = ("From: <a@b.test>\r\nTo: <c@d.test>\r\nSubject: %s\r\n"
               "Message-ID: <%s@client.test>\r\n\r\n" % (marker, marker)).encode()
    return headers + body, body


def send(relayd, msg, rcpts=("c@d.test",)):
    """(code, reply text) of the end of DATA; (code, text) of an earlier
    refusal; the connection's breaking fails the test."""
    with smtplib.SMTP(relayd.addr, relayd.port, timeout=20) as s:
        s.ehlo("client.test")
        code, resp = s.mail("a@b.test")
        if code != 250:
            return code, resp
        for r in rcpts:
            code, resp = s.rcpt(r)
            if code != 250:
                return code, resp
        code, resp = s.data(msg)
        s.rset()
        return code, resp


def queue_ids(relayd):
    doc = json.loads(relayd.relayctl("list", "--json").stdout.decode())
    return [m["id"] for m in doc["messages"]]


def check_consistent(relayd, label):
    """Nothing half-written: no unfinished body is left (relayd's writer
    removes an aborted one right after the reply) and msg/ matches the
    index."""
    left = no_unfinished(relayd)
    assert left == [], "%s: unfinished bodies left: %s" % (label, left)
    ids = set(queue_ids(relayd))
    files = set(n for n in os.listdir(relayd.msg_dir()) if not n.startswith("."))
    assert files == ids, ("%s: msg/ without record: %s; record without "
                          "msg/: %s" % (label, sorted(files - ids),
                                        sorted(ids - files)))
    return ids


def qid_of(resp):
    m = re.search(rb"queued as ([0-9A-Z]{16})", resp)
    assert m, resp
    return m.group(1).decode()


def test_disk_full_gets_452_and_leaves_nothing(relayd_factory, small_tmpfs):
    filler = os.path.join(small_tmpfs, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * (2 * MB + 512 * KB))   # real pages: tmpfs has no holes here
    spool = os.path.join(small_tmpfs, "spool")
    # The writes themselves failing is what this test is about: the early
    # refusal at MAIL (queue_min_free, 100M by default, more than this
    # tmpfs holds) is off here and tested in test_durability_faults.py.
    relayd = relayd_factory(spool=spool, queue_min_free="0")

    accepted = {}   # qid -> body
    refusal = None
    for i in range(60):
        msg, body = make_message("fill-%02d" % i, 300 * KB)
        code, resp = send(relayd, msg)
        if code == 250:
            accepted[qid_of(resp)] = body
            continue
        refusal = (i, code, resp, body)
        break
    assert refusal, "60 messages of 300 KiB fitted in a 4 MiB tmpfs?"
    i, code, resp, refused_body = refusal
    print("disk full: %d accepted, then message %d got %d %s" %
          (len(accepted), i, code, resp.decode(errors="replace")))
    assert code == 452 and resp.startswith(b"4.3.1"), (code, resp)
    assert accepted, "the first message was refused already"

    # Nothing of the refused message is left; the accepted ones are intact.
    ids = check_consistent(relayd, "after 452")
    assert ids == set(accepted), (sorted(ids), sorted(accepted))
    stored = relayd.stored()
    for qid, body in accepted.items():
        assert split_body(stored[qid]) == body, "%s damaged" % qid
    assert not any(b"fill-%02d " % i in d for d in stored.values())

    # Still full: refused again the same way, and the daemon is alive.
    msg, _ = make_message("again", 300 * KB)
    code, resp = send(relayd, msg)
    assert (code, resp[:5]) == (452, b"4.3.1"), (code, resp)
    check_consistent(relayd, "after second 452")

    # Squeeze the last pages out with smaller and smaller messages; every
    # refusal must be a 452 4.3.1 and leave the spool consistent (the last
    # page may go to a body or to the index, whichever asks first).
    squeezed = 0
    for size in (64 * KB, 16 * KB, 4 * KB, 1 * KB, 100):
        for j in range(40):
            msg, body = make_message("sq-%d-%02d" % (size, j), size)
            code, resp = send(relayd, msg)
            if code != 250:
                assert (code, resp[:5]) == (452, b"4.3.1"), (code, resp)
                break
            accepted[qid_of(resp)] = body
            squeezed += 1
        ids = check_consistent(relayd, "squeeze %d" % size)
        assert ids == set(accepted), (sorted(ids), sorted(accepted))
    print("squeezed in %d more small messages" % squeezed)

    # BDAT while full: refused with 452 4.3.1 (on a chunk or at LAST),
    # never queued, nothing left behind.
    msg, _ = make_message("bdat-full", 300 * KB)
    replies = bdat_transaction(relayd, msg, 100 * KB)
    print("BDAT while full: %s" % replies)
    assert not any(c == 250 and b"queued as" in t for c, t in replies), replies
    assert any((c, t[:5]) == (452, b"4.3.1") for c, t in replies), replies
    check_consistent(relayd, "after BDAT refusal")

    # Room again: relayd keeps serving without a restart.
    os.unlink(filler)
    msg, body = make_message("after-free", 300 * KB)
    code, resp = send(relayd, msg)
    assert code == 250, (code, resp)
    qid = qid_of(resp)
    ids = check_consistent(relayd, "after freeing space")
    assert ids == set(accepted) | {qid}
    assert split_body(relayd.stored()[qid]) == body


def _reply(f):
    lines = []
    for _ in range(50):
        line = f.readline(4096)
        assert line.endswith(b"\r\n"), "connection closed: %r" % lines
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(l[4:] for l in lines)
    raise AssertionError("endless reply")


def bdat_transaction(relayd, msg, chunk):
    """MAIL, RCPT, then msg in BDAT chunks until one is refused; each
    chunk's (code, text)."""
    with socket.create_connection((relayd.addr, relayd.port), timeout=20) as sock:
        f = sock.makefile("rb")
        assert _reply(f)[0] == 220
        sock.sendall(b"EHLO client.test\r\n")
        assert _reply(f)[0] == 250
        sock.sendall(b"MAIL FROM:<a@b.test>\r\n")
        assert _reply(f)[0] == 250
        sock.sendall(b"RCPT TO:<c@d.test>\r\n")
        assert _reply(f)[0] == 250
        out = []
        for off in range(0, len(msg), chunk):
            part = msg[off:off + chunk]
            last = off + chunk >= len(msg)
            sock.sendall(b"BDAT %d%s\r\n" % (len(part), b" LAST" if last else b""))
            sock.sendall(part)
            out.append(_reply(f))
            if out[-1][0] != 250:
                break   # RFC 3030 §2: the transaction has failed
        sock.sendall(b"QUIT\r\n")
        return out


def pipelined_transaction(relayd, rcpts, msg):
    """MAIL, every RCPT and DATA in one write (PIPELINING); returns the
    final reply (code, text) and how many RCPTs were accepted."""
    with socket.create_connection((relayd.addr, relayd.port), timeout=20) as sock:
        f = sock.makefile("rb")

        def reply():
            return _reply(f)

        assert reply()[0] == 220
        sock.sendall(b"EHLO client.test\r\n")
        code, text = reply()
        assert code == 250 and b"PIPELINING" in text
        cmds = [b"MAIL FROM:<a@b.test>\r\n"]
        cmds += [b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts]
        cmds.append(b"DATA\r\n")
        sock.sendall(b"".join(cmds))
        code, text = reply()
        assert code == 250, (code, text)
        ok = 0
        for _ in rcpts:
            code, text = reply()
            ok += code == 250
        code, text = reply()
        if code != 354:
            return (code, text), ok
        sock.sendall(msg.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        final = reply()
        sock.sendall(b"QUIT\r\n")
        return final, ok


def test_lmdb_map_full_gets_452_and_leaves_nothing(relayd_factory):
    # 1M is queue_map_size's lower bound (common/conf.c).
    relayd = relayd_factory(queue_map_size="1M", max_recipients=1000)
    rcpts = ["recipient-%04d-with-a-rather-long-local-part@"
             "some-destination-domain.test" % n for n in range(1000)]
    accepted = {}
    refusal = None
    t0 = time.monotonic()
    for i in range(60):
        msg, body = make_message("map-%02d" % i, 2 * KB)
        assert time.monotonic() - t0 < 20, "map not full after 20s"
        (code, text), ok = pipelined_transaction(relayd, rcpts, msg)
        assert ok == len(rcpts), "only %d recipients accepted" % ok
        if code == 250:
            accepted[qid_of(text)] = body
            continue
        refusal = (i, code, text)
        break
    elapsed = time.monotonic() - t0
    assert refusal, "60 messages with 1000 recipients fitted in a 1 MiB map?"
    i, code, text = refusal
    print("map full: %d accepted, then message %d got %d %s (%.2fs)" %
          (len(accepted), i, code, text.decode(errors="replace").strip(), elapsed))
    assert code == 452 and text.startswith(b"4.3.1"), (code, text)

    ids = check_consistent(relayd, "after map full")
    assert ids == set(accepted), (sorted(ids), sorted(accepted))
    stored = relayd.stored()
    for qid, body in accepted.items():
        assert split_body(stored[qid]) == body
    # Still alive and still answering the same way.
    msg, _ = make_message("map-again", 2 * KB)
    (code, text), _ = pipelined_transaction(relayd, rcpts, msg)
    assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
    check_consistent(relayd, "after second map-full refusal")
