"""tests/e2e/test_relayctl_log.py - `relayctl log`: relayd's log_file read
back (filters on the delivery lines, one message's whole story with
--id, --json), followed with -f across a logrotate-style rename (relayd
reopens on SIGUSR1) and a truncation; log_syslog sends the same lines to
syslog (a datagram socket standing for /dev/log in a private mount
namespace). Against a real aiosmtpd smarthost."""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading

import pytest

from conftest import RELAYCTL, RELAYD, SANITIZE, wait_until
from conftest_upstream import (SENDER, make_message, notification_id,
                               removed, submit, wait_status)

NO_SUCH_USER = "550 5.1.1 <bad@dest.test>: no such user"


class Follower:
    """`relayctl log -f ARGS` with its output read by a thread; stopped
    by PID (SIGTERM) at the end. With -n 0 the lines already in the file
    when relayctl has read it to the end are history, not output: the
    constructor returns once relayctl holds the log open at its end (its
    descriptor's offset in /proc), so what the test does next is new."""

    def __init__(self, r, *args):
        self.p = subprocess.Popen([RELAYCTL, "-c", r.conf_path, "log", "-f",
                                   "-n", "0"] + list(args),
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)
        self.lines = []
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        wait_until(lambda: self._at_end(r.logfile), timeout=20,
                   what="relayctl log -f to reach the end of the log")

    def _at_end(self, path):
        if self.p.poll() is not None:
            raise AssertionError("relayctl log -f exited %s: %s" % (
                self.p.returncode, self.p.stderr.read().decode()))
        size = os.stat(path).st_size
        d = "/proc/%d/fd" % self.p.pid
        try:
            fds = os.listdir(d)
        except FileNotFoundError:
            return False
        for fd in fds:
            try:
                if os.readlink(os.path.join(d, fd)) != os.path.realpath(path):
                    continue
                with open("/proc/%d/fdinfo/%s" % (self.p.pid, fd)) as f:
                    pos = int(f.readline().split()[1])
            except (OSError, ValueError, IndexError):
                continue
            return pos >= size
        return False

    def _read(self):
        for raw in self.p.stdout:
            with self.lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def text(self):
        with self.lock:
            return list(self.lines)

    def wait_for(self, needle, what):
        def seen():
            if self.p.poll() is not None:
                raise AssertionError("relayctl log -f exited %s: %s" % (
                    self.p.returncode, self.p.stderr.read().decode()))
            return any(needle in x for x in self.text())
        wait_until(seen, timeout=20, what=what)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.t.join(timeout=10)
        return self.p.returncode


def send(r, subject, rcpts=("rcpt@dest.test",), sender=SENDER):
    content, _ = make_message(subject)
    return submit(r, sender, list(rcpts), content)


def log(r, *args, check=True):
    res = r.relayctl("log", *args, check=check)
    return res.stdout.decode().splitlines()


def test_follow_across_rotation_and_truncation(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls")
    r = relay_to(up)
    f = Follower(r, "--status", "sent")
    try:
        q1 = send(r, "log -f one")
        f.wait_for("%s: to=<rcpt@dest.test>" % q1, "the first sent line")

        # logrotate's way: rename, then SIGUSR1 makes relayd reopen.
        os.rename(r.logfile, r.logfile + ".1")
        r.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: os.path.exists(r.logfile), timeout=10,
                   what="relayd to open a new log file")
        q2 = send(r, "log -f two")
        f.wait_for("%s: to=<rcpt@dest.test>" % q2,
                   "the sent line written to the new file")
        # More in the file than the few lines after the truncation, as
        # with any real log: that is how a truncation shows (tail -F).
        more = [send(r, "log -f filler %d" % i) for i in range(6)]
        for q in more:
            f.wait_for("%s: to=<rcpt@dest.test>" % q, "filler lines")

        with open(r.logfile, "r+") as fh:      # copytruncate's way
            fh.truncate(0)
        q3 = send(r, "log -f three")
        f.wait_for("%s: to=<rcpt@dest.test>" % q3,
                   "the sent line written after the truncation")
    finally:
        rc = f.stop()
    assert rc == 0
    out = f.text()
    # Only delivery lines with status=sent, each message once, in order.
    assert all("status=sent" in x for x in out), out
    def at(q):
        return next(i for i, x in enumerate(out) if "%s: to=" % q in x)
    # The fillers were sent together: any order among them.
    assert at(q1) < at(q2) < min(map(at, more)) <= max(map(at, more)) < \
        at(q3), out
    assert len(out) == 3 + len(more), out
    # (Written to the new file, truncated since; stderr has every line.)
    assert "SIGUSR1: log file reopened" in r.stderr_text()


