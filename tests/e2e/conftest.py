"""
tests/e2e/conftest.py - Starts and stops the real relayd for end-to-end
tests. Each daemon gets its own spool, its own 127.0.0.x address and port,
and is stopped by its PID; every wait is a bounded loop.

Fixtures:
  relayd        a running daemon with the default test configuration
  relayd_factory(**conf) -> Relayd   start one with extra config keys
Helpers on Relayd: .addr, .port, .spool, .log_text(), .relayctl(*args),
  .stop(), .kill(), .start(), .rss_kb(), .peak_rss_kb()
"""
import itertools
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

RELAYD = os.environ.get("RELAYD_BIN", os.path.abspath("build/relayd"))
RELAYCTL = os.environ.get("RELAYCTL_BIN", os.path.abspath("build/relayctl"))
SANITIZE = os.environ.get("SANITIZE") == "1"

_counter = itertools.count(2)


def _next_endpoint():
    """A distinct loopback address and a free port on it."""
    n = next(_counter)
    addr = "127.0.%d.%d" % ((os.getpid() + n) % 200 + 20, n % 250 + 2)
    s = socket.socket()
    try:
        s.bind((addr, 0))
        return addr, s.getsockname()[1]
    finally:
        s.close()


def wait_until(pred, timeout=10.0, step=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


class Relayd:
    def __init__(self, workdir, spool=None, **conf):
        self.workdir = workdir
        self.addr, self.port = _next_endpoint()
        self.spool = spool or os.path.join(workdir, "spool")
        self.logfile = os.path.join(workdir, "relayd.log")
        self.stderr_path = os.path.join(workdir, "relayd.stderr")
        self.conf = {
            "hostname": "relay.test",
            "listen": "%s:%d" % (self.addr, self.port),
            "spool_dir": self.spool,
            "log_file": self.logfile,
            "log_stderr": "yes",
            "log_level": "info",
            "delivery": "hold",
        }
        # Run as root, relayd drops to `user` (default relayd, an account
        # a test machine may lack). Test daemons stay root, explicitly:
        # their work directories are mkdtemp()'s 0700 directories of
        # root's, and tests read and plant spool files as root.
        # test_privdrop.py drops to a real account and checks the spool
        # and the process from outside.
        if os.geteuid() == 0:
            self.conf["user"] = "root"
        self.conf.update({k: str(v) for k, v in conf.items()})
        self.conf_path = os.path.join(workdir, "relayd.conf")
        self.write_conf()
        self.proc = None

    def write_conf(self):
        with open(self.conf_path, "w") as f:
            for k, v in self.conf.items():
                f.write("%s = %s\n" % (k, v))

    def start(self, env=None, wait_recovery=True):
        """Starts relayd and waits (bounded) until it listens and, unless
        wait_recovery is false, until its startup recovery has finished:
        relayd listens at once and recovers the spool in the background,
        and most scenarios mean to look at a recovered spool."""
        seen = len(self.log_text())
        e = dict(os.environ)
        if SANITIZE:
            e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        if env:
            e.update(env)
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([RELAYD, "-c", self.conf_path],
                                     stdout=self.stderr, stderr=self.stderr,
                                     stdin=subprocess.DEVNULL, env=e)
        wait_until(self._listening, timeout=20, what="relayd to listen")
        if wait_recovery:
            wait_until(lambda: self._recovered(seen), timeout=60,
                       what="relayd's startup recovery to finish")
        return self

    def _recovered(self, seen):
        if self.proc.poll() is not None:
            raise AssertionError("relayd exited with %s:\n%s" %
                                 (self.proc.returncode, self.stderr_text()))
        if self.conf.get("log_level", "info") not in ("info", "debug"):
            return True     # the lines below are not logged
        text = self.log_text()[seen:]
        return ("messages in queue," in text and "recovery: " in text) or \
            "recovery: stopped" in text

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("relayd exited with %s:\n%s" %
                                 (self.proc.returncode, self.stderr_text()))
        try:
            socket.create_connection((self.addr, self.port), timeout=1).close()
            return True
        except OSError:
            return False

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, expect_clean=True):
        """SIGTERM by PID and wait (bounded); checks a clean exit."""
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError("relayd did not stop on SIGTERM")
        finally:
            self.stderr.close()
        if expect_clean:
            err = self.stderr_text()
            assert "AddressSanitizer" not in err, err[-4000:]
            assert "runtime error" not in err, err[-4000:]
            assert "LeakSanitizer" not in err, err[-4000:]
            assert rc == 0, "relayd exited %d:\n%s" % (rc, err[-4000:])

    def kill(self):
        """SIGKILL by PID: no cleanup at all."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.stderr.close()

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_text(self):
        try:
            with open(self.logfile, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def relayctl(self, *args, check=True):
        r = subprocess.run([RELAYCTL, "-c", self.conf_path] + list(args),
                           capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError("relayctl %s failed (%d): %s" %
                                 (args, r.returncode, r.stderr.decode()))
        return r

    def _status(self, key):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def rss_kb(self):
        return self._status("VmRSS")

    def peak_rss_kb(self):
        return self._status("VmHWM")

    def msg_dir(self):
        return os.path.join(self.spool, "msg")

    def stored(self):
        """{qid: bytes} of every committed body in the spool (msg/ID;
        msg/.ID is a body still being received or being discarded)."""
        out = {}
        d = self.msg_dir()
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name.startswith("."):
                    continue
                with open(os.path.join(d, name), "rb") as f:
                    out[name] = f.read()
        return out


@pytest.fixture
def relayd_factory():
    started = []
    dirs = []

    def make(start=True, spool=None, env=None, **conf):
        d = tempfile.mkdtemp(prefix="relayd-e2e-")
        dirs.append(d)
        r = Relayd(d, spool=spool, **conf)
        started.append(r)
        if start:
            r.start(env=env)
        return r

    yield make
    errors = []
    for r in started:
        try:
            r.stop()
        except AssertionError as e:
            errors.append(str(e))
    for d in dirs:
        subprocess.run(["rm", "-rf", d], check=False)
    if errors:
        raise AssertionError("\n".join(errors))


@pytest.fixture
def relayd(relayd_factory):
    return relayd_factory()


# ---- raw SMTP client (byte-exact cases) -----------------------------------
# Added for the protocol scenarios; nothing above depends on it.

import re as _re

QID_RE = _re.compile(r"^[0-9A-HJKMNP-TV-Z]{16}$")
_ENH_RE = _re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


class Reply:
    """One complete SMTP reply (all its lines)."""

    def __init__(self, lines):
        self.lines = lines                      # list of str, no CRLF
        self.code = int(lines[-1][:3])
        words = lines[-1][4:].split(" ", 1)
        if words and _ENH_RE.match(words[0]):
            self.enh = words[0]
            self.text = words[1] if len(words) > 1 else ""
        else:
            self.enh = ""
            self.text = lines[-1][4:]

    @property
    def pair(self):
        """(code, enhanced code), what most asserts compare."""
        return (self.code, self.enh)

    def queued_id(self):
        m = _re.search(r"queued as (\S+)", self.text)
        assert self.code == 250 and m, "not a queued reply: %r" % self
        return m.group(1)

    def __repr__(self):
        return "Reply(%r)" % ("\\r\\n".join(self.lines),)


class SmtpRaw:
    """A plain socket speaking SMTP byte for byte. Every read is bounded."""

    def __init__(self, addr, port, source=None, timeout=10.0):
        self.sock = socket.create_connection(
            (addr, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _take_reply(self):
        """Pops one complete reply from the buffer, or None."""
        lines, pos = [], 0
        while True:
            nl = self.buf.find(b"\r\n", pos)
            if nl < 0:
                return None
            line = self.buf[pos:nl].decode("utf-8", "replace")
            pos = nl + 2
            assert _re.match(r"^\d{3}[ -]", line) or _re.match(r"^\d{3}$", line), \
                "malformed reply line %r" % line
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                self.buf = self.buf[pos:]
                return Reply(lines)

    def replies(self, n, timeout=None):
        """Exactly n complete replies; fails on timeout or EOF first."""
        deadline = time.monotonic() + (timeout or self.timeout)
        out = []
        while len(out) < n:
            r = self._take_reply()
            if r is not None:
                out.append(r)
                continue
            if self.eof or not self._fill(deadline):
                raise AssertionError(
                    "got %d of %d replies (%s); so far %r, pending %r" %
                    (len(out), n, "EOF" if self.eof else "timeout", out,
                     self.buf[:300]))
        return out

    def reply(self, timeout=None):
        return self.replies(1, timeout)[0]

    def cmd(self, line, timeout=None):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply(timeout)

    def no_more(self, wait=0.3):
        """Asserts nothing else arrives within `wait` seconds."""
        deadline = time.monotonic() + wait
        while self._fill(deadline):
            pass
        assert self.buf == b"", "unexpected extra output %r" % self.buf[:300]

    def closed_within(self, timeout):
        """True when the peer closes within timeout (extra bytes kept in
        self.buf); False if it stays open."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def smtp_connect(relayd, source=None, timeout=10.0, greet=True):
    """A SmtpRaw to relayd; with greet, reads and checks the 220 greeting."""
    c = SmtpRaw(relayd.addr, relayd.port, source=source, timeout=timeout)
    if greet:
        g = c.reply()
        assert g.code == 220, g
        c.greeting = g
    return c


