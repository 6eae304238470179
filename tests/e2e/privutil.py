"""tests/e2e/privutil.py - Helpers for the tests of who relayd and relayctl
run as (test_privdrop.py, test_relayctl_root.py): the system account
relayd-test that they drop to, made with adduser --system when missing and
kept (another test run may be using it at the same moment), and a walk of
a spool's owners that never follows a link.

  need_root()                   skip the test unless it runs as root
  account() -> pwd entry        relayd-test, created when missing
  owners(top) -> {rel: uid}     lstat of every entry under top
  chown_tree(top, uid, gid)     lchown of every entry under top
  file_state(path) -> tuple     what must not change about a victim file
"""
import os
import pwd
import shutil
import subprocess

import pytest

ACCOUNT = "relayd-test"


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: checks what relayd and relayctl do when "
                    "started as root")


def account():
    try:
        return pwd.getpwnam(ACCOUNT)
    except KeyError:
        pass
    adduser = shutil.which("adduser") or "/usr/sbin/adduser"
    r = subprocess.run([adduser, "--system", "--group", "--no-create-home",
                        "--home", "/nonexistent", ACCOUNT],
                       capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    try:
        return pwd.getpwnam(ACCOUNT)
    except KeyError:
        raise AssertionError("cannot create account %s: %s %s" %
                             (ACCOUNT, r.stdout, r.stderr))


def owners(top):
    out = {".": os.lstat(top).st_uid}
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, top)] = os.lstat(p).st_uid
    return out


def chown_tree(top, uid, gid):
    os.lchown(top, uid, gid)
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            os.lchown(os.path.join(d, n), uid, gid)


def file_state(path):
    st = os.lstat(path)
    with open(path, "rb") as f:
        data = f.read()
    return (st.st_uid, st.st_gid, st.st_mode, st.st_nlink, st.st_mtime_ns,
            data)
