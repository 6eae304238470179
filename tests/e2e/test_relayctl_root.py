"""tests/e2e/test_relayctl_root.py - relayctl run as root on a spool that
belongs to another account (issue 8, section 5): it becomes the spool's
owner before LMDB or a body is opened (the lock file LMDB creates is the
owner's), a symbolic link planted at index/lock.mdb, index/data.mdb or
msg/ID never makes root write or read its target, a spool that is a link,
of mixed owners or writable by others is refused with one clear line; and
`relayctl cat` on a terminal (a pty) escapes control characters, keeping
tabs and line ends, while --raw and a pipe get the bytes."""
import os
import pty
import select
import subprocess
import time
import tty

import pytest

from conftest import RELAYCTL, smtp_connect
from privutil import account, chown_tree, file_state, need_root, owners


def _queue(r, body):
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<s@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<a@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(body + b".\r\n")
        return c.reply().queued_id()


def _stopped(relayd_factory, n=1):
    """A stopped relayd whose spool holds n messages (root's spool)."""
    r = relayd_factory()
    ids = [_queue(r, b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))
           for i in range(n)]
    r.stop()
    return r, ids


def _give_away(r):
    """The spool becomes relayd-test's; its work directory lets it in."""
    acct = account()
    os.chmod(r.workdir, 0o755)
    chown_tree(r.spool, acct.pw_uid, acct.pw_gid)
    return acct


def _victim(r, name="victim", data=b"precious root data\n", mode=0o644):
    p = os.path.join(r.workdir, name)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
    return p


def _one_line_error(res):
    assert res.returncode == 1, res
    assert res.stdout == b"", res.stdout
    err = res.stderr.decode()
    assert err.startswith("relayctl: ") and err.count("\n") == 1, repr(err)
    return err


def test_becomes_the_spool_owner_before_opening(relayd_factory):
    need_root()
    r, (q,) = _stopped(relayd_factory)
    acct = _give_away(r)
    # LMDB makes its lock file when it is missing: whoever relayctl runs as
    # when it opens the environment owns the new file.
    os.unlink(os.path.join(r.spool, "index", "lock.mdb"))
    res = r.relayctl("list")
    assert q.encode() in res.stdout
    lock = os.lstat(os.path.join(r.spool, "index", "lock.mdb"))
    assert (lock.st_uid, lock.st_gid) == (acct.pw_uid, acct.pw_gid)

    # Offline changes write the index as the owner too; nothing in the
    # spool is root's afterwards.
    os.unlink(os.path.join(r.spool, "index", "lock.mdb"))
    res = r.relayctl("hold", q)
    assert b"held (relayd is not running" in res.stdout
    for cmd in (("show", q), ("stats",), ("cat", q), ("release", q)):
        r.relayctl(*cmd)
    own = owners(r.spool)
    assert set(own.values()) == {acct.pw_uid}, own



@pytest.mark.parametrize("name", ["lock.mdb", "data.mdb"])
def test_planted_index_link_is_refused(relayd_factory, name):
    need_root()
    r, (q,) = _stopped(relayd_factory)
    _give_away(r)
    victim = _victim(r)
    before = file_state(victim)
    link = os.path.join(r.spool, "index", name)
    os.unlink(link)
    os.symlink(victim, link)
    os.lchown(link, *[os.lstat(r.spool).st_uid, os.lstat(r.spool).st_gid])
    for cmd in (("list",), ("list", "--json"), ("show", q), ("stats",),
                ("hold", q), ("delete", q), ("flush",)):
        err = _one_line_error(r.relayctl(*cmd, check=False))
        assert "%s is a symbolic link" % link in err, (cmd, err)
        assert file_state(victim) == before, cmd
    assert os.path.islink(link)


def test_planted_link_in_a_root_spool_is_refused(relayd_factory):
    """relayctl stays root on root's spool: the checks alone protect it,
    and the body is opened O_NOFOLLOW."""
    need_root()
    r, (q,) = _stopped(relayd_factory)
    secret = _victim(r, "secret", b"root only\n", 0o600)
    before = file_state(secret)
    body = os.path.join(r.spool, "msg", q)
    os.unlink(body)
    os.symlink(secret, body)
    err = _one_line_error(r.relayctl("cat", q, check=False))
    assert err == ("relayctl: %s is a symbolic link, which relayd never "
                   "makes; not following it\n" % body), err
    # show prints the envelope from the index, then the error.
    res = r.relayctl("show", q, check=False)
    assert res.returncode == 1 and res.stdout.startswith(b"id:"), res
    assert res.stderr.decode() == (
        "relayctl: %s: %s is a symbolic link, which relayd never makes; not "
        "reading it\n" % (q, body)), res.stderr
    assert b"root only" not in res.stdout + res.stderr
    assert file_state(secret) == before


