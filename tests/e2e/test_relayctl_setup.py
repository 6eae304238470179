"""tests/e2e/test_relayctl_setup.py - `relayctl setup smarthost` (and
`setup direct`): the configuration written is accepted by `relayd -t` and
delivers; the smarthost login is checked against a real aiosmtpd upstream
with AUTH (upstream.py) before any mail: a wrong password fails with the
535 reply shown, a certificate for another name fails naming it, a closed
port says "Connection refused"; an existing file is never replaced without
--force; --check-only writes nothing.

The daemon the tests start runs on the written file, with only where it
listens, its spool, log and account overridden through RELAYD_<KEY>
variables (which win over the file): exactly what the operator's relayd
would read otherwise."""
import os
import re
import smtplib
import stat
import subprocess

import pytest

from conftest import RELAYCTL, RELAYD
from conftest_upstream import (SENDER, make_message, message_id, submit,
                               wait_status)
from upstream import TLS_NAME

USER, PASSWORD = "setup-user", "S3tup-pass-word"


def run(args, stdin=b"", env=None, timeout=90):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(args, input=stdin, capture_output=True,
                       timeout=timeout, env=e)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def setup_smarthost(conf, up, ca, *extra, password=PASSWORD, user=USER):
    args = [RELAYCTL, "setup", "smarthost", "--config", conf,
            "--host", up.smarthost, "--tls-ca", ca.ca_cert,
            "--tls-name", TLS_NAME, "--hostname", "relay.test",
            "--timeout", "20s"]
    if up.tls != "implicit" or up.port != 465:
        args += ["--tls", up.tls]
    if user:
        args += ["--user", user]
    args += list(extra)
    return run(args, stdin=(password + "\n").encode() if password else b"",
               env={"RELAYD_USER": "root"})


def relayd_env(r):
    """Where the test daemon listens and keeps its spool and log; the rest
    comes from the file under test."""
    env = {"RELAYD_LISTEN": "%s:%d" % (r.addr, r.port),
           "RELAYD_SPOOL_DIR": r.spool,
           "RELAYD_LOG_FILE": r.logfile,
           "RELAYD_LOG_LEVEL": "info",
           "RELAYD_RETRY_MIN": "1s"}
    if os.geteuid() == 0:
        env["RELAYD_USER"] = "root"
    return env


def conf_keys(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
    return out


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_setup_smarthost_writes_a_config_that_delivers(upstream_factory,
                                                        relayd_factory,
                                                        test_ca, tmp_path,
                                                        tls):
    up = upstream_factory(tls=tls, users={USER: PASSWORD})
    conf = str(tmp_path / "etc" / "relayd.conf")
    rc, out, err = setup_smarthost(conf, up, test_ca)
    assert rc == 0, (rc, out, err)
    pwfile = str(tmp_path / "etc" / "smarthost.password")
    # Files: the config 0644, the password 0600 holding the password.
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(pwfile).st_mode) == 0o600
    with open(pwfile) as f:
        assert f.read() == PASSWORD + "\n"
    keys = conf_keys(conf)
    assert keys["delivery"] == "smarthost"
    assert keys["smarthost"] == up.smarthost
    assert keys["smarthost_user"] == USER
    assert keys["smarthost_password_file"] == pwfile
    assert keys["hostname"] == "relay.test"
    with open(conf) as f:
        assert PASSWORD not in f.read()
    assert PASSWORD not in out + err
    # Steps, in order, and the next step named.
    pos = 0
    for p in (r"^Wrote %s \(the password, mode 0600\)\.$" % re.escape(pwfile),
              r"^Wrote %s\.$" % re.escape(conf),
              r"^Checking the login at ",
              r"^  connected to ",
              r"^  TLS: TLSv1\.[23] \S+, certificate verified$",
              r"^  AUTH as %s: accepted$" % USER,
              r"^OK: relayd can log in to the smarthost \(no mail was sent\)",
              r"^  relayd -t -c %s" % re.escape(conf),
              r"^  relayctl -c %s send-test " % re.escape(conf)):
        m = re.compile(p, re.M).search(out, pos)
        assert m, (p, out)
        pos = m.end()
    # The check logged in and sent nothing.
    conns = up.connections()
    assert len(conns) == 1, conns
    assert [a["ok"] for a in conns[0]["auth"]] == [True], conns[0]
    assert conns[0]["auth"][0]["user"] == USER and conns[0]["auth"][0]["tls"]
    assert not any(c["verb"] in ("MAIL", "RCPT", "DATA")
                   for c in conns[0]["commands"]), conns[0]["commands"]
    assert up.messages(all=True) == []

    r = relayd_factory(start=False)
    r.conf_path = conf
    rc, out, err = run([RELAYD, "-t", "-c", conf], env=relayd_env(r))
    assert rc == 0, (rc, out, err)
    r.start(env=relayd_env(r))
    content, mid = make_message("through setup's config")
    qid = submit(r, SENDER, ["rcpt@dest.test"], content)
    rec = up.wait_messages(1, match=lambda m: message_id(m["data"]) == mid)[0]
    assert rec["auth_user"] == USER and rec["tls"], rec
    wait_status(r, qid, "rcpt@dest.test", "sent", fail_on=("bounced",))


