"""tests/e2e/test_sendmail.py - relayd-sendmail, the sendmail command
(issue 11 §3), against the real relayd and an aiosmtpd smarthost.

-t with relayd running: recipients from To/Cc/Bcc, Bcc gone, Date,
Message-ID and From added, the message scrubbed like any other (the local
Received line replaced). relayd stopped: the message waits in
SPOOL/maildrop, and after a start it reaches the smarthost exactly once
(with the one sent while relayd ran), the maildrop empties and relayd's log
names the local user. Recipients as arguments, -f/-F, -i and a "." line,
-bp, -q, and the sysexits.h statuses for a bad flag (64), a bad address
(65) and a message over max_message_size (65). -bs (SMTP on stdin and
stdout) driven interactively and by swaks --pipe: two transactions, dot
stuffing, errors, relayd stopped (maildrop), the limits."""
import email
import email.policy
import os
import pwd
import re
import subprocess
import time

import pytest

from conftest import RELAYD, wait_until
from conftest_upstream import queue_list, wait_queue_empty

SENDMAIL = os.path.join(os.path.dirname(RELAYD), "relayd-sendmail")
EX_USAGE, EX_DATAERR = 64, 65


def sendmail(relayd, args, stdin, env=None):
    e = dict(os.environ)
    e.pop("RELAYD_CONFIG", None)
    if env:
        e.update(env)
    return subprocess.run([SENDMAIL, "-C", relayd.conf_path] +
                          [a if isinstance(a, bytes) else a.encode()
                           for a in args],
                          input=stdin, capture_output=True, timeout=60,
                          env=e)


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.default)


def maildrop(relayd):
    d = os.path.join(relayd.spool, "maildrop")
    return sorted(n for n in os.listdir(d) if not n.startswith(".")
                  and n != "bad")


