"""tests/e2e/test_recovery_async.py - relayd listens before its startup
recovery has finished, accepts mail meanwhile, and never takes that mail
for what recovery removes.

relayd runs recovery on its writer thread after it starts listening.
RELAYD_TEST_RECOVERY_GATE (a test hook) holds recovery's index phases until
a file exists, so the order of events is fixed without timing: while the
gate is closed the client gets 220 and 250; then the gate opens, recovery
removes exactly what an earlier run left behind (an orphan body, dot
files, a tmp/ file, a record without body), keeps the new message and the
pool files this run made meanwhile (fsync mode: named pool files), and
only then does delivery begin (the scheduler's passes are logged at debug
level; none happens while the gate is closed). Every assertion is on the order of log
lines or on the spool's contents, never on wall time."""
import os
import re

from conftest import wait_until
from conftest_upstream import SENDER, make_message, submit

OLD_ORPHAN = "01HX0000000C0000"        # below every id this run gives out
OLD_DOT = ".01HX0000000F0000"          # an earlier run's body in progress
OLD_POOL = ".p0000000000000001"        # an earlier run's pool file, used


def put(path, data=b"x\r\n"):
    with open(path, "wb") as f:
        f.write(data)


def line_index(lines, needle, start=0):
    for i in range(start, len(lines)):
        if needle in lines[i]:
            return i
    raise AssertionError("no log line with %r after line %d:\n%s" %
                         (needle, start, "\n".join(lines[start:][-40:])))


def test_listens_and_accepts_while_recovery_runs(upstream_factory, relay_to,
                                                  tmp_path):
    up = upstream_factory(tls="none")
    # log_level debug: the scheduler logs each pass ("deliver: N ready").
    r = relay_to(up, start=False, delivery="hold", spool_sync="fsync",
                 log_level="debug")
    r.start()
    old = [submit(r, SENDER, ["old%d@dest.test" % i],
                  make_message("old %d" % i, to="old%d@dest.test" % i)[0])
           for i in range(3)]
    r.stop()

    # What a crash of the earlier run could leave: one record loses its
    # body, and files without a message appear.
    msg = os.path.join(r.spool, "msg")
    lost = old[1]
    os.unlink(os.path.join(msg, lost))
    put(os.path.join(msg, OLD_ORPHAN))
    put(os.path.join(msg, OLD_DOT))
    put(os.path.join(msg, OLD_POOL))
    put(os.path.join(r.spool, "tmp", "junk"))

    r.conf["delivery"] = "smarthost"
    r.write_conf()
    gate = str(tmp_path / "gate")
    seen = len(r.log_text())
    r.start(env={"RELAYD_TEST_RECOVERY_GATE": gate}, wait_recovery=False)
    wait_until(lambda: "recovery: waiting for gate" in r.log_text()[seen:],
               timeout=20, what="recovery to wait at its gate")

    # Recovery holds: relayd answers and takes mail all the same.
    new = submit(r, SENDER, ["new@dest.test"],
                 make_message("new", to="new@dest.test")[0])
    assert os.path.exists(os.path.join(msg, new))
    names = os.listdir(msg)
    pool = [n for n in names if n.startswith(".p") and n != OLD_POOL]
    assert pool, "no pool files of this run in msg/: %s" % names
    text = r.log_text()[seen:]
    assert "index consistent" not in text, text
    assert "messages in queue" not in text, text
    assert "status=sent" not in text, text
    # The scheduler's first pass (a timer relayd arms at start, run by the
    # loop before it could answer our DATA) did not look at the schedule.
    assert not re.search(r"deliver: \d+ ready", text), text

    open(gate, "w").close()
    wait_until(lambda: "messages in queue" in r.log_text()[seen:],
               timeout=60, what="recovery to finish")
    up.wait_messages(3, timeout=30)

    lines = r.log_text()[seen:].splitlines()
    i_wait = line_index(lines, "recovery: waiting for gate")
    i_listen = line_index(lines, "listening on")
    i_new = line_index(lines, new)
    i_open = line_index(lines, "recovery: gate")
    i_index = line_index(lines, "index consistent", i_open)
    i_done = line_index(lines, "recovery: 2 messages in queue, 5 repaired",
                        i_index)
    i_sent = line_index(lines, "status=sent")
    # Listening and the new message's acceptance came before recovery
    # went on; delivery began only once the index was consistent.
    assert i_listen < i_open and i_wait < i_new < i_open < i_index < i_done
    assert i_index < i_sent, "\n".join(lines)
    for needle in ("%s: dropped index record without body" % lost,
                   "%s: removed orphan body" % OLD_ORPHAN,
                   "removed stray file msg/%s" % OLD_DOT,
                   "removed stray file msg/%s" % OLD_POOL,
                   "removed stray file tmp/junk"):
        line_index(lines, needle, i_open)
    # Nothing of this run was taken for an orphan or an unfinished body
    # while recovery ran (after it, delivery removes what it sent).
    during = lines[:i_done + 1]
    assert not any(new in ln and ("removed" in ln or "dropped" in ln)
                   for ln in during), "\n".join(during)
    assert not any("msg/.p" in ln and OLD_POOL not in ln
                   for ln in during), "\n".join(during)

    got = sorted(m["rcpt_tos"][0] for m in up.messages())
    assert got == ["new@dest.test", "old0@dest.test", "old2@dest.test"], got
    left = os.listdir(msg)
    for name in (OLD_ORPHAN, OLD_DOT, OLD_POOL, lost):
        assert name not in left, left
    assert os.listdir(os.path.join(r.spool, "tmp")) == []

    # The pool files made while recovery ran are still good bodies: more
    # messages than the pool holds (64) all go through them.
    more = [submit(r, SENDER, ["more%d@dest.test" % i],
                   make_message("more %d" % i, to="more%d@dest.test" % i)[0])
            for i in range(70)]
    assert len(set(more)) == 70
    up.wait_messages(73, timeout=60)
