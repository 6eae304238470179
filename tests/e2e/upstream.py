"""
tests/e2e/upstream.py - The upstream smarthost the delivery tests point
relayd at, and the throw-away CA its certificates come from. Each Upstream
is tests/e2e/upstream_server.py (aiosmtpd) run as its own process on its
own 127.0.x.y address and port, stopped by its PID; every wait is bounded.

  ca = make_test_ca(dir)          openssl CLI: CA, "good" (smarthost.test),
                                  "wrong" (wrong.test, same CA), "untrusted"
                                  (smarthost.test from another CA)
  u = Upstream(workdir, ca, tls="starttls"|"implicit"|"none", cert="good",
               users={"name": "password"}, mechs=("PLAIN", "LOGIN"),
               behaviour={...}).start()
  u.smarthost                     "ADDR:PORT" for relayd's smarthost key
  u.set_behaviour(dict)           takes effect at the server's next command
  u.messages(all=False)           records of accepted messages (all=True:
                                  also the ones whose DATA got a non-2xx)
  u.wait_messages(n, timeout, match=None)
  u.connections()                 one record per connection
  u.wait_connections(n, timeout)
  u.commands_in_clear()           [(connection seq, verb)] sent before TLS
  u.mail_in_clear()               the MAIL/RCPT/DATA/BDAT/AUTH among them
  u.stop() / u.kill()             by PID (the server also stops by itself
                                  when the process that started it is gone)

Behaviour file (JSON object; absent keys mean the defaults). A reply spec
is a string (that reply every time), a list (one per use, in order, then
the default; the lists start over whenever the behaviour changes) or a
dict keyed by address, "*" for any other, whose values are strings or
lists. A reply starting with 421 closes the connection after it is sent.
  "greeting": "none"            accept and never answer (closed after
                                "greeting_hold_s", default 120), or a
                                non-2xx reply sent instead of 220, then close
  "max_connections": N          more open connections than N get
                                "max_connections_reply" (default 421) and
                                are closed
  "ehlo": REPLY                 instead of the EHLO reply (e.g. "421 ...")
  "ehlo_remove": ["STARTTLS"]   extension keywords left out of EHLO
  "ehlo_add": ["PIPELINING"]    extension lines added to EHLO
  "starttls_broken": "garbage"|"close"
                                STARTTLS gets "220 2.0.0 Ready to start
                                TLS" even without a certificate (add
                                "ehlo_add": ["STARTTLS"] to offer it in
                                "none" mode); then, once the client's
                                first TLS bytes arrive, "garbage" answers
                                bytes that are no TLS record and closes,
                                "close" closes (conn handshake_error
                                "broken on purpose: MODE", broken_bytes)
  "auth": REPLY                 every AUTH gets this instead of a check
  "mail": SPEC                  reply to MAIL; dict keyed by the sender
                                ("<>" for the null sender)
  "rcpt": SPEC                  reply to RCPT; dict keyed by the recipient
  "data": SPEC                  reply after the final dot; dict keyed by
                                the sender ("<>" for the null sender)
  "drop_in_data": N             abort the connection once N bytes of DATA
                                have arrived (no reply)
  "delay_data_reply_ms": N      wait before the reply to the final dot (the
                                message is recorded before the wait)
  "hold_data_reply": true       hold the reply to the final dot until the
                                behaviour no longer says so (at most 120 s;
                                the message is recorded before)
  "throttle": {"per_connection": N, "reply": REPLY}
                                after N accepted messages on a connection
                                MAIL gets REPLY (default 421, which closes)
Defaults: 220 greeting, "250 2.1.0 Ok", "250 2.1.5 Ok",
"250 2.0.0 Ok: queued as N".

What aiosmtpd 1.4 offers a client: EHLO with SIZE, 8BITMIME, SMTPUTF8,
STARTTLS (starttls mode, before TLS) and AUTH (after TLS, or always in
"none" mode); no PIPELINING, DSN or CHUNKING ("ehlo_add" only advertises).
MAIL parameters other than SIZE, BODY, SMTPUTF8 and AUTH, and every RCPT
parameter, get 555; a DATA line over 1000 bytes gets 500.

Records (under workdir/record):
  msg/NNNNNN.json + .eml  one per completed DATA: seq, conn (connection
      seq), conn_msg_index, peer, time, mail_from ("" for <>),
      mail_options, rcpt_tos (accepted), rcpt_options, rcpt_rejected
      [[addr, reply]], tls {version, cipher} or null, auth_user or null,
      ehlo, reply, accepted, size, sha256; the .eml holds the bytes as
      received, dot-unstuffed (aiosmtpd's original_content). messages()
      adds "data" (bytes).
  conn/NNNNNN.json        one per connection, rewritten as it goes: seq,
      peer, opened, closed, tls_mode, tls, handshake_error, greeting,
      clear_bytes (received before TLS), commands [{verb, arg, tls}] (AUTH:
      the mechanism only; "<auth-response>" for continuation lines),
      replies (last line of each), auth [{mech, user, ok, tls}], auth_user,
      messages (accepted), concurrent (open connections when it started),
      dropped_in_data.
"""
import glob
import json
import os
import signal
import subprocess
import tempfile
import time