def children(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        return f.read().split()


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout == b"" and r.stderr == b"", (r.stdout, r.stderr)


MSG_T = (b"To: Ann <ann@dest.test>, \"Doe, Bob\" <bob@dest.test>\n"
         b"Cc: carol@dest.test\n"
         b"Bcc: hidden@dest.test\n"
         b"Subject: from cron\n"
         b"\n"
         b"line one\n"
         b"line two\n")


def test_t_with_relayd_running(upstream_factory, relay_to):
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none")
    ok(sendmail(r, ["-t"], MSG_T))
    [m] = up.wait_messages(1)
    assert sorted(m["rcpt_tos"]) == ["ann@dest.test", "bob@dest.test",
                                     "carol@dest.test", "hidden@dest.test"]
    assert m["mail_from"] == pwd.getpwuid(os.getuid()).pw_name + \
        "@relay.test"
    data = m["data"]
    assert b"\r\nline one\r\nline two\r\n" in data
    assert b"hidden@dest.test" not in data
    hdr = data.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in hdr and not hdr.startswith(b"Bcc:")
    msg = parse(data)
    assert msg["Date"]
    assert msg["Message-ID"].endswith("@relay.test>")
    assert msg["From"].addresses[0].addr_spec == m["mail_from"]
    assert msg["Subject"] == "from cron"
    # Scrubbed like any other message: the local Received line is gone,
    # replaced by relayd's own.
    assert b"local user" not in data
    assert msg.get_all("Received")[0].startswith("by relay.test (relayd)")
    wait_queue_empty(r)


def test_stopped_then_started_once_each(upstream_factory, relay_to):
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none")
    # While relayd runs: straight in.
    ok(sendmail(r, ["-t"], b"To: a@dest.test\nSubject: running\n\nA\n"))
    up.wait_messages(1)
    wait_queue_empty(r)
    r.stop()
    # Stopped: into the maildrop, exit 0, a word on stderr with -v only.
    ok(sendmail(r, ["-t"], b"To: b@dest.test\nSubject: stopped\n\nB\n"))
    v = sendmail(r, ["-v", "c@dest.test"], b"Subject: stopped too\n\nC\n")
    assert v.returncode == 0 and b"maildrop" in v.stderr, v.stderr
    files = maildrop(r)
    assert len(files) == 2
    for name in files:
        st = os.stat(os.path.join(r.spool, "maildrop", name))
        assert st.st_uid == os.getuid() and st.st_nlink == 1
    assert up.messages() != [] and len(up.messages()) == 1
    seen = len(r.log_text())
    r.start()
    got = up.wait_messages(3)
    wait_queue_empty(r)
    wait_until(lambda: maildrop(r) == [] and
               r.log_text()[seen:].count("maildrop=") == 2, timeout=10,
               what="the maildrop to empty")
    subjects = sorted(parse(m["data"])["Subject"] for m in up.messages())
    assert subjects == ["running", "stopped", "stopped too"], subjects
    assert len(got) == 3
    for m in up.messages():
        assert b"local user" not in m["data"]   # scrubbed
    # Imported after relayd started, each with the submitting user.
    log = r.log_text()[seen:]
    started = log.index("relayd started")
    lines = [ln for ln in log.splitlines() if "maildrop=" in ln]
    assert len(lines) == 2, log
    for ln in lines:
        assert log.index(ln) > started
        assert "(uid %d)" % os.getuid() in ln
    assert sorted(ln.split("maildrop=")[1].split(",")[0]
                  for ln in lines) == files


def test_arguments_f_and_F(upstream_factory, relay_to):
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none")
    ok(sendmail(r, ["-f", "robot@app.test", "-F", 'Build "Bot"', "--",
                    "x@dest.test", "<y@dest.test>"],
                b"Subject: args\n\nbody\n"))
    ok(sendmail(r, ["-frobot2@app.test", "z@dest.test"],
                b"From: me@app.test\nSubject: own from\n\nbody\n"))
    got = up.wait_messages(2)
    a = [m for m in got if parse(m["data"])["Subject"] == "args"][0]
    b = [m for m in got if parse(m["data"])["Subject"] == "own from"][0]
    assert a["mail_from"] == "robot@app.test"
    assert sorted(a["rcpt_tos"]) == ["x@dest.test", "y@dest.test"]
    frm = parse(a["data"])["From"]
    assert frm.addresses[0].display_name == 'Build "Bot"'
    assert frm.addresses[0].addr_spec == "robot@app.test"
    # No header at all (echo hi | sendmail addr): the added fields, the
    # empty line, then the text as body.
    ok(sendmail(r, ["w@dest.test"], b"just text, no header\nline 2\n"))
    [c] = up.wait_messages(1, match=lambda m: m["rcpt_tos"] == ["w@dest.test"])
    head, body = c["data"].split(b"\r\n\r\n", 1)
    assert body == b"just text, no header\r\nline 2\r\n"
    assert parse(c["data"])["From"].addresses[0].addr_spec == \
        pwd.getpwuid(os.getuid()).pw_name + "@relay.test"
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head
    # A From of its own is kept; no second one is added.
    assert b["mail_from"] == "robot2@app.test"
    assert parse(b["data"]).get_all("From") == ["me@app.test"]


def test_dot_line_with_and_without_i(upstream_factory, relay_to):
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none")
    body = b"Subject: %s\n\nbefore\n.\nafter\n..two\n"
    ok(sendmail(r, ["-i", "i@dest.test"], body % b"with i"))
    ok(sendmail(r, ["-oi", "oi@dest.test"], body % b"with oi"))
    ok(sendmail(r, ["-ti"], b"To: ti@dest.test\n" + body % b"with ti"))
    ok(sendmail(r, ["n@dest.test"], body % b"without"))
    got = {parse(m["data"])["Subject"]: m["data"]
           for m in up.wait_messages(4)}
    for s in ("with i", "with oi", "with ti"):
        assert got[s].endswith(b"\r\n\r\nbefore\r\n.\r\nafter\r\n..two\r\n")
    assert got["without"].endswith(b"\r\n\r\nbefore\r\n")
    assert b"after" not in got["without"]


def test_bp_and_q(upstream_factory, relay_to):
    up = upstream_factory(tls="none",
                          behaviour={"rcpt": "451 4.3.0 later please"})
    r = relay_to(up, smarthost_tls="none", retry_min="1h", retry_max="2h")
    ok(sendmail(r, ["q@dest.test"], b"Subject: flush me\n\nbody\n"))
    # Deferred for an hour after the first try.
    wait_until(lambda: "deferred" in r.relayctl("list").stdout.decode(),
               timeout=30, what="the message to be deferred")
    bp = sendmail(r, ["-bp"], b"")
    assert bp.returncode == 0, bp.stderr
    # relayctl list's table, ages and next-attempt times aside (a second
    # may tick between the two).
    def masked(out):
        return re.sub(rb"\b\d+[smhd]\b", b"T", out)
    assert masked(bp.stdout) == masked(r.relayctl("list").stdout)
    assert b"<q@dest.test>" in bp.stdout
    assert up.messages() == []
    up.set_behaviour({})
    q = sendmail(r, ["-q"], b"")
    assert q.returncode == 0, q.stderr
    [m] = up.wait_messages(1)
    assert m["rcpt_tos"] == ["q@dest.test"]
    wait_queue_empty(r)


def test_exit_codes(relayd_factory):
    r = relayd_factory(max_message_size=2000)
    bad = sendmail(r, ["-Z", "a@dest.test"], b"x\n")
    assert bad.returncode == EX_USAGE
    assert b"unknown option '-Z'" in bad.stderr
    assert sendmail(r, ["-f"], b"").returncode == EX_USAGE
    assert sendmail(r, ["-tx"], b"To: a@dest.test\n\nx\n").returncode == \
        EX_USAGE
    e = sendmail(r, ["-t"], b"To: undisclosed-recipients:;\n\nx\n")
    assert e.returncode == 67 and b"no recipients in To, Cc or Bcc" in e.stderr
    assert sendmail(r, [], b"Subject: x\n\nx\n").returncode == EX_USAGE
    for addr in ("not an address@", "a@@b", "<a@b"):
        e = sendmail(r, [addr], b"Subject: x\n\nx\n")
        assert e.returncode == EX_DATAERR, (addr, e.stderr)
        assert b"bad recipient address" in e.stderr
    e = sendmail(r, ["-f", "x@@y", "a@dest.test"], b"Subject: x\n\nx\n")
    assert e.returncode == EX_DATAERR and b"bad sender" in e.stderr
    e = sendmail(r, ["-t"], b"To: broken <a@b\n\nx\n")
    assert e.returncode == EX_DATAERR and b"bad address in the To" in e.stderr
    # Accepted options of other sendmails are ignored.
    ok(sendmail(r, ["-oem", "-odb", "-B", "8BITMIME", "ok@dest.test"],
                b"Subject: fine\n\nx\n"))
    # A UTF-8 address goes with SMTPUTF8 (relayd refuses it without).
    ok(sendmail(r, ["jörg@bücher.test".encode()], b"Subject: utf8\n\nx\n"))
    assert "jörg@bücher.test" in r.relayctl("list").stdout.decode()
    # Over max_message_size: refused, nothing queued or dropped.
    big = b"Subject: big\n\n" + b"x" * 78 + b"\n"
    e = sendmail(r, ["big@dest.test"], big * 40)
    assert e.returncode == EX_DATAERR
    assert b"too big" in e.stderr and b"max_message_size" in e.stderr
    # One line without end, 10 MB: stopped at the limit, not spooled whole.
    e = sendmail(r, ["big@dest.test"], b"Subject: big\n\n" + b"y" * 10**7)
    assert e.returncode == EX_DATAERR and b"too big" in e.stderr
    lst = queue_list(r)
    assert len(lst) == 2
    assert maildrop(r) == []


def test_refused_for_good(relayd_factory):
    """A 5xx is the caller's error while relayd runs; a maildrop file that
    relayd refuses, or that is not a maildrop file, goes to maildrop/bad/
    with a log line, never deleted."""
    r = relayd_factory(recipient_domains="dest.test")
    e = sendmail(r, ["x@other.test"], b"Subject: x\n\nx\n")
    assert e.returncode in (EX_DATAERR, 77), (e.returncode, e.stderr)
    assert b"relayd refused the message: 5" in e.stderr
    assert queue_list(r) == [] and maildrop(r) == []
    r.stop()
    ok(sendmail(r, ["y@other.test"], b"Subject: y\n\ny\n"))
    [refused] = maildrop(r)
    junk = os.path.join(r.spool, "maildrop", "junk")
    with open(junk, "wb") as f:
        f.write(b"From: not a maildrop file\n\nhello\n")
    # Dot names are files being written: one two hours old was left by a
    # relayd-sendmail that died (and said so); a fresh one is left alone.
    stale = os.path.join(r.spool, "maildrop", ".111.stale")
    fresh = os.path.join(r.spool, "maildrop", ".222.fresh")
    for p in (stale, fresh):
        with open(p, "wb") as f:
            f.write(b"relayd-maildrop 1\n")
    os.utime(stale, (os.path.getmtime(stale) - 7200,) * 2)
    seen = len(r.log_text())
    r.start()
    bad = os.path.join(r.spool, "maildrop", "bad")
    # The importer's last words: every file judged, the stale one gone
    # (in whatever order the directory lists them).
    wait_until(lambda: os.path.isdir(bad) and
               sorted(os.listdir(bad)) == sorted([refused, "junk"]) and
               r.log_text()[seen:].count("maildrop: ") >= 4 and
               "removed .111.stale" in r.log_text()[seen:],
               timeout=15, what="both files in maildrop/bad, stale removed")
    assert maildrop(r) == []
    log = r.log_text()[seen:]
    assert "maildrop: junk refused for good, moved to bad/: not a " \
        "maildrop file" in log
    assert "maildrop: %s refused for good, moved to bad/: 5" % refused in log
    assert queue_list(r) == []
    assert not os.path.exists(stale) and os.path.exists(fresh)
    assert "maildrop: removed .111.stale, an unfinished file" in log


def test_unprivileged_user_setgid(relayd_factory):
    """Postfix's postdrop model: a user who is not relayd's can leave a
    message in the maildrop only through relayd-sendmail installed setgid
    to the maildrop's group (1730), and relayd imports it naming the uid."""
    from privutil import account, need_root
    need_root()
    grp_gid = account().pw_gid          # stands for relayd-drop
    nobody = pwd.getpwnam("nobody")
    r = relayd_factory()
    r.stop()
    md = os.path.join(r.spool, "maildrop")
    assert os.stat(md).st_mode & 0o7777 == 0o1730
    os.chown(md, 0, grp_gid)
    for d in (r.workdir, r.spool):
        os.chmod(d, 0o711)              # as `make install` leaves the spool
    os.chmod(r.conf_path, 0o644)
    bindir = os.path.join(r.workdir, "bin")
    os.mkdir(bindir, 0o755)
    plain = os.path.join(bindir, "plain-sendmail")
    sgid = os.path.join(bindir, "relayd-sendmail")
    for p in (plain, sgid):
        subprocess.run(["cp", SENDMAIL, p], check=True, timeout=30)
    os.chown(sgid, 0, grp_gid)
    os.chmod(sgid, 0o2755)

    def as_nobody(prog, args, stdin, env=None):
        def drop():
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
        e = dict(os.environ)
        e.pop("RELAYD_CONFIG", None)
        e.update(env or {})
        return subprocess.run([prog, "-C", r.conf_path] + args, input=stdin,
                              capture_output=True, timeout=60, env=e,
                              preexec_fn=drop, cwd="/")
    msg = b"To: u@dest.test\nSubject: from nobody\n\nhi\n"
    no = as_nobody(plain, ["-t"], msg)
    assert no.returncode == 73, (no.returncode, no.stderr)  # EX_CANTCREAT
    assert b"Permission denied" in no.stderr
    assert maildrop(r) == []
    ok(as_nobody(sgid, ["-t"], msg))
    [name] = maildrop(r)
    st = os.stat(os.path.join(md, name))
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, grp_gid)
    # The same limit without setgid (the plain copy, as root) is obeyed:
    # so the 0 above means the variable was dropped.
    big = sendmail(r, ["u@dest.test"], msg, env={"RELAYD_MAX_MESSAGE_SIZE": "10"})
    assert big.returncode == EX_DATAERR, big.stderr
    # Setgid, the caller picks neither the spool nor the limits: RELAYD_*
    # variables are ignored, and -C takes only a file of root's.
    e = as_nobody(sgid, ["-t"], msg, env={"RELAYD_MAX_MESSAGE_SIZE": "10"})
    assert e.returncode == 0, e.stderr          # the file's limit applied
    os.chmod(r.conf_path, 0o666)
    e = as_nobody(sgid, ["-t"], msg)
    assert e.returncode == 77 and b"configuration file of root's" in e.stderr
    os.chmod(r.conf_path, 0o644)
    assert len(maildrop(r)) == 2
    # The user cannot read or list the maildrop through the binary.
    lst = as_nobody(sgid, ["-bp"], b"")
    assert lst.returncode != 0
    seen = len(r.log_text())
    r.start()
    wait_until(lambda: maildrop(r) == [] and
               r.log_text()[seen:].count("maildrop=") == 2, timeout=15,
               what="the maildrop to empty")
    log = r.log_text()[seen:]
    assert "maildrop=%s, local user nobody (uid %d), from=<nobody@relay.test>" \
        % (name, nobody.pw_uid) in log, log
    entries = queue_list(r)
    assert len(entries) == 2
    assert all("nobody@relay.test" in str(x) for x in entries)


