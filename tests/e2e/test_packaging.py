"""tests/e2e/test_packaging.py - what packagers and operators install:
`make install DESTDIR=...` lays out the programs, manual pages, example
configuration, systemd unit and spool with the right modes (and prints
the steps it leaves to the package); the manual pages stay true
(relayd.conf(5) is what contrib/man/mkconf5 makes of etc/relayd.conf,
relayctl(8) names every command); `systemd-analyze verify` accepts the
unit; the container's RELAYD_* environment contract works."""
import os
import re
import shutil
import stat
import subprocess

import pytest

from conftest import RELAYCTL, RELAYD

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_relayd_conf_5_is_current():
    res = subprocess.run([os.path.join(REPO, "contrib/man/mkconf5"),
                          os.path.join(REPO, "etc/relayd.conf")],
                         capture_output=True, timeout=30, check=True)
    with open(os.path.join(REPO, "contrib/man/relayd.conf.5"), "rb") as f:
        assert f.read() == res.stdout, \
            "contrib/man/relayd.conf.5 is out of date: run make man"


def test_relayctl_8_names_every_command():
    res = subprocess.run([RELAYCTL, "help"], capture_output=True, timeout=30,
                         check=True)
    text = res.stdout.decode()
    cmds = re.findall(r"^  ([a-z][a-z-]*) ", text.split("Commands:\n")[1]
                      .split("\n\n")[0], re.M)
    assert len(cmds) >= 10, text
    with open(os.path.join(REPO, "contrib/man/relayctl.8")) as f:
        page = f.read()
    missing = [c for c in cmds if not re.search(r"^\.B %s\b" % re.escape(c),
                                                page, re.M)]
    assert missing == [], "relayctl(8) lacks: %s" % missing


def test_manual_pages_format_cleanly():
    if not shutil.which("man"):
        pytest.skip("no man(1) here")
    for name in ("relayd.8", "relayctl.8", "relayd-sendmail.8",
                 "relayd.conf.5"):
        res = subprocess.run(["man", "-l", "-Tutf8", "--warnings",
                              os.path.join(REPO, "contrib/man", name)],
                             capture_output=True, timeout=60,
                             env=dict(os.environ, MANWIDTH="80"))
        assert res.returncode == 0, (name, res.stderr)
        assert res.stderr.decode().strip() == "", (name, res.stderr)
        assert len(res.stdout) > 500, name


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_make_install_destdir(tmp_path):
    dest = str(tmp_path / "root")
    build = os.path.dirname(RELAYD)
    res = subprocess.run(["make", "-s", "-C", REPO, "install",
                          "DESTDIR=" + dest, "PREFIX=/usr",
                          "BUILD=" + build], capture_output=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    out = res.stdout.decode()
    # The steps a package does itself are printed, not done.
    assert "DESTDIR is set: skipped" in out and "adduser --system" in out
    want = {
        "usr/sbin/relayd": 0o755,
        "usr/bin/relayctl": 0o755,
        "usr/share/man/man8/relayd.8": 0o644,
        "usr/share/man/man8/relayctl.8": 0o644,
        "usr/share/man/man8/relayd-sendmail.8": 0o644,
        "usr/share/man/man5/relayd.conf.5": 0o644,
        "usr/lib/systemd/system/relayd.service": 0o644,
        "etc/relayd/relayd.conf": 0o644,
        "var/spool/relayd": 0o700,
    }
    for rel, mode in want.items():
        p = os.path.join(dest, rel)
        assert os.path.exists(p), rel
        assert _mode(p) == mode, "%s: %o, want %o" % (rel, _mode(p), mode)
    with open(os.path.join(dest, "usr/lib/systemd/system/relayd.service")) as f:
        unit = f.read()
    assert "ExecStart=/usr/sbin/relayd -c /etc/relayd/relayd.conf" in unit
    assert "/usr/local/" not in unit
    with open(os.path.join(dest, "etc/relayd/relayd.conf")) as f:
        assert "\nspool_dir = /var/spool/relayd\n" in f.read()
    # The installed relayd accepts the installed configuration.
    conf = os.path.join(dest, "etc/relayd/relayd.conf")
    env = dict(os.environ, RELAYD_SPOOL_DIR=str(tmp_path / "spool"),
               RELAYD_USER="root" if os.geteuid() == 0 else "")
    res = subprocess.run([os.path.join(dest, "usr/sbin/relayd"), "-t", "-c",
                          conf], capture_output=True, timeout=30, env=env)
    assert res.returncode == 0, res.stderr
    # A second install keeps an edited configuration.
    with open(conf, "a") as f:
        f.write("# edited\n")
    subprocess.run(["make", "-s", "-C", REPO, "install", "DESTDIR=" + dest,
                    "PREFIX=/usr", "BUILD=" + build], check=True,
                   capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    with open(conf) as f:
        assert f.read().endswith("# edited\n")


def test_systemd_unit_verifies(tmp_path):
    """systemd-analyze verify (Debian's systemd, in make test's packages)
    has nothing to say about the unit; the test of the test: a broken
    copy draws a complaint."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    with open(os.path.join(REPO, "contrib/relayd.service")) as f:
        unit = f.read()
    # The binaries it names must exist: point them at this build.
    unit = unit.replace("/usr/local/sbin/relayd", RELAYD).replace(
        "/usr/local/bin/relayctl", RELAYCTL)
    for key in ("User=relayd", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                "NoNewPrivileges=yes", "ProtectSystem=strict",
                "ReadWritePaths=/var/spool/relayd", "PrivateTmp=yes",
                "ProtectHome=yes", "RestrictAddressFamilies=",
                "SystemCallFilter=@system-service", "Type=notify",
                "ExecReload="):
        assert key in unit, key

    def verify(text):
        d = tmp_path / ("u%d" % len(os.listdir(str(tmp_path))))
        d.mkdir()
        p = d / "relayd.service"
        p.write_text(text)
        return subprocess.run(["systemd-analyze", "verify", "--man=no",
                               str(p)], capture_output=True, timeout=60)
    res = verify(unit)
    assert res.returncode == 0, res
    assert (res.stdout + res.stderr).decode().strip() == "", res
    bad = verify(unit.replace("Type=notify", "Type=bogus"))
    assert b"bogus" in bad.stdout + bad.stderr