def test_setup_smarthost_wrong_password(upstream_factory, test_ca, tmp_path):
    up = upstream_factory(tls="starttls", users={USER: PASSWORD})
    conf = str(tmp_path / "relayd.conf")
    rc, out, err = setup_smarthost(conf, up, test_ca, password="not-it")
    assert rc == 1, (rc, out, err)
    assert re.search(r"^FAILED: AUTH refused by \S+: 535 5\.7\.8 ", out,
                     re.M), out
    assert "Check the user name and password" in out
    assert "could not log in" in out and "--force" in out
    assert "not-it" not in out + err
    auths = [a for c in up.connections() for a in c["auth"]]
    assert [a["ok"] for a in auths] == [False], auths
    assert up.messages(all=True) == []

    # The same with --check-only and the right password: exit 0, and the
    # files are not written again.
    before = os.stat(conf).st_mtime_ns
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    rc, out, err = setup_smarthost(conf, up, test_ca, "--check-only",
                                   "--password-file", str(pw), password=None)
    assert rc == 0, (rc, out, err)
    assert "OK: relayd can log in" in out
    assert "Wrote" not in out
    assert os.stat(conf).st_mtime_ns == before


def test_setup_smarthost_password_file_given(upstream_factory, test_ca,
                                             tmp_path):
    """--password-file F: the configuration names F (made absolute: relayd
    reads it from its own working directory); nothing else is written."""
    up = upstream_factory(tls="starttls", users={USER: PASSWORD})
    (tmp_path / "secret").write_text(PASSWORD + "\n")
    os.chmod(str(tmp_path / "secret"), 0o644)
    conf = str(tmp_path / "etc" / "relayd.conf")
    args = [RELAYCTL, "setup", "smarthost", "--config", conf, "--host",
            up.smarthost, "--tls", "starttls", "--tls-ca", test_ca.ca_cert,
            "--tls-name", TLS_NAME, "--user", USER, "--password-file",
            "secret"]
    r = subprocess.run(args, cwd=str(tmp_path), capture_output=True,
                       timeout=90, stdin=subprocess.DEVNULL)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, (out, err)
    assert "warning: %s can be read by others" % (tmp_path / "secret") in err
    assert conf_keys(conf)["smarthost_password_file"] == \
        str(tmp_path / "secret")
    assert not (tmp_path / "etc" / "smarthost.password").exists()
    assert "OK: relayd can log in" in out