def test_temporary_refusal_goes_to_maildrop(upstream_factory, relay_to):
    """relayd running but answering 4xx (here: less free space than
    queue_min_free) is no failure for the caller: the message waits in the
    maildrop and goes out once relayd takes mail again."""
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none", queue_min_free="1000000G")
    v = sendmail(r, ["-v", "-t"], b"To: t@dest.test\nSubject: later\n\nT\n")
    assert v.returncode == 0, v.stderr
    assert b"452" in v.stderr and b"maildrop" in v.stderr, v.stderr
    [name] = maildrop(r)
    assert queue_list(r) == []
    r.stop()
    r.conf["queue_min_free"] = "0"
    r.write_conf()
    seen = len(r.log_text())
    r.start()
    [m] = up.wait_messages(1)
    assert parse(m["data"])["Subject"] == "later"
    wait_until(lambda: maildrop(r) == [] and
               "maildrop=%s" % name in r.log_text()[seen:], timeout=15,
               what="the import")
    wait_queue_empty(r)
    assert len(up.messages()) == 1


def test_file_appearing_while_running_is_imported(upstream_factory,
                                                  relay_to):
    """A maildrop file that appears while relayd runs (a relayd-sendmail
    that met a 4xx) is imported at once (inotify), not a period later."""
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none")
    r.stop()
    ok(sendmail(r, ["late@dest.test"], b"Subject: appears\n\nL\n"))
    [name] = maildrop(r)
    md = os.path.join(r.spool, "maildrop")
    aside = os.path.join(r.spool, "aside")      # same file system
    os.rename(os.path.join(md, name), aside)
    seen = len(r.log_text())
    r.start()
    # The importer of the start has run (and found nothing) and exited:
    # what follows is the watch's doing, not that run's.
    wait_until(lambda: children(r.pid) == [] and
               "maildrop" not in r.log_text()[seen:], timeout=15,
               what="the start's importer to exit")
    assert up.messages() == []
    os.rename(aside, os.path.join(md, name))
    # The periodic run is 60 s away: within 20 s only the watch explains it.
    [m] = up.wait_messages(1, timeout=20)
    assert parse(m["data"])["Subject"] == "appears"
    wait_until(lambda: "maildrop=%s" % name in r.log_text()[seen:],
               timeout=10, what="the import's log line")
    assert maildrop(r) == []
    wait_queue_empty(r)
    assert len(up.messages()) == 1