def _conftest():
    """tests/e2e/conftest.py, for its address picking and bounded waits.
    Imported when first needed: conftest.py imports conftest_upstream.py,
    which imports this module."""
    import conftest
    return conftest


def wait_until(*args, **kw):
    return _conftest().wait_until(*args, **kw)

PYTHON = "/usr/bin/python3"
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "upstream_server.py")
TLS_NAME = "smarthost.test"

# Commands that carry mail or credentials: never before TLS when TLS is
# required.
MAIL_VERBS = ("MAIL", "RCPT", "DATA", "BDAT", "AUTH", "<auth-response>")


class ScratchCA:
    """Paths: ca_cert, ca_key, and certs[name] = (cert, key)."""

    def __init__(self, directory):
        self.dir = directory
        self.ca_cert = os.path.join(directory, "ca.crt")
        self.ca_key = os.path.join(directory, "ca.key")
        self.certs = {}


def _openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed: %s" %
                             (" ".join(args), r.stderr.decode()[-2000:]))


def _make_ca(d, name, cn):
    key, crt = name + ".key", name + ".crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
             "-out", crt, "-days", "3", "-subj", "/CN=%s" % cn,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return os.path.join(d, crt), os.path.join(d, key)


def _make_leaf(d, name, dns, ca_crt, ca_key):
    key, csr, crt, ext = (name + ".key", name + ".csr", name + ".crt",
                          name + ".ext")
    with open(os.path.join(d, ext), "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:%s\n" % dns)
    _openssl("req", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
             "-out", csr, "-subj", "/CN=%s" % dns, cwd=d)
    _openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
             "-set_serial", str(int(time.time() * 1000)), "-days", "3",
             "-extfile", ext, "-out", crt, cwd=d)
    return os.path.join(d, crt), os.path.join(d, key)


def make_test_ca(directory):
    """A CA and three server certificates, made with the openssl CLI:
    good = smarthost.test, wrong = wrong.test (same CA), untrusted =
    smarthost.test from a CA relayd is not told about. No IP addresses in
    the SANs: relayd must check smarthost_tls_name."""
    ca = ScratchCA(directory)
    _make_ca(directory, "ca", "relayd e2e test CA")
    ca.certs["good"] = _make_leaf(directory, "good", TLS_NAME,
                                  ca.ca_cert, ca.ca_key)
    ca.certs["wrong"] = _make_leaf(directory, "wrong", "wrong.test",
                                   ca.ca_cert, ca.ca_key)
    other_crt, other_key = _make_ca(directory, "other-ca", "someone else's CA")
    ca.certs["untrusted"] = _make_leaf(directory, "untrusted", TLS_NAME,
                                       other_crt, other_key)
    return ca