def test_setup_smarthost_refuses_to_replace(upstream_factory, test_ca,
                                            tmp_path):
    up = upstream_factory(tls="starttls", users={USER: PASSWORD})
    conf = tmp_path / "relayd.conf"
    conf.write_text("# mine\n")
    rc, out, err = setup_smarthost(str(conf), up, test_ca)
    assert rc == 1, (rc, out, err)
    assert "exists; not replaced (--force replaces it)" in err
    assert conf.read_text() == "# mine\n"
    assert not (tmp_path / "smarthost.password").exists()
    assert up.connections() == []
    rc, out, err = setup_smarthost(str(conf), up, test_ca, "--force")
    assert rc == 0, (rc, out, err)
    assert conf_keys(str(conf))["delivery"] == "smarthost"
    # The replaced file is kept.
    assert (tmp_path / "relayd.conf.bak").read_text() == "# mine\n"
    assert "Kept the previous %s as %s.bak." % (conf, conf) in out
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]


def test_setup_smarthost_tls_name_mismatch(upstream_factory, test_ca,
                                           tmp_path):
    up = upstream_factory(tls="implicit", cert="wrong",
                          users={USER: PASSWORD})
    rc, out, err = setup_smarthost(str(tmp_path / "c.conf"), up, test_ca,
                                   "--check-only")
    assert rc == 1, (rc, out, err)
    assert re.search(r"^FAILED: TLS: the certificate of \S+ does not verify "
                     r"for the name smarthost\.test: ", out, re.M), out
    assert "--tls-ca FILE" in out
    assert not (tmp_path / "c.conf").exists()


def test_setup_smarthost_connection_refused(upstream_factory, test_ca,
                                            tmp_path):
    up = upstream_factory(tls="starttls", users={USER: PASSWORD})
    up.stop()
    rc, out, err = setup_smarthost(str(tmp_path / "c.conf"), up, test_ca,
                                   "--check-only")
    assert rc == 1, (rc, out, err)
    assert re.search(r"^FAILED: connect to %s:%d: Connection refused$" % (
        re.escape(up.addr), up.port), out, re.M), out


def test_setup_usage_errors(tmp_path):
    conf = str(tmp_path / "c.conf")
    for args, msg in ((["setup", "smarthost", "--config", conf],
                       "needs --host"),
                      (["setup", "smarthost", "--config", conf, "--host",
                        "no-port"], "--host"),
                      (["setup", "smarthost", "--config", conf, "--host",
                        "h:25", "--tls", "maybe"], "--tls"),
                      (["setup", "elsewhere"], "unknown mode")):
        rc, out, err = run([RELAYCTL] + args, stdin=b"")
        assert rc == 2, (args, rc, out, err)
        assert msg in err, (args, err)
    assert not os.path.exists(conf)


# ---- setup direct ------------------------------------------------------------

from test_direct import world  # noqa: E402,F401  (the dnsmasq + MX fixture)