class BS:
    """relayd-sendmail -bs driven as Symfony Mailer drives it: a command,
    then its whole reply (every read bounded by a deadline)."""

    def __init__(self, relayd, *extra):
        e = dict(os.environ)
        e.pop("RELAYD_CONFIG", None)
        self.p = subprocess.Popen([SENDMAIL, "-C", relayd.conf_path, "-bs"] +
                                  list(extra), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=e)
        self.buf = b""

    def reply(self, timeout=30):
        """(code, [lines]) of the next reply."""
        import select
        end = time.monotonic() + timeout
        lines = []
        while True:
            while b"\n" not in self.buf:
                left = end - time.monotonic()
                assert left > 0, "no reply within %ss: %r" % (timeout, lines)
                r, _, _ = select.select([self.p.stdout], [], [], left)
                if r:
                    chunk = os.read(self.p.stdout.fileno(), 4096)
                    assert chunk, "relayd-sendmail closed stdout: %r" % lines
                    self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            assert line.endswith(b"\r"), line
            line = line[:-1].decode()
            lines.append(line)
            if line[3:4] != "-":
                return int(line[:3]), lines

    def cmd(self, line):
        self.p.stdin.write(line.encode() + b"\r\n")
        self.p.stdin.flush()
        return self.reply()

    def data(self, body):
        assert self.cmd("DATA")[0] == 354
        self.p.stdin.write(body + b".\r\n")
        self.p.stdin.flush()
        return self.reply()

    def finish(self):
        code, _ = self.cmd("QUIT")
        assert code == 221
        rc = self.p.wait(timeout=30)
        err = self.p.stderr.read()
        self.p.stdout.close()
        self.p.stdin.close()
        self.p.stderr.close()
        return rc, err


