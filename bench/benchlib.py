"""bench/benchlib.py - helpers shared by the benchmark scripts (bench/accept,
bench/relay): command recording for RESULTS.md, ports, waiting for a
server, settling the disk, CPU and RSS readings from /proc, host facts,
and a private Postfix instance in a temp dir. Standard library only.

The scripts import it with sys.dont_write_bytecode set, so no
__pycache__ appears in bench/.
"""
import datetime
import os
import platform
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
SYNC_EVENTS = ["fsync", "fdatasync", "syncfs", "sync", "sync_file_range",
               "msync"]
POSTFIX_DAEMONS = {"master", "smtpd", "cleanup", "qmgr", "pickup",
                   "trivial-rewrite", "postlogd", "anvil", "proxymap",
                   "bounce", "scache", "showq", "verify", "flush", "tlsmgr"}

commands = []       # (label, shell text) of what was run, for RESULTS.md
configs = []        # (file name, text) of generated configs, for RESULTS.md


def log(msg):
    print(msg, flush=True)


def q(argv):
    return " ".join(shlex.quote(a) for a in argv)


def record(label, argv, env=None):
    pre = "".join("%s=%s " % (k, shlex.quote(v)) for k, v in (env or {}).items())
    commands.append((label, pre + q(argv)))


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15.0, proc=None, host="127.0.0.1"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with status %s" % proc.returncode)
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(5)
                banner = s.recv(512)
                if banner.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("nothing answers on %s:%d" % (host, port))


def settle(secs):
    # 65 s by default, not the 30 s first suggested: on ext4 a freshly
    # deleted inode is skipped by inode allocation for 60 s (300 s while its
    # inode table block is dirty, hence the sync), and on a file system
    # without a journal every create pays a scan past those inodes
    # (recently_deleted() in the kernel profile). A run right after a large
    # delete measures that scan, not the mail system.
    os.sync()
    if secs > 0:
        log("  settling the disk for %gs (sync; sleep)" % secs)
        time.sleep(secs)
        os.sync()