def test_id_is_the_whole_story_in_order(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"bad@dest.test": NO_SUCH_USER}})
    r = relay_to(up)
    other = send(r, "someone else's")
    qid = send(r, "a story", rcpts=("good@dest.test", "bad@dest.test"))
    wait_status(r, qid, "bad@dest.test", "bounced")
    wait_status(r, qid, "good@dest.test", "sent")
    wait_until(lambda: removed(r, qid), timeout=30, what="removal")
    dsn = notification_id(r, qid)
    assert dsn
    wait_until(lambda: removed(r, dsn), timeout=30, what="the DSN's removal")

    lines = log(r, "--id", qid.lower())      # ids are typed in any case
    assert lines and not any(other in x for x in lines), lines
    assert all(qid in x or dsn in x for x in lines), lines

    def at(pred, what):
        for i, x in enumerate(lines):
            if pred(x):
                return i
        raise AssertionError("no %s line in:\n%s" % (what, "\n".join(lines)))
    acc = at(lambda x: "%s: from=<%s>" % (qid, SENDER) in x, "accepted")
    good = at(lambda x: "%s: to=<good@dest.test>" % qid in x and
              "status=sent" in x, "sent")
    bad = at(lambda x: "%s: to=<bad@dest.test>" % qid in x and
             "status=bounced" in x, "bounced")
    note = at(lambda x: "notification: %s" % dsn in x, "DSN")
    dsn_sent = at(lambda x: "%s: to=<%s>" % (dsn, SENDER) in x and
                  "status=sent" in x, "DSN delivery")
    gone = at(lambda x: x.endswith("%s: removed" % qid), "removed")
    assert acc < min(good, bad) and bad < note < dsn_sent, lines
    assert acc < gone

    events = [json.loads(x) for x in log(r, "--id", qid, "--json")]
    assert len(events) == len(lines)
    mine = [e["event"] for e in events if e["id"] == qid]
    assert mine[0] == "accepted" and "removed" in mine, mine
    assert {"sent", "bounced", "dsn"} <= set(mine), mine
    b = next(e for e in events if e["event"] == "bounced")
    assert b["to"] == "bad@dest.test" and b["dsn"] == "5.1.1", b
    assert "no such user" in b["reply"], b
    d = next(e for e in events if e["event"] == "dsn")
    assert d["dsn_id"] == dsn
    a = events[0]
    assert a["event"] == "accepted" and a["from"] == SENDER, a
    assert a["time"].endswith("Z") and a["pid"] == r.pid and \
        a["level"] == "info", a


def test_filters(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"bad@dest.test": NO_SUCH_USER}})
    r = relay_to(up)
    q1 = send(r, "from one", sender="one@client.test")
    q2 = send(r, "from two", rcpts=("bad@dest.test",),
              sender="two@client.test")
    wait_status(r, q1, "rcpt@dest.test", "sent")
    wait_status(r, q2, "bad@dest.test", "bounced")

    bounced = log(r, "--status", "bounced")
    assert any(q2 in x for x in bounced)
    assert all("status=bounced" in x for x in bounced), bounced

    to = log(r, "--rcpt", "RCPT@dest.test")     # addresses in any case
    assert to and all("to=<rcpt@dest.test>" in x for x in to), to
    assert any(q1 in x for x in to)

    frm = log(r, "--from", "two@client.test")
    assert any("%s: from=<two@client.test>" % q2 in x for x in frm), frm
    assert any("%s: to=<bad@dest.test>" % q2 in x for x in frm), frm
    assert not any(q1 in x for x in frm), frm

    assert log(r, "--since", "2099-01-01T00:00") == []
    assert len(log(r, "--since", "1h")) >= 4
    before = r.log_text().splitlines()
    last = log(r, "-n", "1")
    # The last line then, or one relayd wrote since.
    assert len(last) == 1, last
    assert last[0] in r.log_text().splitlines()[len(before) - 1:], last

    for bad in (("--status", "lost"), ("--since", "yesterday"),
                ("-n", "-1"), ("--id", "not-an-id")):
        res = r.relayctl("log", *bad, check=False)
        assert res.returncode == 2, (bad, res)
        assert bad[0] in res.stderr.decode()


def test_hostile_bytes_are_escaped(relayd_factory):
    """log_file may hold anything (another writer, a damaged file): C0/C1
    controls, ESC and Unicode's bidi controls come out escaped; other
    UTF-8 stays."""
    r = relayd_factory(start=False)
    with open(r.logfile, "wb") as f:
        f.write(b"2026-12-05T10:00:00.000Z relayd[1]: info: x \x1b[2J "
                b"\xc2\x9b1m \xe2\x80\xaegnp.exe caf\xc3\xa9\n")
    out = r.relayctl("log").stdout
    assert out == (b"2026-12-05T10:00:00.000Z relayd[1]: info: x \\x1b[2J "
                   b"\\xc2\\x9b1m \\xe2\\x80\\xaegnp.exe caf\xc3\xa9\n"), out