def test_planted_body_link_as_owner(relayd_factory):
    need_root()
    r, (q,) = _stopped(relayd_factory)
    acct = _give_away(r)
    secret = _victim(r, "secret", b"root only\n", 0o600)
    before = file_state(secret)
    fake = "0" * 15 + "1"
    link = os.path.join(r.spool, "msg", fake)
    os.symlink(secret, link)
    os.lchown(link, acct.pw_uid, acct.pw_gid)
    err = _one_line_error(r.relayctl("cat", fake, check=False))
    assert "%s is a symbolic link" % link in err, err
    # A FIFO planted as a body does not hang relayctl.
    fifo = os.path.join(r.spool, "msg", "0" * 15 + "2")
    os.mkfifo(fifo)
    err = _one_line_error(r.relayctl("cat", "0" * 15 + "2", check=False))
    assert "is not a regular file" in err, err
    assert file_state(secret) == before
    assert r.relayctl("cat", q).stdout.endswith(b"body 0\r\n")


def _misconfigure(kind, r, acct):
    spool = r.spool
    if kind == "spool is a link":
        real = spool + ".real"
        os.rename(spool, real)
        os.symlink(real, spool)
        return "spool_dir %s is a symbolic link (to %s)" % (spool, real)
    if kind == "spool writable by others":
        os.chmod(spool, 0o777)
        return "spool %s is writable by its group or others (mode 0777)" % spool
    if kind == "index of another owner":
        os.lchown(os.path.join(spool, "index"), 0, 0)
        return "%s/index belongs to root (uid 0) but the spool to %s (uid %d)" \
            % (spool, acct.pw_name, acct.pw_uid)
    if kind == "index a link":
        idx = os.path.join(spool, "index")
        os.rename(idx, idx + ".real")
        os.symlink(idx + ".real", idx)
        return "%s is a symbolic link" % idx
    if kind == "ancestor writable":
        os.chmod(r.workdir, 0o777)
        return "%s, above spool_dir %s, is writable by its group or others " \
            "(mode 0777)" % (os.path.realpath(r.workdir), spool)
    if kind == "ancestor of a third account":
        os.lchown(r.workdir, 65534, 65534)
        return "%s, above spool_dir %s, belongs to nobody (uid 65534)" \
            % (os.path.realpath(r.workdir), spool)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "spool is a link", "spool writable by others", "index of another owner",
    "index a link", "ancestor writable", "ancestor of a third account"])
def test_unsafe_spool_is_refused(relayd_factory, kind):
    need_root()
    r, (q,) = _stopped(relayd_factory)
    acct = _give_away(r)
    want = _misconfigure(kind, r, acct)
    for cmd in (("list",), ("cat", q), ("hold", q)):
        err = _one_line_error(r.relayctl(*cmd, check=False))
        assert want in err, (cmd, err)
    # Credentials commands do not open the spool: they run as root, on a
    # file of root's.
    creds = os.path.join(r.workdir, "credentials")
    env = dict(os.environ, RELAYD_CREDENTIALS_FILE=creds)
    res = subprocess.run([RELAYCTL, "-c", r.conf_path, "user", "add",
                          "alice", "--generate"], capture_output=True,
                         timeout=60, stdin=subprocess.DEVNULL, env=env)
    assert res.returncode == 0, res
    assert os.lstat(creds).st_uid == 0


def test_unreachable_spool_names_the_owner(relayd_factory):
    need_root()
    r, (q,) = _stopped(relayd_factory)
    acct = _give_away(r)
    os.chmod(r.workdir, 0o700)      # root's: the owner cannot pass
    err = _one_line_error(r.relayctl("list", check=False))
    assert ("works as the spool's owner %s (uid %d), who cannot use %s: "
            "Permission denied" % (acct.pw_name, acct.pw_uid, r.spool)) in err


