"""tests/e2e/test_direct_policy_files.py - the direct-delivery policy files
and keys from the outside (issue 9 §3): `relayd -t` accepts good
tls_policy_file and destination_policy_file contents and stops on a bad
line with one error naming the key, the file and the line; a running
daemon's SIGHUP with a broken file keeps the running configuration (and
the fixed file is then taken); bad values of the new keys name their
line."""
import os
import signal
import subprocess

import pytest

from conftest import RELAYD, smtp_connect, wait_until


def _env():
    return {k: v for k, v in os.environ.items()
            if not k.startswith("RELAYD_") or k in ("RELAYD_BIN",
                                                    "RELAYCTL_BIN")}


def _check(path):
    return subprocess.run([RELAYD, "-t", "-c", path], capture_output=True,
                          timeout=10, stdin=subprocess.DEVNULL, env=_env())


def _one_line_error(r):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.decode()
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err.startswith("relayd: "), err
    return err.rstrip("\n")


GOOD_TLS = ("# TLS per recipient domain\n"
            "example.com      verify\n"
            ".example.net     encrypt   # every subdomain\n"
            "broken.example   none\n\n")
GOOD_DEST = ("gmail-smtp-in.l.google.com concurrency=2 rate=60/min\n"
             ".google.com rate=30/min,500/hour\n"
             "example.org concurrency=1\n")


def test_good_files(relayd_factory, tmp_path):
    tls = tmp_path / "tls_policy"
    dest = tmp_path / "destinations"
    tls.write_text(GOOD_TLS)
    dest.write_text(GOOD_DEST)
    r = relayd_factory(start=False, tls_policy_file=tls,
                       destination_policy_file=dest, mx_allow_private="yes",
                       mx_port=2525, ip_preference="ipv4",
                       smtp_bind_address="127.0.0.1",
                       smtp_bind_address6="::1",
                       max_recipients_per_transaction=10,
                       destination_concurrency=2, max_delivery_sessions=20)
    res = _check(r.conf_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode() == \
        "relayd: configuration %s is valid\n" % r.conf_path


BAD_FILES = [
    # (key, file text, expected error after "relayd: KEY: PATH:")
    ("tls_policy_file", "example.com verify\nexample.net sometimes\n",
     "2: unknown level 'sometimes' (none, may, encrypt, verify)"),
    ("tls_policy_file", "\n\nexample.com\n",
     "3: expected 'DOMAIN none|may|encrypt|verify'"),
    ("tls_policy_file", "exa mple.com may\n",
     "1: expected 'DOMAIN none|may|encrypt|verify'"),
    ("tls_policy_file", "a..b may\n", "1: not a domain or host name: 'a..b'"),
    ("tls_policy_file", "example.com may\nExample.COM. none\n",
     "2: 'example.com' is already on line 1"),
    ("destination_policy_file", "example.org concurrency=0\n",
     "1: concurrency: not a number from 1 to 1000: '0'"),
    ("destination_policy_file", "# x\nexample.org rate=5/day\n",
     "2: rate: not N/min, N/hour or N/min,M/hour: '5/day'"),
    ("destination_policy_file", "example.org speed=3\n",
     "1: unknown or repeated setting 'speed=3' (concurrency=N, "
     "rate=N/min|N/hour)"),
    ("destination_policy_file", "example.org\n",
     "1: expected 'DESTINATION concurrency=N rate=N/min|N/hour'"),
]


@pytest.mark.parametrize("key,text,why", BAD_FILES,
                         ids=["%s%d" % (b[0][:4], i)
                              for i, b in enumerate(BAD_FILES)])
def test_bad_file_line(relayd_factory, tmp_path, key, text, why):
    path = tmp_path / "policy"
    path.write_text(text)
    r = relayd_factory(start=False, **{key: path})
    err = _one_line_error(_check(r.conf_path))
    assert err == "relayd: %s: %s:%s" % (key, path, why), err


def test_missing_and_long_files(relayd_factory, tmp_path):
    missing = tmp_path / "nope"
    r = relayd_factory(start=False, tls_policy_file=missing)
    err = _one_line_error(_check(r.conf_path))
    assert err == ("relayd: tls_policy_file: cannot read %s: No such file "
                   "or directory" % missing), err
    # A line over 1024 characters is refused, not cut.
    long = tmp_path / "long"
    long.write_text("example.com may" + " " * 1010 + "\n")
    r = relayd_factory(start=False, destination_policy_file=long)
    err = _one_line_error(_check(r.conf_path))
    assert err == ("relayd: destination_policy_file: %s:1: line longer "
                   "than 1024 characters" % long), err


BAD_KEYS = [
    ("mx_allow_private = sometimes", "mx_allow_private", "not a boolean"),
    ("mx_port = 0", "mx_port", "out of range"),
    ("ip_preference = ipv6first", "ip_preference", "ipv6first"),
    ("smtp_bind_address = ::1", "smtp_bind_address",
     "not an IPv4 address: '::1'"),
    ("smtp_bind_address6 = 127.0.0.1", "smtp_bind_address6",
     "not an IPv6 address: '127.0.0.1'"),
    ("smtp_bind_address6 = ::ffff:127.0.0.1", "smtp_bind_address6",
     "not a unicast source address"),
    ("max_recipients_per_transaction = 0", "max_recipients_per_transaction",
     "out of range"),
    ("destination_concurrency = 1001", "destination_concurrency",
     "out of range"),
    ("max_delivery_sessions = lots", "max_delivery_sessions",
     "not a number"),
]


@pytest.mark.parametrize("line,key,why", BAD_KEYS,
                         ids=[b[1] for b in BAD_KEYS])
def test_bad_keys(tmp_path, line, key, why):
    path = tmp_path / "bad.conf"
    path.write_text("hostname = relay.test\n%s\n" % line)
    err = _one_line_error(_check(str(path)))
    assert err.startswith("relayd: %s:2: %s: " % (path, key)), err
    assert why in err, err


def test_sighup_with_broken_file_keeps_running(relayd_factory, tmp_path):
    tls = tmp_path / "tls_policy"
    tls.write_text(GOOD_TLS)
    r = relayd_factory(tls_policy_file=tls, max_recipients=5)
    # Break the file and raise max_recipients: the reload must be refused
    # as a whole, so the old max_recipients stays.
    tls.write_text("example.com must\n")
    r.conf["max_recipients"] = "1"
    r.write_conf()
    seen = len(r.log_text())
    os.kill(r.pid, signal.SIGHUP)
    want = ("SIGHUP: tls_policy_file: %s:1: unknown level 'must' (none, "
            "may, encrypt, verify); keeping the running configuration" % tls)
    wait_until(lambda: want in r.log_text()[seen:], timeout=20,
               what="the refused reload's log line")
    with smtp_connect(r) as c:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<r1@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("RCPT TO:<r2@dest.test>").pair == (250, "2.1.5")
        c.cmd("RSET")
    # Fixed: the next SIGHUP takes the new configuration.
    tls.write_text(GOOD_TLS)
    seen = len(r.log_text())
    os.kill(r.pid, signal.SIGHUP)
    wait_until(lambda: "SIGHUP: configuration reloaded" in
               r.log_text()[seen:], timeout=20, what="the reload")
    with smtp_connect(r) as c:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<r1@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("RCPT TO:<r2@dest.test>").pair == (452, "4.5.3")
