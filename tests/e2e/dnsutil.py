"""
tests/e2e/dnsutil.py - Test DNS servers on 127.0.0.1, started by a test
and stopped by PID, every wait bounded. Reusable by the direct-delivery
tests:

  Dnsmasq(workdir, zone)   dnsmasq (Debian's dnsmasq-base) authoritative
      for the zone `test` (and the reverse zones of 127.0.0.0/8 and ::1):
      zone = {"mx": [(domain, host, pref)], "hosts": [(name, addr)],
              "txt": [(name, [strings without commas])],
              "cname": [(alias, target)]}
      Each "hosts" entry makes A or AAAA records and, for the first
      address of a name, its PTR. NODATA answers carry the zone's SOA
      (negative TTL = auth_ttl). .servers is "127.0.0.1:PORT" for
      dns_servers; .queries(name, qtype) counts what it was asked.
  DnsStub(workdir, names, tcp=False, addr="127.0.0.1")   (or "::1")
      tests/e2e/dnsstub.py (dnspython)
      for what dnsmasq cannot answer: SERVFAIL, REFUSED, truncation
      without a TCP answer, null MX, silence, any records; names as
      documented there. Same .servers and .queries().

Both are context managers; stop() is idempotent.
"""
import json
import os
import signal
import socket
import subprocess
import time

import dns.exception
import dns.message
import dns.query

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
DNSMASQ = "/usr/sbin/dnsmasq"


def _free_port(addr="127.0.0.1"):
    """A port free for both UDP and TCP on addr (dnsmasq binds both)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((addr, 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind((addr, port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise AssertionError("no free port for a DNS server")


def _stop(proc, what):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError("%s did not stop on SIGTERM" % what)


def _wait_answer(addr, port, name, proc, what, timeout=10.0):
    """Bounded: until the server answers a query (any rcode)."""
    deadline = time.monotonic() + timeout
    q = dns.message.make_query(name, "SOA")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("%s exited with %s" % (what, proc.returncode))
        try:
            dns.query.udp(q, addr, port=port, timeout=0.2)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.05)
    raise AssertionError("%s did not answer within %.0fs" % (what, timeout))


class Dnsmasq:
    def __init__(self, workdir, zone, auth_ttl=300, addr="127.0.0.1",
                 as_user=None, port=None):
        self.workdir = workdir
        # A fixed port (bench/direct: 53, for a resolv.conf, which takes
        # none); default a free one.
        self.fixed_port = port
        self.as_user = as_user      # start it as this account (tests)
        self.zone = zone
        self.auth_ttl = auth_ttl
        self.addr = addr
        self.port = None
        self.proc = None
        self.log = os.path.join(workdir, "dnsmasq.log")

    @property
    def servers(self):
        return "%s:%d" % (self.addr, self.port)

    def args(self):
        a = [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
             "--pid-file=",
             # Changes user only when started as root; as another user
             # it keeps running as that user.
             "--user=nobody",
             "--port=%d" % self.port, "--listen-address=%s" % self.addr,
             "--bind-interfaces",
             # The subnets make dnsmasq authoritative for their reverse
             # zones too (PTR), and A/AAAA must lie in them.
             "--auth-zone=test,127.0.0.0/8,::1/128",
             "--auth-server=ns.test,%s" % self.addr,
             "--auth-ttl=%d" % self.auth_ttl,
             "--auth-soa=1,hostmaster.test",
             "--log-queries", "--log-facility=%s" % self.log]
        for domain, host, pref in self.zone.get("mx", []):
            a.append("--mx-host=%s,%s,%d" % (domain, host, pref))
        for name, addr in self.zone.get("hosts", []):
            a.append("--host-record=%s,%s" % (name, addr))
        for name, strings in self.zone.get("txt", []):
            # One argument, no shell: the strings are taken literally
            # and separated by commas (so they hold none).
            assert not any("," in s for s in strings), strings
            a.append("--txt-record=%s,%s" % (name, ",".join(strings)))
        for alias, target in self.zone.get("cname", []):
            a.append("--cname=%s,%s" % (alias, target))
        return a

    def start(self):
        self.port = self.fixed_port or _free_port(self.addr)
        self.stderr = open(os.path.join(self.workdir, "dnsmasq.err"), "wb")
        self.proc = subprocess.Popen(self.args(), stdout=self.stderr,
                                     stderr=subprocess.STDOUT,
                                     user=self.as_user)
        _wait_answer(self.addr, self.port, "test.", self.proc, "dnsmasq")
        return self

    def stop(self):
        try:
            _stop(self.proc, "dnsmasq")
        finally:
            if self.proc is not None:
                self.stderr.close()

    def uid(self):
        """The real uid the server runs as (from /proc)."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
        raise AssertionError("no Uid line")

    def queries(self, name, qtype):
        """How many times dnsmasq was asked (name, qtype)."""
        try:
            with open(self.log) as f:
                text = f.read()
        except FileNotFoundError:
            return 0
        needle = "auth[%s] %s from " % (qtype, name)
        return sum(1 for line in text.splitlines() if needle in line)

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()


class DnsStub:
    def __init__(self, workdir, names, tcp=False, addr="127.0.0.1"):
        self.workdir = workdir
        self.addr = addr
        self.cfg = os.path.join(workdir, "dnsstub.json")
        self.ready = os.path.join(workdir, "dnsstub.ready")
        self.log = os.path.join(workdir, "dnsstub.log")
        self.names = names
        self.tcp = tcp
        self.proc = None
        self.port = None

    @property
    def servers(self):
        if ":" in self.addr:
            return "[%s]:%d" % (self.addr, self.port)
        return "%s:%d" % (self.addr, self.port)

    def start(self):
        for p in (self.ready, self.log):
            if os.path.exists(p):
                os.unlink(p)
        with open(self.cfg, "w") as f:
            json.dump({"addr": self.addr, "port": 0, "tcp": self.tcp,
                       "ready": self.ready, "log": self.log,
                       "names": {k.lower().rstrip("."): v
                                 for k, v in self.names.items()}}, f)
        self.stderr = open(os.path.join(self.workdir, "dnsstub.err"), "wb")
        self.proc = subprocess.Popen(
            [PYTHON, os.path.join(HERE, "dnsstub.py"), self.cfg],
            stdout=self.stderr, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("dnsstub did not start")
            time.sleep(0.02)
        with open(self.ready) as f:
            self.port = int(f.read())
        return self

    def stop(self):
        try:
            _stop(self.proc, "dnsstub")
        finally:
            if self.proc is not None:
                self.stderr.close()

    def queries(self, name, qtype, proto=None):
        try:
            with open(self.log) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return 0
        n = 0
        for line in lines:
            p, qn, qt = line.split()
            if qn == name and qt == qtype and proto in (None, p):
                n += 1
        return n

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()