def test_setup_direct_writes_a_config_that_delivers_signed(world, tmp_path):
    import dkim
    w = world(1)
    mx = w.start_mx(0)
    w.start_dns({"mx": [("pref.test", "mx1.pref.test", 10)],
                 "hosts": [("mx1.pref.test", w.host(0))]})
    conf = str(tmp_path / "etc" / "relayd.conf")
    rc, out, err = run([RELAYCTL, "setup", "direct", "--config", conf,
                        "--domain", "snd.test", "--hostname", "relay.snd.test",
                        "--selector", "sel1", "--ip", "192.0.2.7,2001:db8::7"],
                       env={"RELAYD_USER": "root"})
    assert rc == 0, (rc, out, err)
    key = str(tmp_path / "etc" / "dkim" / "snd.test.sel1.key")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o644
    keys = conf_keys(conf)
    assert keys["delivery"] == "direct"
    assert keys["hostname"] == "relay.snd.test"
    assert keys["dkim_key"] == "snd.test sel1 %s" % key
    assert keys["listen"] == "127.0.0.1:25/smtp, 127.0.0.1:587/submission"
    # Every record, in order, then the next command.
    pos = 0
    for p in (r"^Wrote %s \(the DKIM private key, mode 0600\)\.$" %
              re.escape(key),
              r"^Wrote %s\.$" % re.escape(conf),
              r"^1\. Reverse DNS \(PTR\)",
              r"^    192\.0\.2\.7  ->  relay\.snd\.test$",
              r"^    2001:db8::7  ->  relay\.snd\.test$",
              r"^    relay\.snd\.test\. IN A    192\.0\.2\.7$",
              r"^    relay\.snd\.test\. IN AAAA 2001:db8::7$",
              r'^    snd\.test\. IN TXT "v=spf1 ip4:192\.0\.2\.7 '
              r'ip6:2001:db8::7 -all"$',
              r'^    relay\.snd\.test\. IN TXT "v=spf1 a -all"$',
              r"^4\. DKIM \(RSA-2048; ",
              r'^      sel1\._domainkey\.snd\.test\. IN TXT \( "v=DKIM1; '
              r'k=rsa; p=[^"]*"( "[^"]*")* \)$',
              r"^      value: v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]+$",
              r'^    _dmarc\.snd\.test\. IN TXT "v=DMARC1; p=none; '
              r'rua=mailto:postmaster@snd\.test"$',
              r"^  relayctl -c %s check-dns snd\.test$" % re.escape(conf)):
        m = re.compile(p, re.M).search(out, pos)
        assert m, (p, out)
        pos = m.end()
    record = re.search(r"^      value: (v=DKIM1; k=rsa; p=\S+)$", out,
                       re.M).group(1)
    # The zone-file form holds the same value in <= 255-octet strings.
    zone = re.search(r"_domainkey\.snd\.test\. IN TXT \((.*)\)$", out,
                     re.M).group(1)
    parts = re.findall(r'"([^"]*)"', zone)
    assert len(parts) >= 2, zone       # RSA-2048's p= alone is ~392 octets
    assert all(len(x) <= 255 for x in parts) and "".join(parts) == record

    # Run relayd on it: listeners, spool, log and DNS for the test world.
    r = w.relayd_factory(start=False)
    r.conf_path = conf
    env = relayd_env(r)
    env.update({"RELAYD_DNS_SERVERS": w.dns.servers,
                "RELAYD_MX_ALLOW_PRIVATE": "yes",
                "RELAYD_MX_PORT": str(w.port)})
    rc, tout, terr = run([RELAYD, "-t", "-c", conf], env=env)
    assert rc == 0, (rc, tout, terr)
    r.start(env=env)
    content, mid = make_message("setup direct", frm="me@snd.test",
                                to="a@pref.test")
    qid = submit(r, "me@snd.test", ["a@pref.test"], content)
    wait_status(r, qid, "a@pref.test", "sent", fail_on=("bounced",))
    rec = mx.wait_messages(1)[0]
    assert rec["rcpt_tos"] == ["a@pref.test"]
    data = rec["data"]
    assert re.search(rb"^DKIM-Signature:.*\bd=snd\.test;", data,
                     re.M | re.S), data[:600]

    # An independent verifier (dkimpy), with the record setup printed.
    def dnsfunc(name, timeout=5):
        assert name in (b"sel1._domainkey.snd.test.",
                        "sel1._domainkey.snd.test."), name
        return record.encode()
    assert dkim.verify(data, dnsfunc=dnsfunc), "signature does not verify"
    assert not dkim.verify(data.replace(b"setup direct", b"setup dIrect"),
                           dnsfunc=dnsfunc)


