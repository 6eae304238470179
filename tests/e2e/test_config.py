"""tests/e2e/test_config.py - relayd's configuration from the outside:
`relayd -t` on good and bad files (one-line errors naming the file, the
line and the key, exit 1), unreadable files, RELAYD_<KEY> environment
overrides in a running daemon, and bad environment values."""
import os
import subprocess

import pytest

from conftest import RELAYD, smtp_connect

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(**extra):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("RELAYD_") or k in ("RELAYD_BIN", "RELAYCTL_BIN")}
    e.update(extra)
    return e


def _check(path, env=None, preexec=None):
    return subprocess.run([RELAYD, "-t", "-c", path], capture_output=True,
                          timeout=10, stdin=subprocess.DEVNULL,
                          env=env or _env(), preexec_fn=preexec)


def _one_line_error(r):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.decode()
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert err.startswith("relayd: "), err
    return err.rstrip("\n")


def test_good_config(relayd_factory, tmp_path):
    r = relayd_factory(start=False, max_recipients=5, timeout_command="30s",
                       max_message_size="10M", bare_newline="normalize")
    res = _check(r.conf_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode() == \
        "relayd: configuration %s is valid\n" % r.conf_path
    assert res.stderr == b""
    # The shipped example is valid too, comments and all, as `make run`
    # uses it (as root, with RELAYD_USER=root: the relayd account exists
    # only after `make install`).
    env = _env(RELAYD_USER="root") if os.geteuid() == 0 else None
    res = _check(os.path.join(REPO, "etc", "relayd.conf"), env=env)
    assert res.returncode == 0, res.stderr


BAD = [
    # (line text, key named, fragment of the reason)
    ("bogus_key = 1", "bogus_key", "unknown key"),
    ("max_recipients = abc", "max_recipients", "abc"),
    ("max_recipients = 0", "max_recipients", None),
    ("max_message_size = 10Q", "max_message_size", "10Q"),
    ("timeout_command = 5 fortnights", "timeout_command", None),
    ("bare_newline = sometimes", "bare_newline", "sometimes"),
    ("log_level = loud", "log_level", "loud"),
    ("listen = not-an-address", "listen", None),
    ("received_client = perhaps", "received_client", "perhaps"),
    ("scrub_headers = Bad Name", "scrub_headers", "Bad Name"),
    ("hostname =", "hostname", None),
    ("just some words", "just some words", "key = value"),
    ("max_message_size = 1025G", "max_message_size", "out of range"),
    ("timeout_command = 0", "timeout_command", "out of range"),
    ("listen = 127.0.0.1:99999", "listen", "99999"),
    ("scrub_headers = A,,B", "scrub_headers", None),
    ("Max_Recipients = 5", "Max_Recipients", "unknown key"),
]


@pytest.mark.parametrize("line,key,why", BAD, ids=[b[1] + str(i) for i, b in
                                                  enumerate(BAD)])
def test_bad_config_names_file_line_key(tmp_path, line, key, why):
    path = tmp_path / "bad.conf"
    path.write_text("# a comment\nhostname = relay.test\n\n%s\n"
                    "spool_dir = /nonexistent\n" % line)
    err = _one_line_error(_check(str(path)))
    assert err.startswith("relayd: %s:4: " % path), err
    assert key in err, err
    if why:
        assert why in err, err


def test_bad_config_stops_daemon_start(tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text("listen = 127.0.0.1:1\nmax_connections = -3\n")
    r = subprocess.run([RELAYD, "-c", str(path)], capture_output=True,
                       timeout=10, stdin=subprocess.DEVNULL, env=_env())
    err = _one_line_error(r)
    assert err.startswith("relayd: %s:2: max_connections" % path), err


def test_unreadable_config(tmp_path):
    missing = tmp_path / "missing.conf"
    err = _one_line_error(_check(str(missing)))
    assert str(missing) in err and "No such file" in err, err

    err = _one_line_error(_check(str(tmp_path)))
    assert str(tmp_path) in err, err

    if os.geteuid() == 0:
        # root reads anything; check as nobody instead.
        path = tmp_path / "secret.conf"
        path.write_text("hostname = relay.test\n")
        os.chmod(path, 0o600)
        os.chmod(tmp_path, 0o755)

        def as_nobody():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        err = _one_line_error(_check(str(path), preexec=as_nobody))
    else:
        path = tmp_path / "secret.conf"
        path.write_text("hostname = relay.test\n")
        os.chmod(path, 0)
        err = _one_line_error(_check(str(path)))
    assert str(path) in err and "Permission denied" in err, err


def test_env_overrides_file(relayd_factory):
    r = relayd_factory(max_recipients=10, max_message_size="1M",
                       env={"RELAYD_MAX_RECIPIENTS": "2",
                            "RELAYD_MAX_MESSAGE_SIZE": "3k",
                            "RELAYD_NOT_A_KEY": "ignored"})
    with smtp_connect(r) as c:
        rep = c.cmd("EHLO client.test")
        assert "250-SIZE 3072" in rep.lines, rep
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<r1@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("RCPT TO:<r2@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("RCPT TO:<r3@dest.test>").pair == (452, "4.5.3")


def test_env_bad_value_named(relayd_factory):
    r = relayd_factory(start=False)
    res = _check(r.conf_path, env=_env(RELAYD_MAX_RECIPIENTS="lots"))
    err = _one_line_error(res)
    assert "RELAYD_MAX_RECIPIENTS" in err and "lots" in err, err
    res = _check(r.conf_path, env=_env(RELAYD_TIMEOUT_DATA="soon"))
    err = _one_line_error(res)
    assert "RELAYD_TIMEOUT_DATA" in err, err
    # A good value passes the check.
    res = _check(r.conf_path, env=_env(RELAYD_MAX_RECIPIENTS="7"))
    assert res.returncode == 0, res.stderr


def test_file_syntax_is_applied(relayd_factory):
    """Comments, blanks, a key given twice (the last wins) and unit
    suffixes, seen through a running daemon."""
    r = relayd_factory(start=False)
    with open(r.conf_path, "a") as f:
        f.write("\n   # indented comment\n"
                "max_message_size = 1M\n"
                "max_recipients=9\t# trailing comment\n"
                "max_message_size = 2k   # the last one wins\n"
                "max_recipients = 1\n")
    r.start()
    with smtp_connect(r) as c:
        rep = c.cmd("EHLO client.test")
        assert "250-SIZE 2048" in rep.lines, rep
        assert c.cmd("MAIL FROM:<a@client.test>").pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<r1@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("RCPT TO:<r2@dest.test>").pair == (452, "4.5.3")


def test_version():
    """relayd --version and relayctl --version: the release and the
    libraries linked, exit 0, no configuration needed."""
    from conftest import RELAYCTL
    import re
    outs = []
    for argv in ([RELAYD, "--version"], [RELAYCTL, "--version"],
                 [RELAYD, "-V"], [RELAYCTL, "-V"]):
        res = subprocess.run(argv, capture_output=True, timeout=30,
                             stdin=subprocess.DEVNULL,
                             env={"RELAYD_CONFIG": "/nonexistent"})
        assert res.returncode == 0, (argv, res)
        out = res.stdout.decode()
        assert re.fullmatch(r"relay(d|ctl) \d+\.\d+\.\d+ \(libuv 1\.\d+\.\d+, "
                            r"OpenSSL 3\.[^,]*, LMDB 0\.9\.\d+.*, "
                            r"c-ares 1\.\d+\.\d+\)\n", out), out
        outs.append(out.split()[1])
    assert len(set(outs)) == 1, outs