def spool_files(relayd, sub):
    """Names in spool/<sub> (e.g. 'msg', 'tmp'); [] when missing."""
    d = os.path.join(relayd.spool, sub)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def unfinished_bodies(relayd):
    """Bodies not (or no longer) part of the queue: msg/.ID files, which
    relayd writes while DATA arrives and removes on abort, and anything in
    tmp/ (unused by relayd, cleaned at startup). An empty msg/.p* file is
    not a body: relayd creates such files ahead of need (its pool) and a
    running relayd always has some; once one holds bytes (a Received
    header comes first) it is a body like any other."""
    msg = os.path.join(relayd.spool, "msg")

    def is_body(n):
        if not n.startswith("."):
            return False
        if not n.startswith(".p"):
            return True
        try:
            return os.path.getsize(os.path.join(msg, n)) > 0
        except FileNotFoundError:
            return False
    return (["msg/" + n for n in spool_files(relayd, "msg") if is_body(n)]
            + ["tmp/" + n for n in spool_files(relayd, "tmp")])


def no_unfinished(relayd, timeout=5.0):
    """Waits (bounded) for unfinished bodies to be removed: an aborted body
    is unlinked by relayd's writer thread, right after the reply. Returns
    what is still there ([] when clean)."""
    deadline = time.monotonic() + timeout
    left = unfinished_bodies(relayd)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = unfinished_bodies(relayd)
    return left


def list_json(relayd):
    """relayctl --json list, parsed."""
    import json
    r = relayd.relayctl("list", "--json")
    return json.loads(r.stdout.decode())


def show_json(relayd, qid):
    import json
    r = relayd.relayctl("show", qid, "--json")
    return json.loads(r.stdout.decode())


from conftest_upstream import *  # noqa: E402,F401,F403 (delivery-test fixtures)