def cpu_times():
    """System-wide (busy, iowait, total) jiffies from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle, iowait = v[3], v[4]
    total = sum(v[:8])
    return total - idle - iowait, iowait, total


def proc_cpu(pid):
    """utime+stime of a process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_total(pid):
    """(own, reaped) CPU seconds of a process: utime+stime of all its
    threads, and cutime+cstime, the CPU of its children that have exited
    and been waited for. 0, 0 if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tck = os.sysconf("SC_CLK_TCK")
    return ((int(rest[11]) + int(rest[12])) / tck,
            (int(rest[13]) + int(rest[14])) / tck)


def tree_cpu(master):
    """CPU seconds used so far by a process and all its children, alive or
    gone, for a master that reaps its children (Postfix's master does): its
    own time, the cutime+cstime the kernel adds to it for every reaped
    child, and the running total of each live child. A child that exits
    between two readings moves from the live sum into the master's reaped
    sum, so differences of two readings are exact (to a clock tick per
    process) without watching the short-lived processes."""
    own, reaped = proc_cpu_total(master)
    total = own + reaped
    for c in children_of(master):
        o, r = proc_cpu_total(c)
        total += o + r
    return total


def vm_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(ppid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == ppid:
                out.append(int(d))
        except OSError:
            pass
    return out






# ---- host facts -------------------------------------------------------------

def host_info():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = "%d MiB" % (int(f.readline().split()[1]) // 1024)
    except OSError:
        pass
    fs = "?"
    try:
        fs = subprocess.run(["df", "--output=fstype,source",
                             tempfile.gettempdir()], capture_output=True,
                            text=True).stdout.split("\n")[1].strip()
    except (OSError, IndexError):
        pass
    try:
        dev = os.path.basename(fs.split()[1])
        with open("/sys/fs/ext4/%s/journal_task" % dev) as f:
            if f.read().strip() == "<none>":
                fs += " (no journal)"
    except (OSError, IndexError):
        pass
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "?"
    pv = subprocess.run([POSTCONF, "-d", "-h", "mail_version"],
                        capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now().astimezone().strftime(
                "%Y-%m-%d %H:%M:%S %Z"),
            "cpus": os.cpu_count(), "model": model, "mem": mem,
            "kernel": platform.release(), "fs": fs, "postfix": pv or "?",
            "load": load}


def fmt_rss(kb):
    return "%.1f MB" % (kb / 1024.0) if kb else "n/a"



# ---- smtp-source and a counting smtp-sink ------------------------------------

def smtp_source_argv(n, c, size, port, host="127.0.0.1"):
    # -d: keep each session open and send the next message over it, so C
    # sessions carry all N messages (smtp-source has no pipelining).
    return [SMTP_SOURCE, "-d", "-l", str(size), "-m", str(n),
            "-s", str(c), "-f", "a@b.test", "-t", "c@d.test",
            "%s:%d" % (host, port)]


class SmtpSink:
    """Postfix's smtp-sink on HOST:PORT with -c, which prints a running
    "sess=S quit=Q mesg=M" counter (CR-separated, unbuffered) each time a
    message's final "." arrives or a session ends. A thread reads it, so
    the message count, and the moment it first reached a target, are
    known without any help from the system under test."""

    def __init__(self, host, port, label="smtp-sink", dump=None):
        """dump: a directory where smtp-sink writes every message it gets
        (-d; one file per transaction) for checks after the run."""
        self.host, self.port = host, port
        argv = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:       # smtp-sink refuses to run as root
            argv += ["-u", "nobody"]
        if dump:
            os.makedirs(dump, exist_ok=True)
            os.chmod(dump, 0o777)   # written by smtp-sink's user
            argv += ["-d", os.path.join(dump, "%M.")]
        argv += ["%s:%d" % (host, port), "1024"]
        record(label, argv)
        self.count = 0
        self.sessions = 0
        self.target = None
        self.t_target = None        # time.monotonic() when count >= target
        self.t_last = None          # time of the last count change
        self.cond = threading.Condition()
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_port(port, proc=self.p, host=host)
        # wait_port's probe session counts as a session, not a message.

    def _read(self):
        fd = self.p.stdout.fileno()
        tail = b""
        while True:
            try:
                b = os.read(fd, 65536)
            except OSError:
                b = b""
            if not b:
                break
            now = time.monotonic()
            tail += b
            parts = tail.replace(b"\n", b"\r").split(b"\r")
            tail = parts.pop()
            if not parts:
                continue
            last = parts[-1].split()
            vals = dict(x.split(b"=", 1) for x in last if b"=" in x)
            with self.cond:
                try:
                    m = int(vals.get(b"mesg", self.count))
                    self.sessions = int(vals.get(b"sess", self.sessions))
                except ValueError:
                    continue
                if m != self.count:
                    self.count = m
                    self.t_last = now
                if (self.target is not None and self.t_target is None
                        and self.count >= self.target):
                    self.t_target = now
                self.cond.notify_all()

    def expect(self, n):
        """Count from now on: the target is the current count plus n."""
        with self.cond:
            self.target = self.count + n
            self.base = self.count
            self.t_target = None

    def wait(self, timeout, stall=None, on_stall=None):
        """Waits until the target is reached, the timeout passes, or (with
        stall) no message arrived for that many seconds. Returns
        t_target or None."""
        end = time.monotonic() + timeout
        with self.cond:
            while self.t_target is None:
                now = time.monotonic()
                if now >= end:
                    break
                if stall and now - (self.t_last or now) > stall:
                    if on_stall is None or not on_stall():
                        break
                    self.t_last = now
                self.cond.wait(min(1.0, end - now))
            return self.t_target

    def received(self):
        with self.cond:
            return self.count - getattr(self, "base", 0)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.reader.join(timeout=5)


# ---- a private Postfix instance -------------------------------------------------

POSTFIX_SERVICES = ["pickup", "cleanup", "qmgr", "rewrite", "bounce", "defer",
                    "trace", "verify", "flush", "proxymap", "proxywrite",
                    "showq", "error", "retry", "discard", "anvil", "scache",
                    "postlog"]


def postfix_master_cf(port, extra=(), by="bench/accept", host="127.0.0.1"):
    """Debian's master.cf cut down to the services a hold-only instance
    needs (plus EXTRA, e.g. the smtp client for one that delivers), the
    smtp listener moved to HOST:PORT, chroot off (a fresh queue directory
    has no chroot jail)."""
    src = "/etc/postfix/master.cf"
    if not os.path.exists(src):
        src = "/etc/postfix/master.cf.proto"
    want = set(POSTFIX_SERVICES) | set(extra)
    out = ["# generated by %s from %s" % (by, src),
           "%s:%d inet n - n - - smtpd" % (host, port)]
    keep = False
    with open(src) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace():       # continuation (-o ...) of the last
                if keep:
                    out.append(line)
                continue
            f_ = line.split()
            keep = f_[0] in want and f_[1] != "inet"
            if keep:
                f_[4] = "n"             # chroot column
                out.append(" ".join(f_))
    return "\n".join(out) + "\n"


POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


class PostfixInstance:
    """A Postfix instance of its own under ROOT/{etc,spool,data,log}, with
    the main.cf and master.cf texts given, started with `postfix -c ETC
    check` and `start` and always stopped with `postfix -c ETC stop` (its
    master killed by PID if it lingers). The system's Postfix is not
    touched. Needs root."""

    def __init__(self, root, main_cf, master_cf, label="postfix"):
        self.root, self.label = root, label
        self.etc, self.spool, self.data, self.logd = (
            os.path.join(root, d) for d in ("etc", "spool", "data", "log"))
        for d in (root, self.etc, self.spool, self.data, self.logd):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        pf = pwd.getpwnam("postfix")
        os.chown(self.data, pf.pw_uid, pf.pw_gid)
        os.chown(self.logd, pf.pw_uid, pf.pw_gid)
        rel = os.path.basename(root)
        for name, text in (("main.cf", main_cf), ("master.cf", master_cf)):
            with open(os.path.join(self.etc, name), "w") as f:
                f.write(text)
            configs.append((rel + "/etc/" + name, text))
        self.maillog = os.path.join(self.logd, "postfix.log")
        # Postfix's tools take the instance from MAIL_CONFIG (what -c sets).
        self.env = dict(os.environ, MAIL_CONFIG=self.etc)
        self.master_pid = None

    def cmd(self, *args, check=True, label=None):
        argv = [POSTFIX, "-c", self.etc] + list(args)
        record(label or self.label, argv)
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError("%s: %s" % (q(argv), (r.stderr + r.stdout).strip()))
        return r

    def start(self, port, host="127.0.0.1"):
        self.cmd("check")       # creates the missing queue directories
        self.cmd("start")
        pidfile = os.path.join(self.spool, "pid", "master.pid")
        end = time.monotonic() + 10
        while time.monotonic() < end and self.master_pid is None:
            try:
                with open(pidfile) as f:
                    self.master_pid = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        wait_port(port, host=host)

    def stop(self):
        self.cmd("stop", check=False)
        pid = self.master_pid
        if pid:
            end = time.monotonic() + 15
            while time.monotonic() < end and os.path.exists("/proc/%d" % pid):
                time.sleep(0.1)
            if os.path.exists("/proc/%d" % pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.master_pid = None

    def cpu(self):
        """CPU seconds of the master and every child so far (tree_cpu)."""
        return tree_cpu(self.master_pid) if self.master_pid else 0.0

    def rss(self):
        """(sum of VmHWM over the master and its children in kB, number of
        processes, largest kB). Shared pages count once per process."""
        procs = [self.master_pid] + children_of(self.master_pid)
        hwm = [vm_hwm_kb(p) for p in procs]
        return sum(hwm), len(hwm), max(hwm, default=0)

    def queued(self, queues=POSTFIX_QUEUES):
        """Queue files in the given queues (a directory walk, no showq)."""
        n = 0
        for qd in queues:
            for _, _, files in os.walk(os.path.join(self.spool, qd)):
                n += len(files)
        return n

    def log_count(self, needle):
        try:
            with open(self.maillog, errors="replace") as f:
                return sum(1 for line in f if needle in line)
        except OSError:
            return 0