def test_no_log_file(relayd_factory):
    r = relayd_factory(start=False, log_file="")
    res = r.relayctl("log", check=False)
    assert res.returncode == 1
    assert "log_file is not set" in res.stderr.decode()


def _can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"]).returncode == 0


def _relayd_with_devlog(relayd_factory, tmp_path, **conf):
    """relayd in a private mount namespace whose /dev is a tmpfs holding
    the device nodes it needs and, as /dev/log, a datagram socket this
    test reads: what journald or rsyslog would get. Returns (r, socket)."""
    sock_path = str(tmp_path / "devlog")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    r = relayd_factory(start=False, log_syslog="yes", **conf)
    script = r"""
set -e
mount --make-rprivate /
mkdir -p "$T/olddev"
mount --bind /dev "$T/olddev"
mount -t tmpfs -o mode=0755 tmpfs /dev
for n in null zero random urandom; do
  touch "/dev/$n"; mount --bind "$T/olddev/$n" "/dev/$n"
done
touch /dev/log
mount --bind "$SOCK" /dev/log
exec "$RELAYD" -c "$CONF"
"""
    env = dict(os.environ, T=str(tmp_path), SOCK=sock_path, RELAYD=RELAYD,
               CONF=r.conf_path)
    if SANITIZE:
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    r.stderr = open(r.stderr_path, "ab")
    r.proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=env,
                              stdout=r.stderr, stderr=r.stderr,
                              stdin=subprocess.DEVNULL)
    return r, s


class DgramReader:
    """Reads every datagram of a socket in a thread, from the start."""

    def __init__(self, s):
        self.s, self.got, self.stop = s, [], False
        s.settimeout(0.1)
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            try:
                self.got.append(self.s.recv(8192).decode("utf-8", "replace"))
            except socket.timeout:
                pass
            except OSError:
                return

    def close(self):
        self.stop = True
        self.t.join(timeout=5)


@pytest.mark.skipif(not _can_unshare(),
                    reason="needs root and unshare -m for a private /dev/log")
def test_log_syslog(relayd_factory, tmp_path):
    r, s = _relayd_with_devlog(relayd_factory, tmp_path)
    rd = DgramReader(s)
    try:
        wait_until(r._listening, timeout=20, what="relayd to listen")
        qid = send(r, "to syslog")
        wait_until(lambda: any("%s: from=<%s>" % (qid, SENDER) in x
                               for x in list(rd.got)),
                   timeout=20, what="the accepted line on the socket")
    finally:
        r.stop()
        rd.close()
        s.close()
    line = next(x for x in rd.got if "%s: from=" % qid in x)
    # <PRI> = mail (2) * 8 + info (6) = 22; ident relayd with its pid.
    assert line.startswith("<22>"), line
    assert "relayd[%d]: %s: from=<%s>" % (r.proc.pid, qid, SENDER) in line
    # The same line is in log_file too, with our own time stamp.
    assert "%s: from=<%s>" % (qid, SENDER) in r.log_text()


@pytest.mark.skipif(not _can_unshare(),
                    reason="needs root and unshare -m for a private /dev/log")
def test_log_syslog_never_blocks_relayd(relayd_factory, tmp_path):
    """A syslog reader that does not read (its queue holds 10 datagrams on
    Linux): relayd goes on accepting, drops the lines that do not fit and
    says how many when the socket takes lines again."""
    r, s = _relayd_with_devlog(relayd_factory, tmp_path)
    try:
        wait_until(r._listening, timeout=20, what="relayd to listen")
        qids = [send(r, "syslog full %d" % i) for i in range(15)]
        assert len(set(qids)) == 15     # accepted, none waited on syslog
        s.settimeout(0.5)
        first = []
        while True:
            try:
                first.append(s.recv(8192).decode("utf-8", "replace"))
            except socket.timeout:
                break
        assert 0 < len(first) < 15 * 3, len(first)
        rd = DgramReader(s)
        q = send(r, "after the drain")
        wait_until(lambda: any("%s: from=" % q in x for x in list(rd.got)),
                   timeout=20, what="a line after the drain")
        rd.close()
        # The report goes with the first line the socket takes again: a
        # line logged while the test drained it (the last session's
        # disconnect, say) or the next message's.
        dropped = [x for x in first + list(rd.got) if "lines dropped: the "
                   "syslog socket was full" in x]
        assert len(dropped) == 1 and dropped[0].startswith("<20>"), \
            (first[-5:], rd.got[:5])
    finally:
        r.stop()
        s.close()
