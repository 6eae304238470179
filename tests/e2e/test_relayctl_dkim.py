"""tests/e2e/test_relayctl_dkim.py - relayctl dkim keygen, show and rotate
against a real DNS server: keygen's zone-file line pasted into dnsmasq's
test zone (an RSA-2048 record is longer than one 255-octet TXT string)
and `dkim show` finding it served; a different key, a revoked one and
none in DNS; dkimpy (an independent implementation) signing with the
generated private key and verifying against the record dnsmasq serves;
keygen's file (0600, O_EXCL: never over a file or through a link, owned
by relayd's user when run as root); bad options; relayd -t accepting the
printed dkim_key lines; and the rotation walk (new key, --check before
and after DNS has it, the switch, --retire)."""
import base64
import json
import os
import re
import stat
import subprocess

import dkim
import dns.message
import dns.query
import pytest

from conftest import RELAYCTL, RELAYD
from dnsutil import Dnsmasq

DOMAIN = "mail.test"
ZONE_RE = re.compile(r'^\s*(\S+)\. IN TXT \( ((?:"[^"]*" ?)+)\)$', re.M)
LINE_RE = re.compile(r"^\s*dkim_key = (.+)$", re.M)


def _ctl(conf_path, *args):
    e = dict(os.environ)
    e.pop("RELAYD_CONFIG", None)
    return subprocess.run([RELAYCTL, "-c", conf_path] + list(args),
                          capture_output=True, timeout=60, env=e,
                          stdin=subprocess.DEVNULL)


def _ok(res):
    assert res.returncode == 0, (res.returncode, res.stdout.decode(),
                                 res.stderr.decode())
    return res.stdout.decode()


def _conf(tmp_path, lines, dns=None):
    """A relayd.conf for relayctl: dkim_key lines and the test DNS."""
    path = str(tmp_path / "relayd.conf")
    with open(path, "w") as f:
        f.write("spool_dir = %s\n" % (tmp_path / "spool"))
        f.write("hostname = relay.test\n")
        if os.geteuid() == 0:
            f.write("user = root\n")
        # Port 9 on loopback: nothing answers, a lookup would fail.
        f.write("dns_servers = %s\n" % (dns.servers if dns else
                                         "127.0.0.1:9"))
        for line in lines:
            f.write("dkim_key = %s\n" % line)
    return path


def _keygen(conf_path, keydir, domain, selector, *opts):
    """Runs keygen; returns (dkim_key value, zone name, [strings], out)."""
    out = _ok(_ctl(conf_path, "dkim", "keygen", domain, selector,
                   "--dir", str(keydir), *opts))
    line = LINE_RE.findall(out)
    zone = ZONE_RE.findall(out)
    assert len(line) == 1 and len(zone) == 1, out
    strings = re.findall(r'"([^"]*)"', zone[0][1])
    return line[0], zone[0][0], strings, out


def _txt(server, name):
    """The TXT records dnsmasq serves at name, each a list of strings."""
    q = dns.message.make_query(name, "TXT")
    host, port = server.servers.split(":")
    r = dns.query.udp(q, host, port=int(port), timeout=5)
    return [[s for s in rd.strings] for rrset in r.answer for rd in rrset]


def _show_json(conf_path, rc=0):
    res = _ctl(conf_path, "dkim", "show", "--json")
    assert res.returncode == rc, (res.returncode, res.stdout, res.stderr)
    return json.loads(res.stdout)