BS_MSG = (b"To: a@dest.test\r\nSubject: from an app\r\n\r\n"
          b"first line\r\n..leading dot\r\n...\r\nlast line\r\n")


def test_bs_smtp_on_stdio(upstream_factory, relay_to):
    """-bs: two transactions in one session go to relayd with relayd's own
    reply passed back; dot-stuffing undone; Date and Message-ID added;
    the protocol errors answered precisely; QUIT exits 0."""
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none")
    s = BS(r, "-i")
    code, lines = s.reply()
    assert code == 220 and "relayd-sendmail ESMTP" in lines[0], lines
    code, lines = s.cmd("EHLO app.example")
    assert code == 250 and "250-8BITMIME" in lines and \
        any(ln.startswith("250 SIZE ") for ln in lines), lines
    assert s.cmd("RCPT TO:<a@dest.test>")[0] == 503
    assert s.cmd("DATA")[0] == 503
    assert s.cmd("MAIL FROM:bad")[0] == 501
    assert s.cmd("FROB")[0] == 502
    assert s.cmd("X" * 2000)[0] == 500
    assert s.cmd("NOOP")[0] == 250
    assert s.cmd("MAIL FROM:<app@client.test> BODY=8BITMIME")[0] == 250
    assert s.cmd("MAIL FROM:<app@client.test>")[0] == 503
    assert s.cmd("RCPT TO:<a@dest.test>")[0] == 250
    assert s.cmd("RCPT TO:<@@>")[0] == 501
    assert s.cmd("RCPT TO: <b@dest.test>")[0] == 250
    code, lines = s.data(BS_MSG)
    assert code == 250 and "queued as" in lines[0], lines
    # A second transaction, the null sender, after RSET.
    assert s.cmd("MAIL FROM:<x@client.test>")[0] == 250
    assert s.cmd("RSET")[0] == 250
    assert s.cmd("MAIL FROM:<>")[0] == 250
    assert s.cmd("RCPT TO:<c@dest.test>")[0] == 250
    code, lines = s.data(b"Subject: second\r\n\r\nbody\r\n")
    assert code == 250, lines
    rc, err = s.finish()
    assert rc == 0 and err == b"", (rc, err)

    got = up.wait_messages(2)
    by = {m["rcpt_tos"][0]: m for m in got}
    first = by["a@dest.test"]
    assert sorted(first["rcpt_tos"]) == ["a@dest.test", "b@dest.test"]
    assert first["mail_from"] == "app@client.test"
    data = first["data"]
    assert b"\r\nfirst line\r\n.leading dot\r\n..\r\nlast line\r\n" in data, \
        data
    msg = parse(data)
    assert msg["Subject"] == "from an app" and msg["Date"] and \
        msg["Message-ID"], data
    second = by["c@dest.test"]
    assert second["mail_from"] == "" and parse(second["data"])["Subject"] == \
        "second"
    wait_queue_empty(r)


