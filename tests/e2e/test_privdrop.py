"""tests/e2e/test_privdrop.py - relayd is never root by accident (issue 8,
section 6) and checks spool_dir up front (section 9): started as root it
binds, then runs as `user` (here the system account relayd-test), seen
from outside in /proc; a spool that root made before is handed over
(logged, once) without following links or touching hard-linked files;
a link in the spool stops the start; a missing account or an empty
`user` stops -t and the start with one line naming the fix; `user = root`
stays root and says so. spool_dir: missing parents are made (0755, spool
0700); -t refuses a spool_dir that cannot be created, in one line."""
import os
import stat
import subprocess

from conftest import RELAYD, smtp_connect
from privutil import account, file_state, need_root, owners


def _ids(pid):
    """(uids, gids, groups) of a running process, from /proc."""
    vals = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            vals[k] = v.split()
    return ([int(x) for x in vals["Uid"]], [int(x) for x in vals["Gid"]],
            [int(x) for x in vals["Groups"]])


def _send(r, n=1):
    ids = []
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        for i in range(n):
            assert c.cmd("MAIL FROM:<s@client.test>").pair == (250, "2.1.0")
            assert c.cmd("RCPT TO:<a@dest.test>").pair == (250, "2.1.5")
            assert c.cmd("DATA").code == 354
            c.send(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % i)
            ids.append(c.reply().queued_id())
    return ids


