"""tests/e2e/test_relayctl.py - relayctl list/show/cat (text and --json)
beside a running relayd and after it stopped; its errors: unknown and
malformed ids, a missing spool, usage errors; the empty queue."""
import json
import os
import re
import subprocess

from conftest import RELAYCTL, smtp_connect


def _queue(r, sender, rcpts, content):
    with smtp_connect(r) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<%s>" % sender).pair == (250, "2.1.0")
        for x in rcpts:
            assert c.cmd("RCPT TO:<%s>" % x).pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(content + b".\r\n")
        return c.reply().queued_id()


def _snapshot(r, ids):
    out = {"list": r.relayctl("list").stdout,
           "list_json": json.loads(r.relayctl("list", "--json").stdout)}
    for q in ids:
        out["show " + q] = r.relayctl("show", q).stdout
        out["show_json " + q] = json.loads(r.relayctl("--json", "show", q).stdout)
        out["cat " + q] = r.relayctl("cat", q).stdout
    return out


def _strip_ages(snap):
    """Ages move while the test runs; everything else must not."""
    s = dict(snap)
    s["list"] = re.sub(rb"^(\w{16}) +\S+ ", rb"\1 AGE ", s["list"], flags=re.M)
    for k in list(s):
        if k.startswith("show "):
            s[k] = re.sub(rb"\(.* ago\)", b"(AGE)", s[k])
        if isinstance(s[k], dict):
            s[k] = json.loads(re.sub(r'"age_seconds": ?\d+', '"age_seconds":0',
                                     json.dumps(s[k])))
    return s


def test_list_show_cat_running_and_stopped(relayd):
    c1 = b"Subject: one\r\nX-Note: tab\there\r\n\r\nfirst body\r\n"
    c2 = b"Subject: two\r\n\r\n" + b"z" * 5000 + b"\r\n"
    q1 = _queue(relayd, "s1@client.test", ["a@dest.test"], c1)
    q2 = _queue(relayd, "s2@client.test",
                ["b@dest.test", "c@dest.test", "d@dest.test"], c2)
    files = relayd.stored()

    running = _snapshot(relayd, [q1, q2])
    lines = running["list"].decode().splitlines()
    assert re.match(r"^ID +AGE +SIZE +STATE +SENDER +RECIPIENTS$", lines[0])
    assert re.match(r"^%s +\S+ +%d active +<s1@client.test> +<a@dest.test>$"
                    % (q1, len(files[q1])), lines[1]), lines[1]
    # Under each message, a line per recipient not yet delivered.
    assert re.match(r"^  pending +0 tries +next now +<a@dest.test>$", lines[2]), \
        lines[2]
    assert re.match(r"^%s +\S+ +%d active +<s2@client.test> +<b@dest.test> "
                    r"\(\+2 more\)$" % (q2, len(files[q2])), lines[3]), lines[3]
    for i, x in enumerate("bcd"):
        assert re.match(r"^  pending +0 tries +next now +<%s@dest.test>$" % x,
                        lines[4 + i]), lines[4 + i]
    kib = (len(files[q1]) + len(files[q2]) + 1023) // 1024
    assert lines[7] == "2 messages, %d KiB" % kib
    assert len(lines) == 8
    lj = running["list_json"]
    assert lj["count"] == 2
    assert lj["total_size"] == len(files[q1]) + len(files[q2])
    assert [m["id"] for m in lj["messages"]] == [q1, q2]  # oldest first

    show = running["show " + q2].decode()
    assert re.search(r"^recipients:\s+3$", show, re.M), show
    assert "\nheaders:\nReceived: by relay.test (relayd)" in show, show
    assert "Subject: two" in show and "zzzz" not in show
    sj = running["show_json " + q1]
    assert "X-Note: tab\there\r\n" in sj["headers"]
    assert sj["headers_truncated"] is False
    assert sj["sender"] == "s1@client.test" and sj["state"] == "active"
    assert running["cat " + q1] == files[q1]
    assert running["cat " + q2] == files[q2]

    # relayctl reads the spool, not the daemon: the same after a stop.
    relayd.stop()
    stopped = _snapshot(relayd, [q1, q2])
    assert _strip_ages(stopped) == _strip_ages(running)
    # Ids are case-insensitive.
    assert relayd.relayctl("cat", q1.lower()).stdout == files[q1]


def test_errors_unknown_malformed_ids(relayd):
    q = _queue(relayd, "s@client.test", ["a@dest.test"], b"Subject: x\r\n\r\nx\r\n")
    unknown = "0" * 16 if q != "0" * 16 else "1" * 16
    for cmd in ("show", "cat"):
        r = relayd.relayctl(cmd, unknown, check=False)
        assert r.returncode == 1
        assert r.stdout == b""
        assert r.stderr.decode() == "relayctl: no message with id %s\n" % unknown
    for bad in ("xyz", q + "0", q[:-1] + "U", "../" + q[3:], "-"):
        for cmd in ("show", "cat"):
            r = relayd.relayctl(cmd, bad, check=False)
            assert r.returncode == 1, (cmd, bad, r)
            assert r.stdout == b""
            assert r.stderr.decode() == \
                "relayctl: '%s' is not a queue id\n" % bad, r.stderr