# ---- cat on a terminal -------------------------------------------------

def _escape(data):
    """What relayctl cat shows on a terminal, written independently of the
    C code: valid UTF-8 stays, tabs, LF and CR before LF stay; every other
    C0 control, DEL, C1 control (U+0080..U+009F) and each byte that is not
    valid UTF-8 becomes \\xNN."""
    out = []
    text = data.decode("utf-8", "surrogateescape")
    for i, ch in enumerate(text):
        o = ord(ch)
        if 0xdc80 <= o <= 0xdcff:                   # not valid UTF-8
            out.append("\\x%02x" % (o - 0xdc00))
        elif ch in "\t\n" or (ch == "\r" and text[i + 1:i + 2] == "\n"):
            out.append(ch)
        elif o < 0x20 or o == 0x7f:
            out.append("\\x%02x" % o)
        elif 0x80 <= o <= 0x9f:
            out.append("".join("\\x%02x" % b for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out).encode("utf-8", "surrogateescape")


def _cat_on_pty(r, *args, limit=8 << 20):
    master, slave = pty.openpty()
    tty.setraw(slave)               # no output processing (ONLCR)
    try:
        p = subprocess.Popen([RELAYCTL, "-c", r.conf_path, "cat"] + list(args),
                             stdout=slave, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and len(out) < limit:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if p.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:         # EIO: the child closed its side
                break
            if not chunk:
                break
            out += chunk
        rc = p.wait(timeout=30)
        err = p.stderr.read()
        p.stderr.close()
    finally:
        os.close(master)
    assert rc == 0, (rc, err)
    return out


def test_cat_escapes_on_a_terminal(relayd):
    q = _queue(relayd, b"Subject: hi\r\n\r\nplaceholder\r\n")
    relayd.stop()
    body = os.path.join(relayd.spool, "msg", q)
    # Every kind of byte, and a body long enough that reads cut a UTF-8
    # character, a CRLF and an escape sequence at every offset.
    piece = (b"Subject: \x1b[31mred\x1b[0m \x07bell\r\n"
             b"X-Tab:\tkept\r\n\r\n"
             b"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7 \xc2\x9b31m c1\r\n"
             b"lone\rcr, lf only\n del\x7f nul\x00 bad \xff\xc3( \xe0\x80\xaf"
             b" \xed\xa0\x80 \x9b\r\n")
    data = b"".join(piece[i % 7:] + b"%d\r\n" % i for i in range(6000))
    with open(body, "wb") as f:
        f.write(data)
    assert len(data) > 3 * 128 * 1024

    shown = _cat_on_pty(relayd, q)
    assert shown == _escape(data)
    assert b"\x1b" not in shown and b"\x07" not in shown
    assert b"\\x1b[31mred" in shown and b"lone\\x0dcr" in shown
    assert "café € 📧".encode() in shown and b"\\xc2\\x9b31m" in shown

    assert _cat_on_pty(relayd, q, "--raw") == data
    res = relayd.relayctl("cat", q)     # a pipe: the bytes
    assert res.stdout == data


def test_link_in_the_middle_of_spool_dir_is_refused(relayd_factory):
    """A link on the way to the spool (not its last component), as an
    account that can write to a directory above it would plant and flip
    it: relayctl as root follows none, so the directories it checks are
    the ones the path goes through (found in review: the link flipped
    between a tree of root's and the account's made root open the
    account's index)."""
    need_root()
    r, (q,) = _stopped(relayd_factory)
    hop = os.path.join(r.workdir, "hop")
    os.symlink(r.workdir, hop)
    via = os.path.join(hop, os.path.basename(r.spool))
    r.conf["spool_dir"] = via
    r.write_conf()
    for cmd in (("list",), ("cat", q), ("check",)):
        res = r.relayctl(*cmd, check=False)
        assert res.returncode in (1, 2) and res.stdout == b"", (cmd, res)
        err = res.stderr.decode()
        assert ("relayctl: %s, on the way to spool_dir %s, is a symbolic "
                "link" % (hop, via)) in err, (cmd, err)
    # The real path works.
    r.conf["spool_dir"] = r.spool
    r.write_conf()
    assert q.encode() in r.relayctl("list").stdout