def _run(r, *args, env=None):
    """relayd [-t] -c CONF, expected to exit by itself."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("RELAYD_")}
    e.update(env or {})
    return subprocess.run([RELAYD] + list(args) + ["-c", r.conf_path],
                          capture_output=True, timeout=30, env=e,
                          stdin=subprocess.DEVNULL)


def _one_line(res):
    assert res.returncode == 1, res
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("relayd: "), repr(err)
    return err


def _with_user(r, user):
    r.conf["user"] = user
    r.write_conf()


def test_drops_to_the_account(relayd_factory):
    need_root()
    acct = account()
    r = relayd_factory(start=False, user=acct.pw_name)
    os.chmod(r.workdir, 0o755)      # the account's way to its spool
    assert not os.path.exists(r.spool)
    r.start()
    uids, gids, groups = _ids(r.pid)
    assert uids == [acct.pw_uid] * 4, uids
    assert gids == [acct.pw_gid] * 4, gids
    assert 0 not in groups and acct.pw_gid in groups, groups
    log = r.log_text()
    assert "running as user %s (uid %d, gid %d)" % (
        acct.pw_name, acct.pw_uid, acct.pw_gid) in log, log

    q, = _send(r)
    own = owners(r.spool)
    assert set(own.values()) == {acct.pw_uid}, own
    assert own["msg/" + q] == acct.pw_uid
    assert stat.S_IMODE(os.lstat(r.spool).st_mode) == 0o700
    # The log file was opened as root, then given away (SIGHUP reopens it).
    assert os.lstat(r.logfile).st_uid == acct.pw_uid

    # relayctl as root beside it: the index read and the control socket,
    # as the spool's owner.
    assert q.encode() in r.relayctl("list").stdout
    assert b'"queue"' in r.relayctl("stats", "--json").stdout
    assert r.relayctl("hold", q).stdout.decode() == "%s: held\n" % q
    assert set(owners(r.spool).values()) == {acct.pw_uid}
    r.stop()


def test_hands_over_a_spool_root_made(relayd_factory):
    need_root()
    acct = account()
    r = relayd_factory()                            # user = root
    assert "running as root (user = root)" in r.log_text()
    assert _ids(r.pid)[0] == [0, 0, 0, 0]
    before_ids = _send(r, 2)
    r.stop()
    assert set(owners(r.spool).values()) == {0}

    # A hard link to a file of root's, planted in the spool: never chowned.
    victim = os.path.join(r.workdir, "victim")
    with open(victim, "wb") as f:
        f.write(b"root's\n")
    os.chmod(victim, 0o600)
    os.link(victim, os.path.join(r.spool, "tmp", "stray"))
    before = file_state(victim)

    os.chmod(r.workdir, 0o755)
    _with_user(r, acct.pw_name)
    r.start()
    log = r.log_text()
    log = log[log.index("relayd stopped"):]         # the second run's
    assert "spool %s handed over to user %s (" % (r.spool, acct.pw_name) \
        in log, log
    assert "spool %s/tmp/stray has 2 links, which relayd never makes; not " \
        "giving it to user %s" % (r.spool, acct.pw_name) in log, log
    # The hand-over comes before the drop, and the drop before recovery.
    assert log.index("handed over") < log.index("running as user") < \
        log.index("recovery:"), log
    st = file_state(victim)
    assert st[0] == 0 and st[5] == before[5] and st[2] == before[2], st

    own = owners(r.spool)
    root_owned = sorted(k for k, v in own.items() if v != acct.pw_uid)
    assert root_owned in ([], ["tmp/stray"]), own   # recovery may clear tmp/
    listed = r.relayctl("list").stdout.decode()
    assert all(q in listed for q in before_ids), listed
    q, = _send(r)
    assert os.lstat(os.path.join(r.spool, "msg", q)).st_uid == acct.pw_uid
    r.stop()

    # Next start: already the account's, nothing to hand over.
    r.start()
    r.stop()
    assert r.log_text().count("handed over") == 1


def test_link_in_the_spool_stops_the_start(relayd_factory):
    need_root()
    acct = account()
    r = relayd_factory()
    q, = _send(r)
    r.stop()
    secret = os.path.join(r.workdir, "secret")
    with open(secret, "wb") as f:
        f.write(b"root only\n")
    os.chmod(secret, 0o600)
    before = file_state(secret)
    link = os.path.join(r.spool, "msg", "0" * 16)
    os.symlink(secret, link)
    os.chmod(r.workdir, 0o755)
    _with_user(r, acct.pw_name)
    res = _run(r)
    assert res.returncode == 1, res
    assert ("spool %s is a symbolic link, which relayd never makes; remove "
            "it (refusing to start as root with it there)" % link) \
        in res.stderr.decode(), res.stderr
    assert file_state(secret) == before
    assert os.lstat(secret).st_uid == 0
    # Removed, relayd starts and finishes the hand-over.
    os.unlink(link)
    r.start()
    assert set(owners(r.spool).values()) == {acct.pw_uid}
    assert q.encode() in r.relayctl("list").stdout


def test_missing_account_or_empty_user(relayd_factory):
    need_root()
    r = relayd_factory(start=False, user="relayd-no-such-account")
    for args in (("-t",), ()):
        err = _one_line(_run(r, *args))
        assert err == (
            "relayd: %s: user relayd-no-such-account does not exist: create "
            "it with `make install` or `adduser --system --group "
            "relayd-no-such-account`, or set user = root to run as root\n"
            % r.conf_path), err
    assert not os.path.exists(r.spool)
    # The default is the relayd account, overridable from the environment.
    del r.conf["user"]
    r.write_conf()
    err = _one_line(_run(r, "-t", env={"RELAYD_USER": "relayd-no-such-2"}))
    assert "user relayd-no-such-2 does not exist" in err, err
    _with_user(r, "")
    for args in (("-t",), ()):
        err = _one_line(_run(r, *args))
        assert err == ("relayd: %s: user is empty: name the account relayd "
                       "runs as after binding (user = relayd, the default), "
                       "or write user = root to keep running as root\n"
                       % r.conf_path), err


def test_spool_dir_parents(relayd_factory):
    need_root()
    acct = account()
    r = relayd_factory(start=False, user=acct.pw_name)
    os.chmod(r.workdir, 0o755)
    deep = os.path.join(r.workdir, "a", "b", "spool")
    r.spool = deep
    r.conf["spool_dir"] = deep
    r.write_conf()
    res = _run(r, "-t")
    assert res.returncode == 0, res
    assert not os.path.exists(os.path.join(r.workdir, "a"))    # -t makes none
    old = os.umask(0o077)       # parents still 0755: the account needs them
    try:
        r.start()
    finally:
        os.umask(old)
    for d in ("a", "a/b"):
        st = os.lstat(os.path.join(r.workdir, d))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), (d, st)
        assert "created directory %s (mode 0755) for spool_dir" % \
            os.path.join(r.workdir, d) in r.log_text()
    st = os.lstat(deep)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (acct.pw_uid, 0o700)
    _send(r)
    r.stop()

    # What cannot be created is refused by -t, and by the start, in a line.
    plain = os.path.join(r.workdir, "plain-file")
    with open(plain, "w") as f:
        f.write("x\n")
    cases = [
        (os.path.join(plain, "x", "spool"), "spool_dir %s cannot be created: "
         "%s is not a directory" % (os.path.join(plain, "x", "spool"), plain)),
        (plain, "spool_dir %s exists and is not a directory" % plain),
    ]
    link = os.path.join(r.workdir, "link")
    os.symlink(deep, link)
    cases.append((link, "spool_dir %s is a symbolic link (to %s); relayd "
                  "started as root hands the spool over to its user without "
                  "following links: set spool_dir to the real directory"
                  % (link, deep)))
    for spool, want in cases:
        r.conf["spool_dir"] = spool
        r.write_conf()
        for args in (("-t",), ()):
            err = _one_line(_run(r, *args))
            assert err == "relayd: %s: %s\n" % (r.conf_path, want), err


def test_spool_dir_not_writable_as_non_root(relayd_factory):
    """Started as an ordinary account (here nobody), relayd runs as it;
    -t says when it could not create its spool."""
    need_root()
    r = relayd_factory(start=False)
    del r.conf["user"]              # the default: applies only as root
    os.chmod(r.workdir, 0o755)      # root's: nobody may not write here
    r.write_conf()
    os.chmod(r.conf_path, 0o644)

    def as_nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    res = subprocess.run([RELAYD, "-t", "-c", r.conf_path],
                         capture_output=True, timeout=30,
                         stdin=subprocess.DEVNULL, preexec_fn=as_nobody)
    assert res.returncode == 1, res
    assert res.stderr.decode() == (
        "relayd: %s: spool_dir %s cannot be created: %s is not writable by "
        "uid 65534 (Permission denied); create the spool as root and give it "
        "to that account, or fix spool_dir\n"
        % (r.conf_path, r.spool, r.workdir)), res.stderr


def test_link_in_the_middle_of_spool_dir_stops_the_start(relayd_factory):
    """relayd as root follows no link on the way to the spool it hands
    over: a link in the middle of spool_dir (an account that can write
    above the spool pointing it at a tree of root's) stops the start, and
    that tree keeps its owner (found in review)."""
    need_root()
    acct = account()
    r = relayd_factory()
    _send(r)
    r.stop()
    hop = os.path.join(r.workdir, "hop")
    os.symlink(r.workdir, hop)
    via = os.path.join(hop, os.path.basename(r.spool))
    os.chmod(r.workdir, 0o755)
    r.conf["spool_dir"] = via
    _with_user(r, acct.pw_name)
    res = _run(r)
    assert res.returncode == 1, res
    assert ("cannot open spool %s: %s is a symbolic link or not a directory"
            % (via, hop)) in res.stderr.decode(), res.stderr
    assert set(owners(r.spool).values()) == {0}


def _low_port(addr):
    """A free port below 1024 on addr (the tests' own 127.0.x.y)."""
    import socket
    for port in range(1023, 900, -1):
        s = socket.socket()
        try:
            s.bind((addr, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise AssertionError("no free port below 1024 on %s" % addr)


def test_low_port_then_unprivileged_and_a_reload_that_needs_root(
        relayd_factory):
    """Started as root on a port below 1024, relayd runs as its account
    afterwards (/proc says so); a reload that adds another port below 1024
    cannot be done by that account and is refused with the reason, the
    running listeners untouched; a port above 1023 is added."""
    import signal
    from conftest import _next_endpoint, wait_until
    need_root()
    acct = account()
    r = relayd_factory(start=False, user=acct.pw_name)
    os.chmod(r.workdir, 0o755)
    r.port = _low_port(r.addr)
    r.conf["listen"] = "%s:%d" % (r.addr, r.port)
    r.write_conf()
    r.start()
    uids, gids, _ = _ids(r.pid)
    assert uids == [acct.pw_uid] * 4, uids
    assert gids == [acct.pw_gid] * 4, gids
    q, = _send(r)

    low2 = _low_port(r.addr)
    assert low2 != r.port
    r.conf["listen"] = "%s:%d, %s:%d" % (r.addr, r.port, r.addr, low2)
    r.write_conf()
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "keeping the running configuration" in r.log_text(),
               timeout=10, what="the refused reload")
    log = r.log_text()
    assert ("listen %s:%d: cannot bind: permission denied (a port below "
            "1024 needs root or CAP_NET_BIND_SERVICE" % (r.addr, low2)) \
        in log, log[-2000:]
    c = smtp_connect(r)          # the running listener is untouched
    assert c.cmd("EHLO client.test").code == 250
    c.close()

    high_addr, high = _next_endpoint()
    r.conf["listen"] = "%s:%d, %s:%d" % (r.addr, r.port, high_addr, high)
    r.write_conf()
    r.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "listening on %s:%d" % (high_addr, high)
               in r.log_text(), timeout=10, what="the new listener")
    r.addr, r.port = high_addr, high
    c = smtp_connect(r)
    assert c.cmd("EHLO client.test").code == 250
    c.close()
    assert _ids(r.pid)[0] == [acct.pw_uid] * 4
    r.stop()