def test_setup_direct_refuses_to_replace_and_checks_flags(tmp_path):
    conf = tmp_path / "relayd.conf"
    conf.write_text("# mine\n")
    rc, out, err = run([RELAYCTL, "setup", "direct", "--config", str(conf),
                        "--domain", "snd.test", "--ip", "192.0.2.7"])
    assert rc == 1 and "exists; not replaced" in err, (rc, out, err)
    assert conf.read_text() == "# mine\n"
    assert not (tmp_path / "dkim").exists()
    for args, msg in ((["--domain", "bad_domain!"], "--domain"),
                      (["--domain", "snd.test", "--ip", "not-an-ip"], "--ip"),
                      ([], "needs --domain")):
        rc, out, err = run([RELAYCTL, "setup", "direct", "--config",
                            str(tmp_path / "x.conf")] + args, stdin=b"")
        assert rc == 2 and msg in err, (args, rc, err)
    assert not (tmp_path / "x.conf").exists()

    # --force: the old configuration kept as .bak; run again, the key is
    # kept too (its record may be published already): the same record.
    def force():
        rc, out, err = run([RELAYCTL, "setup", "direct", "--config",
                            str(conf), "--domain", "snd.test", "--selector",
                            "k1", "--ip", "192.0.2.7", "--force"],
                           env={"RELAYD_USER": "root"})
        assert rc == 0, (rc, out, err)
        return out, re.search(r"^      value: (v=DKIM1; .*)$", out,
                              re.M).group(1)
    out1, rec1 = force()
    assert (tmp_path / "relayd.conf.bak").read_text() == "# mine\n"
    assert "Wrote %s (the DKIM private key" % (tmp_path / "dkim" /
                                               "snd.test.k1.key") in out1
    out2, rec2 = force()
    assert "Keeping the existing DKIM key %s." % (tmp_path / "dkim" /
                                                  "snd.test.k1.key") in out2
    assert rec2 == rec1
    assert conf_keys(str(tmp_path / "relayd.conf.bak"))["delivery"] == "direct"


# ---- on a terminal -------------------------------------------------------------

def run_on_tty(args, answers, env=None, timeout=60):
    """Runs args with stdin and stderr on a pseudo-terminal; each answer is
    typed once its prompt (a regex) has appeared. Returns (rc, stdout,
    what the terminal showed). Bounded: each read waits at most timeout."""
    import select
    import time
    master, slave = os.openpty()
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen(args, stdin=slave, stderr=slave,
                         stdout=subprocess.PIPE, env=e, close_fds=True)
    os.close(slave)
    shown = b""
    try:
        for prompt, answer in answers:
            deadline = time.monotonic() + timeout
            while not re.search(prompt.encode(), shown):
                left = deadline - time.monotonic()
                assert left > 0, "no prompt %r; terminal: %r" % (prompt, shown)
                r, _, _ = select.select([master], [], [], left)
                if r:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:
                        chunk = b""
                    assert chunk, "terminal closed; shown %r" % shown
                    shown += chunk
            os.write(master, answer.encode() + b"\n")
            shown += b"<typed>"
        out, _ = p.communicate(timeout=timeout)
        # What is left on the terminal after the process ended.
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        os.close(master)
    return p.returncode, out.decode(), shown.decode("utf-8", "replace")


def test_setup_asks_on_a_terminal(upstream_factory, test_ca, tmp_path):
    # smarthost: the password is read without echo.
    up = upstream_factory(tls="starttls", users={USER: PASSWORD})
    conf = str(tmp_path / "sh.conf")
    rc, out, shown = run_on_tty(
        [RELAYCTL, "setup", "smarthost", "--config", conf, "--host",
         up.smarthost, "--tls", "starttls", "--tls-ca", test_ca.ca_cert,
         "--tls-name", TLS_NAME, "--hostname", "relay.test", "--user", USER],
        [(r"Password for %s: " % USER, PASSWORD)],
        env={"RELAYD_USER": "root"})
    assert rc == 0, (rc, out, shown)
    assert PASSWORD not in shown and PASSWORD not in out, shown
    assert "AUTH as %s: accepted" % USER in out
    with open(str(tmp_path / "smarthost.password")) as f:
        assert f.read() == PASSWORD + "\n"

    # direct: the domain and the host name are asked for; an empty answer
    # takes the default shown.
    conf = str(tmp_path / "d" / "relayd.conf")
    rc, out, shown = run_on_tty(
        [RELAYCTL, "setup", "direct", "--config", conf, "--ip", "192.0.2.9",
         "--selector", "tty"],
        [(r"Mail domain [^:]*: ", "asked.test"),
         (r"Host name [^\]]*\]: ", "mx.asked.test")],
        env={"RELAYD_USER": "root"})
    assert rc == 0, (rc, out, shown)
    keys = conf_keys(conf)
    assert keys["hostname"] == "mx.asked.test"
    assert keys["dkim_key"].startswith("asked.test tty /")
    assert "    192.0.2.9  ->  mx.asked.test" in out
