"""
tests/e2e/authutil.py - Helpers for the AUTH and relay-access tests:
credentials made with the real `relayctl user add`, base64 AUTH
responses, and a raw AUTH over an open SmtpRaw.

  add_user(r, name, password, *opts)   relayctl -c <r's config> user add
  plain(user, password)                AUTH PLAIN response (base64)
  b64(text)
  auth_plain(c, user, password)        -> Reply of "AUTH PLAIN <ir>"
  auth_login(c, user, password)        -> Reply (334, 334, then the result)
"""
import base64
import os
import subprocess

from conftest import RELAYCTL

PASSWORD = "correct horse battery"


def add_user(r, name, password=PASSWORD, *opts):
    e = dict(os.environ)
    e.pop("RELAYD_CREDENTIALS_FILE", None)
    res = subprocess.run([RELAYCTL, "-c", r.conf_path, "user", "add", name] +
                         list(opts), input=(password + "\n").encode(),
                         capture_output=True, timeout=60, env=e)
    assert res.returncode == 0, res.stderr.decode()


def ctl_user(r, *args):
    e = dict(os.environ)
    e.pop("RELAYD_CREDENTIALS_FILE", None)
    res = subprocess.run([RELAYCTL, "-c", r.conf_path, "user"] + list(args),
                         capture_output=True, timeout=60, env=e,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr.decode()


def b64(text):
    if isinstance(text, str):
        text = text.encode()
    return base64.b64encode(text).decode()


def plain(user, password):
    return b64("\0%s\0%s" % (user, password))


def auth_plain(c, user, password=PASSWORD):
    return c.cmd("AUTH PLAIN " + plain(user, password))


def auth_login(c, user, password=PASSWORD):
    rep = c.cmd("AUTH LOGIN")
    assert rep.lines == ["334 VXNlcm5hbWU6"], rep
    rep = c.cmd(b64(user))
    assert rep.lines == ["334 UGFzc3dvcmQ6"], rep
    return c.cmd(b64(password))