def _atomic_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _read_json(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


class Upstream:
    def __init__(self, workdir, ca, tls="starttls", cert="good", users=None,
                 mechs=("PLAIN", "LOGIN"), behaviour=None, endpoint=None):
        assert tls in ("none", "starttls", "implicit"), tls
        self.workdir = workdir
        self.ca = ca
        self.tls = tls
        self.cert = cert
        self.users = dict(users or {})
        self.mechs = tuple(mechs)
        self.addr, self.port = endpoint or _conftest()._next_endpoint()
        self.record = os.path.join(workdir, "record")
        self.behaviour_path = os.path.join(workdir, "behaviour.json")
        self.users_path = os.path.join(workdir, "users.json")
        self.ready_path = os.path.join(workdir, "ready")
        self.stderr_path = os.path.join(workdir, "upstream.stderr")
        self.proc = None
        self.stderr = None
        self.set_behaviour(behaviour or {})

    @property
    def smarthost(self):
        return "%s:%d" % (self.addr, self.port)

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=20.0):
        if os.path.exists(self.ready_path):
            os.unlink(self.ready_path)
        args = [PYTHON, SERVER, "--listen", self.smarthost, "--tls", self.tls,
                "--behaviour", self.behaviour_path, "--record", self.record,
                "--ready", self.ready_path, "--auth-mechs", ",".join(self.mechs)]
        if self.tls != "none":
            crt, key = self.ca.certs[self.cert]
            args += ["--cert", crt, "--key", key]
        if self.users:
            _atomic_json(self.users_path, self.users)
            args += ["--users", self.users_path]
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.stderr,
                                     stderr=self.stderr,
                                     stdin=subprocess.DEVNULL)
        # Ready when the server says so: a probe connection would show up
        # in the connection log (and meet a scripted greeting).
        wait_until(self._ready, timeout=timeout, what="upstream to listen")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("upstream exited with %s:\n%s" %
                                 (self.proc.returncode, self.stderr_text()))
        return os.path.exists(self.ready_path)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM by PID, bounded wait, SIGKILL if it hangs."""
        if not self.running():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise AssertionError("upstream did not stop on SIGTERM")
        finally:
            self.stderr.close()

    def kill(self):
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.stderr.close()

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # ---- behaviour ----
    def set_behaviour(self, behaviour):
        """Replaces the whole behaviour (atomically); {} is the default."""
        _atomic_json(self.behaviour_path, behaviour)

    def behaviour(self):
        return _read_json(self.behaviour_path)

    # ---- records ----
    def messages(self, all=False):
        """Records in arrival order, each with "data" (bytes)."""
        out = []
        for p in sorted(glob.glob(os.path.join(self.record, "msg",
                                               "[0-9]*.json"))):
            rec = _read_json(p)
            if not all and not rec["accepted"]:
                continue
            with open(os.path.join(self.record, "msg", rec["data_file"]),
                      "rb") as f:
                rec["data"] = f.read()
            out.append(rec)
        return out

    def wait_messages(self, n, timeout=30.0, match=None, all=False):
        """Waits (bounded) until at least n recorded messages satisfy
        match(rec) (default: any); returns those."""
        got = []

        def enough():
            got[:] = [m for m in self.messages(all=all)
                      if match is None or match(m)]
            return len(got) >= n
        try:
            wait_until(enough, timeout=timeout, step=0.1,
                       what="%d message(s) at the upstream" % n)
        except AssertionError as e:
            raise AssertionError("%s; got %d: %s\nupstream stderr:\n%s" % (
                e, len(got), [(m["mail_from"], m["rcpt_tos"], m["reply"])
                              for m in got][:20],
                self.stderr_text()[-3000:]))
        return got

    def connections(self):
        return [_read_json(p) for p in sorted(glob.glob(
            os.path.join(self.record, "conn", "[0-9]*.json")))]

    def wait_connections(self, n, timeout=30.0):
        got = []

        def enough():
            got[:] = self.connections()
            return len(got) >= n
        wait_until(enough, timeout=timeout, step=0.1,
                   what="%d connection(s) at the upstream" % n)
        return got

    def commands_in_clear(self):
        """(connection seq, verb) of every command that came before TLS."""
        return [(c["seq"], x["verb"]) for c in self.connections()
                for x in c["commands"] if not x["tls"]]

    def mail_in_clear(self):
        """Commands carrying mail or credentials that came in clear."""
        return [(s, v) for s, v in self.commands_in_clear() if v in MAIL_VERBS]


def new_upstream_dir():
    return tempfile.mkdtemp(prefix="upstream-e2e-")