def test_missing_spool(relayd_factory, tmp_path):
    r = relayd_factory(start=False, spool=str(tmp_path / "no-such-spool"))
    for args in (("list",), ("list", "--json"), ("show", "0" * 16),
                 ("cat", "0" * 16)):
        res = r.relayctl(*args, check=False)
        assert res.returncode == 1, (args, res)
        assert res.stdout == b""
        err = res.stderr.decode()
        assert err.startswith("relayctl: no spool at %s " % r.spool), err
        assert err.count("\n") == 1


def test_empty_queue(relayd):
    r = relayd.relayctl("list")
    assert r.stdout == b"Mail queue is empty\n" and r.stderr == b""
    j = json.loads(relayd.relayctl("list", "--json").stdout)
    assert j == {"messages": [], "count": 0, "total_size": 0}


def test_usage_and_config_discovery(relayd):
    def run(*args, env=None):
        e = dict(os.environ)
        e.pop("RELAYD_CONFIG", None)
        e.update(env or {})
        return subprocess.run([RELAYCTL] + list(args), capture_output=True,
                              timeout=30, env=e, stdin=subprocess.DEVNULL)
    r = run()
    assert r.returncode == 2 and b"usage: relayctl" in r.stderr
    r = run("-c", relayd.conf_path, "frobnicate")
    assert r.returncode == 2 and b"unknown command 'frobnicate'" in r.stderr
    r = run("-c", relayd.conf_path, "cat", "0" * 16, "--json")
    assert r.returncode == 2 and b"'cat' has no --json output" in r.stderr
    r = run("-c", relayd.conf_path, "show")
    assert r.returncode == 2 and b"missing argument" in r.stderr
    r = run("help")
    assert r.returncode == 0 and b"list [--json]" in r.stdout
    # RELAYD_CONFIG names the file; RELAYD_SPOOL_DIR overrides its spool.
    r = run("list", env={"RELAYD_CONFIG": relayd.conf_path})
    assert r.returncode == 0 and r.stdout == b"Mail queue is empty\n", r
    r = run("-c", relayd.conf_path, "list",
            env={"RELAYD_SPOOL_DIR": relayd.spool + "-elsewhere"})
    assert r.returncode == 1 and b"no spool at" in r.stderr


def test_show_truncates_huge_header_section(relayd):
    # 100 KiB of header lines: show prints the first 64 KiB, cut at a line
    # end, and says so; cat still gives everything.
    hdr = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"f" * 80)
                   for i in range(1100))
    q = _queue(relayd, "s@client.test", ["a@dest.test"],
               b"Subject: big head\r\n" + hdr + b"\r\nbody\r\n")
    stored = relayd.stored()[q]
    j = json.loads(relayd.relayctl("show", q, "--json").stdout)
    assert j["headers_truncated"] is True
    h = j["headers"].encode()
    assert len(h) <= 64 * 1024 and h.endswith(b"\r\n")
    assert stored.startswith(h)
    assert len(h) > 60 * 1024
    text = relayd.relayctl("show", q).stdout.decode()
    assert text.rstrip("\n").endswith("[header section truncated at 64 KiB]")
    assert relayd.relayctl("cat", q).stdout == stored
    # A short header section is not truncated and stops at the empty line.
    q2 = _queue(relayd, "s@client.test", ["a@dest.test"],
                b"Subject: small\r\n\r\nbody\r\nNot-A-Header: x\r\n")
    j = json.loads(relayd.relayctl("show", q2, "--json").stdout)
    assert j["headers_truncated"] is False
    assert j["headers"].endswith("Subject: small\r\nMessage-ID: <%s@relay.test>"
                                 "\r\nDate: %s\r\n" % (q2, j["headers"].split(
                                     "Date: ")[1].split("\r\n")[0]))
    assert "Not-A-Header" not in j["headers"]


def test_peer_text_is_made_safe(relayd):
    """Addresses and headers come from the client: the text output never
    passes terminal controls through, and JSON round-trips them."""
    sender = '"j\\"o\\\\e x"@client.test'
    with smtp_connect(relayd) as c:
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<%s>" % sender).pair == (250, "2.1.0")
        assert c.cmd("RCPT TO:<a@dest.test>").pair == (250, "2.1.5")
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: \x1b[31mred\x07\r\nX-Utf: caf\xc3\xa9\r\n\r\nb\r\n.\r\n")
        q = c.reply().queued_id()
    for args in (("list",), ("show", q)):
        out = relayd.relayctl(*args).stdout
        assert re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", out) is None, out
    show = relayd.relayctl("show", q).stdout.decode()
    assert "Subject: \\x1b[31mred\\x07" in show, show
    assert "X-Utf: caf\u00e9" in show
    j = json.loads(relayd.relayctl("show", q, "--json").stdout)
    assert j["sender"] == sender
    assert "Subject: \x1b[31mred\x07\r\n" in j["headers"]
    assert "X-Utf: caf\u00e9\r\n" in j["headers"]