def test_keygen_pasted_into_the_zone_matches(tmp_path):
    keys = tmp_path / "keys"
    conf0 = _conf(tmp_path, [])
    rsa_line, rsa_name, rsa_strings, out = _keygen(conf0, keys, DOMAIN, "s1")
    ed_line, ed_name, ed_strings, _ = _keygen(conf0, keys, DOMAIN, "e1",
                                              "--type", "ed25519")
    assert rsa_name == "s1._domainkey." + DOMAIN
    assert ed_name == "e1._domainkey." + DOMAIN
    # RSA-2048: the record needs two strings of at most 255 octets; the
    # web-panel value is the same text in one piece.
    assert len(rsa_strings) == 2, rsa_strings
    assert all(len(s) <= 255 for s in rsa_strings)
    assert len(rsa_strings[0]) == 255
    value = re.search(r"^\s*value: (v=DKIM1; k=rsa; p=\S+)$", out, re.M)
    assert value and value.group(1) == "".join(rsa_strings), out
    assert len(ed_strings) == 1
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=",
                        ed_strings[0])

    zone = {"txt": [(rsa_name, rsa_strings), (ed_name, ed_strings)]}
    with Dnsmasq(str(tmp_path), zone) as server:
        # What dnsmasq serves is the strings as pasted.
        assert _txt(server, rsa_name) == [[s.encode() for s in rsa_strings]]
        conf = _conf(tmp_path, [rsa_line, ed_line], dns=server)
        text = _ok(_ctl(conf, "dkim", "show"))
        assert text.count("dns:    ok") == 2, text
        assert "rsa 2048 bits, active (signs)" in text
        assert "ed25519 256 bits, active (signs)" in text
        keys_json = _show_json(conf)
        assert [(k["selector"], k["alg"], k["bits"], k["active"], k["dns"])
                for k in keys_json] == [("s1", "rsa", 2048, True, "ok"),
                                        ("e1", "ed25519", 256, True, "ok")]
        assert keys_json[0]["record"] == "".join(rsa_strings)
        assert server.queries(rsa_name, "TXT") >= 2

        # dkimpy signs with the generated keys and verifies against the
        # records served (RSA: the PKCS#8 PEM; Ed25519: dkimpy takes the
        # 32-byte seed, the tail of the PKCS#8 DER).
        def dnsfunc(name, timeout=5):
            recs = _txt(server, name.decode().rstrip("."))
            return b"".join(recs[0]) if recs else b""

        msg = (b"From: a@" + DOMAIN.encode() + b"\r\nTo: b@example.test\r\n"
               b"Subject: keygen\r\n\r\nbody\r\n")
        with open(rsa_line.split()[2], "rb") as f:
            rsa_pem = f.read()
        sig = dkim.sign(msg, b"s1", DOMAIN.encode(), rsa_pem,
                        include_headers=[b"from", b"to", b"subject"])
        assert dkim.verify(sig + msg, dnsfunc=dnsfunc)
        assert not dkim.verify(sig + msg.replace(b"body", b"bodY"),
                               dnsfunc=dnsfunc)
        with open(ed_line.split()[2], "rb") as f:
            der = base64.b64decode(b"".join(f.read().splitlines()[1:-1]))
        seed = base64.b64encode(der[-32:])
        sig = dkim.sign(msg, b"e1", DOMAIN.encode(), seed,
                        signature_algorithm=b"ed25519-sha256",
                        include_headers=[b"from", b"to", b"subject"])
        assert dkim.verify(sig + msg, dnsfunc=dnsfunc)

    # relayd itself accepts the lines keygen printed.
    res = subprocess.run([RELAYD, "-t", "-c", conf], capture_output=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr


def test_show_mismatch_missing_revoked(tmp_path):
    keys = tmp_path / "keys"
    conf0 = _conf(tmp_path, [])
    a_line, a_name, _, _ = _keygen(conf0, keys, DOMAIN, "a")
    _, _, other_strings, _ = _keygen(conf0, keys, "other.test", "a")
    b_line, b_name, _, _ = _keygen(conf0, keys, DOMAIN, "b", "--bits", "1024")
    c_line, _, _, _ = _keygen(conf0, keys, DOMAIN, "c", "--type", "ed25519")
    zone = {"txt": [(a_name, other_strings),
                    (b_name, ["v=DKIM1; k=rsa; p="])]}
    with Dnsmasq(str(tmp_path), zone) as server:
        conf = _conf(tmp_path, [a_line, b_line, c_line], dns=server)
        keys_json = _show_json(conf, rc=1)
        got = {k["selector"]: k for k in keys_json}
        assert got["a"]["dns"] == "mismatch"
        assert got["a"]["dns_detail"] == "p= is another RSA key (2048 bits)"
        assert not got["a"]["active"]          # b is the later RSA line
        assert got["b"]["dns"] == "mismatch"
        assert "revoked" in got["b"]["dns_detail"]
        assert got["b"]["weak"] and got["b"]["bits"] == 1024
        assert got["b"]["active"]
        assert got["c"]["dns"] == "missing"
        text = _ctl(conf, "dkim", "show")
        assert text.returncode == 1
        out = text.stdout.decode()
        assert "rsa 1024 bits (weak: use 2048)" in out
        assert "inactive (a later line for this domain and algorithm signs)" \
            in out
        # What to publish instead, for each key DNS does not serve.
        assert out.count("publish at ") == 3, out


def test_show_key_that_does_not_load(tmp_path):
    keys = tmp_path / "keys"
    conf0 = _conf(tmp_path, [])
    line, _, _, _ = _keygen(conf0, keys, DOMAIN, "s1", "--type", "ed25519")
    os.chmod(line.split()[2], 0o644)
    conf = _conf(tmp_path, [line])
    k = _show_json(conf, rc=1)
    assert len(k) == 1 and "mode 0644" in k[0]["error"], k
    assert "does not load" in _ctl(conf, "dkim", "show").stdout.decode()


def test_keygen_file_and_refusals(tmp_path):
    keys = tmp_path / "keys"
    conf = _conf(tmp_path, [])
    line, _, _, out = _keygen(conf, keys, "Mixed.Case.Test", "sel")
    path = str(keys / "mixed.case.test.sel.key")
    assert line == "mixed.case.test sel " + path
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700   # made by keygen
    with open(path, "rb") as f:
        before = f.read()
    assert before.startswith(b"-----BEGIN PRIVATE KEY-----\n")

    # Never over an existing key, whatever the type asked.
    res = _ctl(conf, "dkim", "keygen", "mixed.case.test", "sel",
               "--type", "ed25519", "--dir", str(keys))
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr.decode() == (
        "relayctl: %s exists; it was left alone (choose another selector, "
        "or remove the file if it is unused)\n" % path)
    with open(path, "rb") as f:
        assert f.read() == before

    # Nor through a symbolic link planted at the name.
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    os.symlink(str(victim), str(keys / "mixed.case.test.lnk.key"))
    res = _ctl(conf, "dkim", "keygen", "mixed.case.test", "lnk",
               "--dir", str(keys))
    assert res.returncode == 1
    assert "exists; it was left alone" in res.stderr.decode()
    assert victim.read_text() == "keep me\n"

    # A directory others may write to is refused.
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    res = _ctl(conf, "dkim", "keygen", DOMAIN, "s1", "--dir", str(open_dir))
    assert res.returncode == 1
    assert "writable by every user (mode 0777)" in res.stderr.decode()
    assert os.listdir(open_dir) == []


@pytest.mark.parametrize("args,message", [
    (["--bits", "768"], "--bits is 1024 to 4096 for RSA"),
    (["--bits", "8192"], "--bits is 1024 to 4096 for RSA"),
    (["--bits", "2048x"], "--bits is 1024 to 4096 for RSA"),
    (["--type", "dsa"], "--type is rsa or ed25519, not 'dsa'"),
    (["--type", "ed25519", "--bits", "2048"], "--bits is for RSA keys"),
    (["--selector", "x"], "'dkim keygen' takes --type, --bits and --dir"),
])
def test_keygen_bad_options(tmp_path, args, message):
    conf = _conf(tmp_path, [])
    res = _ctl(conf, "dkim", "keygen", DOMAIN, "s1", "--dir",
               str(tmp_path / "keys"), *args)
    assert res.returncode == 2, res
    assert res.stderr.decode().startswith("relayctl: " + message)
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize("domain,selector,message", [
    ("bad_domain.test", "s1", "the domain 'bad_domain.test' may hold only"),
    ("mail.test", "s_1", "the selector 's_1' may hold only"),
    ("mail..test", "s1", "the domain 'mail..test' has an empty label"),
])
def test_keygen_bad_names(tmp_path, domain, selector, message):
    conf = _conf(tmp_path, [])
    res = _ctl(conf, "dkim", "keygen", domain, selector, "--dir",
               str(tmp_path / "keys"))
    assert res.returncode == 1
    assert res.stderr.decode().startswith("relayctl: " + message), res.stderr
    assert not (tmp_path / "keys").exists()


def test_keygen_as_root_gives_the_key_to_relayds_user(tmp_path):
    from privutil import account, need_root
    need_root()
    pw = account()
    conf = str(tmp_path / "relayd.conf")
    with open(conf, "w") as f:
        f.write("spool_dir = %s\nuser = %s\n" % (tmp_path / "spool",
                                                 pw.pw_name))
    keys = tmp_path / "keys"
    out = _ok(_ctl(conf, "dkim", "keygen", DOMAIN, "s1", "--type", "ed25519",
                   "--dir", str(keys)))
    assert "owner %s" % pw.pw_name in out
    for p in (keys, keys / ("%s.s1.key" % DOMAIN)):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid), p
    # An account that does not exist: refused, nothing written.
    with open(conf, "w") as f:
        f.write("spool_dir = %s\nuser = no-such-relayd-user\n"
                % (tmp_path / "spool"))
    res = _ctl(conf, "dkim", "keygen", DOMAIN, "s2", "--dir", str(keys))
    assert res.returncode == 1
    assert "has no account here" in res.stderr.decode()
    assert not (keys / ("%s.s2.key" % DOMAIN)).exists()


