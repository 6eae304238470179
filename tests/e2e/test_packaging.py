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
    assert "chmod 2755" in out and "relayd-drop" in out
    want = {
        "usr/sbin/relayd": 0o755,
        "usr/bin/relayctl": 0o755,
        "usr/share/man/man8/relayd.8": 0o644,
        "usr/share/man/man8/relayctl.8": 0o644,
        "usr/share/man/man8/relayd-sendmail.8": 0o644,
        "usr/share/man/man5/relayd.conf.5": 0o644,
        "usr/lib/systemd/system/relayd.service": 0o644,
        "etc/relayd/relayd.conf": 0o644,
        "usr/sbin/relayd-sendmail": 0o755,  # setgid by the package
        "var/spool/relayd": 0o711,          # the maildrop's group passes
        "var/spool/relayd/maildrop": 0o1730,
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


def _dockerfile_env():
    """The ENV of contrib/Dockerfile's final stage, as KEY -> value."""
    with open(os.path.join(REPO, "contrib/Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    env = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for kv in line[4:].split():
                k, v = kv.split("=", 1)
                env[k] = v
    return env


def _compose_environment(dotenv):
    """contrib/compose.yaml's `environment:` of the relayd service, with
    ${VAR} and ${VAR:-default} filled from dotenv as docker compose does
    (a small reader for this file's plain `KEY: value` lines)."""
    with open(os.path.join(REPO, "contrib/compose.yaml")) as f:
        lines = f.read().splitlines()
    i = lines.index("    environment:") + 1
    out = {}
    while i < len(lines) and lines[i].startswith("      "):
        k, v = lines[i].strip().split(": ", 1)

        def sub(m):
            name, default = m.group(1), m.group(3)
            return dotenv.get(name) or (default if default is not None else "")
        out[k] = re.sub(r"\$\{([A-Z_]+)(:-([^}]*))?\}", sub, v)
        i += 1
    return out


def test_container_environment_contract(upstream_factory, test_ca, tmp_path):
    """relayd configured the way the container is: the image's
    etc/relayd.conf and ENV, compose.yaml's environment filled from
    .env.example (smarthost values pointed at a test smarthost), the
    password from a secret file. One message reaches the smarthost,
    authenticated."""
    from conftest_upstream import make_message, message_id, submit
    from conftest import Relayd, wait_until
    up = upstream_factory(tls="starttls", users={"apikey": "from-a-secret"})
    with open(os.path.join(REPO, "contrib/.env.example")) as f:
        dotenv = dict(line.split("=", 1) for line in f.read().splitlines()
                      if line and not line.startswith("#"))
    for k in ("RELAYD_SMARTHOST", "RELAYD_SMARTHOST_USER", "RELAYD_LISTEN",
              "RELAYD_TRUSTED_NETWORKS"):
        assert k in dotenv, k
    r = Relayd(str(tmp_path))           # only for its address and helpers
    dotenv.update(RELAYD_SMARTHOST=up.smarthost,
                  RELAYD_LISTEN="%s:%d" % (r.addr, r.port))
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith("RELAYD_")}
    env.update(_dockerfile_env())
    compose = _compose_environment(dotenv)
    assert compose["RELAYD_SMARTHOST_PASSWORD_FILE"] == \
        "/run/secrets/smarthost_password"
    secret = tmp_path / "smarthost_password"
    secret.write_text("from-a-secret\n")
    os.chmod(str(secret), 0o600)
    compose["RELAYD_SMARTHOST_PASSWORD_FILE"] = str(secret)
    env.update(compose)
    # What a test machine needs instead of the image's paths and account.
    env.update(RELAYD_SPOOL_DIR=str(tmp_path / "spool"),
               RELAYD_LOG_FILE=r.logfile,
               RELAYD_SMARTHOST_TLS_CA=test_ca.ca_cert,
               RELAYD_SMARTHOST_TLS_NAME="smarthost.test")
    if os.geteuid() == 0:
        env["RELAYD_USER"] = "root"
    # The image's configuration file: the repository's etc/relayd.conf.
    conf = os.path.join(REPO, "etc/relayd.conf")
    assert env["RELAYD_CONFIG"] == "/etc/relayd/relayd.conf"
    env["RELAYD_CONFIG"] = conf         # where the image has its copy
    err = open(str(tmp_path / "stderr"), "wb")
    p = subprocess.Popen([RELAYD, "-c", conf], env=env, stdout=err,
                         stderr=err, stdin=subprocess.DEVNULL)
    try:
        r.proc = p
        wait_until(r._listening, timeout=20, what="relayd to listen")
        content, mid = make_message("from a container")
        submit(r, "app@client.test", ["someone@dest.test"], content)
        (rec,) = up.wait_messages(1)
        assert message_id(rec["data"]) == mid
        assert rec["auth_user"] == "apikey", rec
        # The HEALTHCHECK's command says healthy.
        hc = subprocess.run(["sh", "-c", "%s stats --json | grep -q "
                             "'\"running\":true'" % RELAYCTL], env=env,
                            timeout=30)
        assert hc.returncode == 0
    finally:
        p.send_signal(15)
        assert p.wait(timeout=30) == 0
        err.close()