def test_bs_with_relayd_stopped_goes_to_the_maildrop(upstream_factory,
                                                    relay_to):
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none")
    r.stop()
    s = BS(r)
    assert s.reply()[0] == 220
    assert s.cmd("HELO app.example")[0] == 250
    assert s.cmd("MAIL FROM:<app@client.test>")[0] == 250
    assert s.cmd("RCPT TO:<d@dest.test>")[0] == 250
    code, lines = s.data(b"Subject: while stopped\r\n\r\nD\r\n")
    assert code == 250 and "maildrop" in lines[0], lines
    rc, _ = s.finish()
    assert rc == 0
    assert len(maildrop(r)) == 1
    assert up.messages() == []
    r.start()
    (m,) = up.wait_messages(1)
    assert m["rcpt_tos"] == ["d@dest.test"]
    assert parse(m["data"])["Subject"] == "while stopped"
    wait_until(lambda: maildrop(r) == [], timeout=10,
               what="the maildrop to empty")
    wait_queue_empty(r)
    assert len(up.messages()) == 1


def test_bs_limits(relayd_factory):
    """Over max_message_size: 552 after the whole DATA was read (the
    session goes on), nothing queued; relayd's own refusal is passed back
    with its code; too many errors end the session with 421."""
    r = relayd_factory(max_message_size=2000)
    s = BS(r)
    assert s.reply()[0] == 220
    assert s.cmd("MAIL FROM:<app@client.test>")[0] == 250
    assert s.cmd("RCPT TO:<big@dest.test>")[0] == 250
    code, lines = s.data(b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 40)
    assert code == 552 and "max_message_size" in lines[0], lines
    assert s.cmd("NOOP")[0] == 250
    for _ in range(19):
        assert s.cmd("FROB")[0] == 502
    # The 20th error is answered, then the session ends (as Postfix's).
    assert s.cmd("FROB")[0] == 502
    code, lines = s.reply()
    assert code == 421 and "too many errors" in lines[-1], lines
    assert s.p.wait(timeout=30) == 76   # EX_PROTOCOL
    for f in (s.p.stdout, s.p.stdin, s.p.stderr):
        f.close()
    assert queue_list(r) == []
    assert maildrop(r) == []
    # -bs with recipient arguments is a usage error.
    e = sendmail(r, ["-bs", "a@dest.test"], b"")
    assert e.returncode == EX_USAGE and b"-bs takes no recipient" in e.stderr


def test_bs_driven_by_swaks(upstream_factory, relay_to):
    """A third-party SMTP client (swaks --pipe) through -bs, PIPELINING
    not offered so swaks waits for each reply."""
    up = upstream_factory(tls="none")
    r = relay_to(up, smarthost_tls="none")
    res = subprocess.run(
        ["swaks", "--pipe", "%s -C %s -bs" % (SENDMAIL, r.conf_path),
         "--from", "app@client.test", "--to", "e@dest.test",
         "--header", "Subject: via swaks", "--body", "swaks body"],
        capture_output=True, timeout=60)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    (m,) = up.wait_messages(1)
    assert m["rcpt_tos"] == ["e@dest.test"]
    assert m["mail_from"] == "app@client.test"
    assert parse(m["data"])["Subject"] == "via swaks"
    assert b"swaks body" in m["data"]