def test_rotate_walk(tmp_path):
    keys = tmp_path / "keys"
    conf0 = _conf(tmp_path, [])
    old_line, old_name, old_strings, _ = _keygen(conf0, keys, DOMAIN, "s1")
    conf = _conf(tmp_path, [old_line])

    # Step 1: a dated selector, in the current key's directory, RSA like
    # the current key.
    out = _ok(_ctl(conf, "dkim", "rotate", DOMAIN))
    sel = re.search(r"--check --selector (s\d{8})$", out, re.M)
    assert sel, out
    sel = sel.group(1)
    new_path = str(keys / ("%s.%s.key" % (DOMAIN, sel)))
    assert os.path.exists(new_path)
    assert "(rsa, 2048 bits, mode 0600" in out
    new_name, new_strings = ZONE_RE.findall(out)[0]
    new_strings = re.findall(r'"([^"]*)"', new_strings)
    assert new_name == "%s._domainkey.%s" % (sel, DOMAIN)
    assert "do not change relayd.conf yet" in out
    # Same day again: the file exists, refused.
    res = _ctl(conf, "dkim", "rotate", DOMAIN)
    assert res.returncode == 1 and "exists" in res.stderr.decode()

    # Step 2 before DNS has the record: not yet, exit 1.
    zone = {"txt": [(old_name, old_strings)]}
    with Dnsmasq(str(tmp_path), zone) as server:
        conf = _conf(tmp_path, [old_line], dns=server)
        res = _ctl(conf, "dkim", "rotate", DOMAIN, "--check", "--selector",
                   sel)
        assert res.returncode == 1
        assert "Step 2 of 3: not yet" in res.stdout.decode()
        assert "dns: missing" not in res.stdout.decode()
        assert "missing" in res.stdout.decode()

    zone["txt"].append((new_name, new_strings))
    with Dnsmasq(str(tmp_path), zone) as server:
        conf = _conf(tmp_path, [old_line], dns=server)
        out = _ok(_ctl(conf, "dkim", "rotate", DOMAIN, "--check",
                       "--selector", sel))
        assert "Step 2 of 3: DNS serves the new key" in out
        new_line = "%s %s %s" % (DOMAIN, sel, new_path)
        assert "   dkim_key = %s\n" % new_line in out
        assert "--retire s1" in out
        # The operator adds the line after the old one: the new key signs.
        conf = _conf(tmp_path, [old_line, new_line], dns=server)
        k = _show_json(conf)
        assert [(x["selector"], x["active"], x["dns"]) for x in k] == \
            [("s1", False, "ok"), (sel, True, "ok")]

    # Step 3: the active key cannot be retired; the old one can.
    res = _ctl(conf, "dkim", "rotate", DOMAIN, "--retire", sel)
    assert res.returncode == 1
    assert "is the active key" in res.stderr.decode()
    out = _ok(_ctl(conf, "dkim", "rotate", DOMAIN, "--retire", "s1"))
    assert "remove this line from relayd.conf and reload" in out
    assert "   dkim_key = %s\n" % old_line in out
    # max_queue_lifetime defaults to 5 days: wait 5 + 2.
    assert "Not before 7 days after that reload" in out
    assert "max_queue_lifetime (5 days)" in out
    res = _ctl(conf, "dkim", "rotate", DOMAIN, "--retire", "nope")
    assert res.returncode == 1
    assert "no dkim_key line with selector 'nope'" in res.stderr.decode()


def test_rotate_usage(tmp_path):
    conf = _conf(tmp_path, [])
    res = _ctl(conf, "dkim", "rotate", DOMAIN, "--check")
    assert res.returncode == 2
    assert "--check needs --selector S" in res.stderr.decode()
    res = _ctl(conf, "dkim", "rotate", DOMAIN, "--check", "--retire", "x")
    assert res.returncode == 2
    res = _ctl(conf, "dkim", "frobnicate")
    assert res.returncode == 2
    assert "unknown dkim subcommand 'frobnicate'" in res.stderr.decode()
