"""tests/e2e/test_relayctl_user.py - relayctl user add/list/test/passwd/
disable/enable/del on the credentials file named by relayd's config
(credentials_file) or RELAYD_CREDENTIALS_FILE: piped and generated
passwords, text and JSON listings that never show a hash, the file's mode
and comments, concurrent edits under the lock, and the one-line errors
(duplicate, unknown user, bad name, bad options, unreadable file)."""
import json
import os
import re
import stat
import subprocess

from conftest import RELAYCTL, RELAYD

GEN_RE = re.compile(r"^[A-Za-z0-9_-]{24}$")


def _ctl(r, *args, input=None, env=None):
    """relayctl -c <r's config> ARGS; input (str) is piped to stdin."""
    e = dict(os.environ)
    e.pop("RELAYD_CREDENTIALS_FILE", None)
    e.pop("RELAYD_CONFIG", None)
    e.update(env or {})
    kw = {"input": input.encode()} if input is not None else \
         {"stdin": subprocess.DEVNULL}
    return subprocess.run([RELAYCTL, "-c", r.conf_path] + list(args),
                          capture_output=True, timeout=60, env=e, **kw)


def _ok(res):
    assert res.returncode == 0, (res.returncode, res.stderr.decode())
    return res.stdout.decode()


def _fails(res, message):
    """Exit 1, nothing on stdout, exactly one line on stderr."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == b""
    assert res.stderr.decode() == "relayctl: %s\n" % message, res.stderr


def _no_hash(text):
    assert "$scrypt$" not in text and "$pbkdf2" not in text, text


def _setup(relayd_factory, tmp_path):
    creds = str(tmp_path / "credentials")
    r = relayd_factory(start=False, credentials_file=creds)
    return r, creds


def test_user_lifecycle(relayd_factory, tmp_path):
    r, creds = _setup(relayd_factory, tmp_path)
    # relayd accepts the key too
    res = subprocess.run([RELAYD, "-t", "-c", r.conf_path], timeout=30,
                         capture_output=True, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    _fails(_ctl(r, "user", "list"),
           "cannot read %s: No such file or directory" % creds)

    # add with a piped password (scripts): nothing on stdout; what was
    # done is said on stderr
    res = _ctl(r, "user", "add", "alice", "--owner", "acme",
               "--from-domains", "example.com,boss@other.org",
               "--to-domains=dest.example", "--hourly", "100",
               "--daily", "1000", input="s3cret pass\n")
    out = _ok(res)
    assert out == ""
    assert res.stderr.decode() == ("relayctl: user alice added to %s (relayd "
                                   "reads it again within a second)\n" %
                                   creds), res.stderr
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
    with open(creds) as f:
        text = f.read()
    assert re.match(r"^alice:\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9+/]{22}\$"
                    r"[A-Za-z0-9+/]{43}:acme:from=example\.com\|"
                    r"boss@other\.org,to=dest\.example,hourly=100,"
                    r"daily=1000\n$", text), text
    assert "s3cret" not in text

    # --generate: the password once on stdout, and it works
    gen = _ok(_ctl(r, "user", "add", "bob", "--generate"))
    assert gen.endswith("\n") and GEN_RE.match(gen[:-1]), gen
    gen = gen[:-1]
    with open(creds) as f:
        assert gen not in f.read()
    assert _ok(_ctl(r, "user", "test", "bob", input=gen + "\n")) == "ok\n"
    # a line without its newline and with a CR (CRLF input) is the same
    assert _ok(_ctl(r, "user", "test", "bob", input=gen)) == "ok\n"
    assert _ok(_ctl(r, "user", "test", "bob", input=gen + "\r\n")) == "ok\n"

    # list: text and JSON, never a hash
    lst = _ok(_ctl(r, "user", "list"))
    _no_hash(lst)
    lines = lst.splitlines()
    assert re.match(r"^NAME +OWNER +STATE +HOURLY +DAILY +FROM +TO$", lines[0])
    assert re.match(r"^alice +acme +enabled +100 +1000 +"
                    r"example\.com,boss@other\.org +dest\.example$", lines[1])
    assert re.match(r"^bob +- +enabled +- +- +- +-$", lines[2]), lines[2]
    assert lines[3:] == ["2 users"]
    raw = _ok(_ctl(r, "user", "list", "--json"))
    _no_hash(raw)
    j = json.loads(raw)
    assert j == {"count": 2, "users": [
        {"name": "alice", "owner": "acme",
         "from": ["example.com", "boss@other.org"], "to": ["dest.example"],
         "hourly": 100, "daily": 1000, "disabled": False},
        {"name": "bob", "owner": None, "from": [], "to": [],
         "hourly": None, "daily": None, "disabled": False}]}
    # --json also as a global option
    assert json.loads(_ok(_ctl(r, "--json", "user", "list"))) == j

    # test: right -> 0 "ok", wrong -> 1; names are case-insensitive
    assert _ok(_ctl(r, "user", "test", "alice", input="s3cret pass\n")) == "ok\n"
    assert _ok(_ctl(r, "user", "test", "ALICE", input="s3cret pass\n")) == "ok\n"
    _fails(_ctl(r, "user", "test", "alice", input="s3cret pasS\n"),
           "wrong password for user 'alice'")
    _fails(_ctl(r, "user", "test", "alice", input="s3cret pass \n"),
           "wrong password for user 'alice'")

    # passwd: the old password stops working, the options stay
    before = open(creds).read()
    _ok(_ctl(r, "user", "passwd", "alice", input="n3w pass\n"))
    after = open(creds).read()
    assert after != before
    assert after.split("\n")[0].split(":")[2:] == \
        before.split("\n")[0].split(":")[2:]
    assert _ok(_ctl(r, "user", "test", "alice", input="n3w pass\n")) == "ok\n"
    _fails(_ctl(r, "user", "test", "alice", input="s3cret pass\n"),
           "wrong password for user 'alice'")
    gen2 = _ok(_ctl(r, "user", "passwd", "bob", "--generate"))[:-1]
    assert GEN_RE.match(gen2) and gen2 != gen
    assert _ok(_ctl(r, "user", "test", "bob", input=gen2)) == "ok\n"

    # disable / enable
    _ok(_ctl(r, "user", "disable", "alice"))
    assert "alice:" in open(creds).read()
    assert ",disabled=1\n" in open(creds).read()
    assert re.search(r"^alice +acme +disabled ", _ok(_ctl(r, "user", "list")),
                     re.M)
    j = json.loads(_ok(_ctl(r, "user", "list", "--json")))
    assert [u["disabled"] for u in j["users"]] == [True, False]
    _fails(_ctl(r, "user", "test", "alice", input="n3w pass\n"),
           "the password is right, but user 'alice' is disabled")
    _fails(_ctl(r, "user", "test", "alice", input="wrong\n"),
           "wrong password for user 'alice'")
    _ok(_ctl(r, "user", "disable", "alice"))     # idempotent
    _ok(_ctl(r, "user", "enable", "alice"))
    assert "disabled" not in open(creds).read()
    assert _ok(_ctl(r, "user", "test", "alice", input="n3w pass\n")) == "ok\n"

    # del
    _ok(_ctl(r, "user", "del", "alice"))
    _fails(_ctl(r, "user", "test", "alice", input="n3w pass\n"),
           "unknown user 'alice'")
    j = json.loads(_ok(_ctl(r, "user", "list", "--json")))
    assert [u["name"] for u in j["users"]] == ["bob"] and j["count"] == 1
    _ok(_ctl(r, "user", "del", "bob"))
    assert _ok(_ctl(r, "user", "list")) == "No users\n"
    assert json.loads(_ok(_ctl(r, "user", "list", "--json"))) == \
        {"users": [], "count": 0}
    # no temporary files left next to it
    assert os.listdir(str(tmp_path)) == ["credentials"]


def test_user_errors(relayd_factory, tmp_path):
    r, creds = _setup(relayd_factory, tmp_path)

    # a refused add creates no file
    _fails(_ctl(r, "user", "add", "b b", input="pw\n"),
           "bad name 'b b' (1-64 of A-Z a-z 0-9 . _ @ + -)")
    _fails(_ctl(r, "user", "add", "a:b", input="pw\n"),
           "bad name 'a:b' (1-64 of A-Z a-z 0-9 . _ @ + -)")
    _fails(_ctl(r, "user", "add", "x" * 65, input="pw\n"),
           "bad name '%s' (1-64 of A-Z a-z 0-9 . _ @ + -)" % ("x" * 65))
    _fails(_ctl(r, "user", "add", "a\x1bb", input="pw\n"),
           "bad name 'a\\x1bb' (1-64 of A-Z a-z 0-9 . _ @ + -)")
    _fails(_ctl(r, "user", "add", "app", "--owner", "o:x", input="pw\n"),
           "bad owner 'o:x' (0-64 of A-Z a-z 0-9 . _ @ + -)")
    _fails(_ctl(r, "user", "add", "app", "--from-domains", "evil..com",
                input="pw\n"), "bad from item 'evil..com'")
    _fails(_ctl(r, "user", "add", "app", "--to-domains", "me@x.example",
                input="pw\n"), "bad to item 'me@x.example'")
    _fails(_ctl(r, "user", "add", "app", "--hourly", "0", input="pw\n"),
           "--hourly: expected a number from 1 to 1000000000, not '0'")
    _fails(_ctl(r, "user", "add", "app", "--daily", "ten", input="pw\n"),
           "--daily: expected a number from 1 to 1000000000, not 'ten'")
    _fails(_ctl(r, "user", "add", "app", input=""),
           "no password given on standard input")
    _fails(_ctl(r, "user", "add", "app", input="\n"), "empty password")
    _fails(_ctl(r, "user", "add", "app", input="x" * 1025 + "\n"),
           "password longer than 1024 bytes")
    _fails(_ctl(r, "user", "add", "app", input="x\0y\n"),
           "password contains a NUL byte")
    assert not os.path.exists(creds)

    # on a missing file, changes other than add name it
    for sub in ("del", "disable", "enable"):
        _fails(_ctl(r, "user", sub, "app"),
               "cannot read %s: No such file or directory" % creds)
    _fails(_ctl(r, "user", "test", "app", input="pw\n"),
           "cannot read %s: No such file or directory" % creds)

    _ok(_ctl(r, "user", "add", "app", input="pw\n"))
    # the longest password, also with CRLF
    _ok(_ctl(r, "user", "add", "long", input="y" * 1024 + "\r\n"))
    assert _ok(_ctl(r, "user", "test", "long", input="y" * 1024)) == "ok\n"
    _ok(_ctl(r, "user", "del", "long"))
    before = open(creds).read()
    _fails(_ctl(r, "user", "add", "app", input="pw2\n"), "user 'app' exists")
    _fails(_ctl(r, "user", "add", "APP", "--generate"), "user 'APP' exists")
    for sub in ("del", "disable", "enable", "passwd"):
        _fails(_ctl(r, "user", sub, "nobody", input="pw\n"),
               "unknown user 'nobody'")
    _fails(_ctl(r, "user", "test", "nobody", input="pw\n"),
           "unknown user 'nobody'")
    _fails(_ctl(r, "user", "passwd", "app", input=""),
           "no password given on standard input")
    assert open(creds).read() == before

    # usage mistakes inside "user"
    _fails(_ctl(r, "user", "frob", "x"),
           "unknown user command 'frob' (expected add, del, list, passwd, "
           "disable, enable or test)")
    _fails(_ctl(r, "user", "del"),
           "missing user name; usage: relayctl user del NAME")
    _fails(_ctl(r, "user", "list", "x"),
           "too many arguments; usage: relayctl user list")
    _fails(_ctl(r, "user", "del", "app", "--owner", "x"),
           "option --owner does not apply; usage: relayctl user del NAME")
    _fails(_ctl(r, "user", "test", "app", "--generate"),
           "option --generate does not apply; usage: relayctl user test NAME")
    _fails(_ctl(r, "user", "add", "x", "--json", "--generate"),
           "no --json output; usage: relayctl user add NAME [--owner O] "
           "[--from-domains LIST] [--to-domains LIST] [--hourly N] "
           "[--daily N] [--generate]")
    res = _ctl(r, "user")
    assert res.returncode == 2 and b"missing argument" in res.stderr
    res = _ctl(r, "user", "add", "x", "--owner")
    assert res.returncode == 2 and b"option --owner needs a value" in res.stderr
    res = _ctl(r, "user", "add", "x", "--generate=yes")
    assert res.returncode == 2 and b"takes no value" in res.stderr
    assert open(creds).read() == before

    # a broken file: the error names file and line, never the hash
    with open(creds, "a") as f:
        f.write("# a comment\nbad entry\n")
    res = _ctl(r, "user", "list")
    _fails(res, "%s:3: white space or control character in a credential "
           "line" % creds)
    with open(creds, "w") as f:
        f.write("x:$scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA\n")
    _fails(_ctl(r, "user", "test", "x", input="pw\n"),
           "%s:1: password hash: scrypt ln out of range (10-20)" % creds)
    os.unlink(creds)
    os.mkdir(creds)
    _fails(_ctl(r, "user", "list"), "cannot read %s: not a regular file" % creds)


def test_env_comments_and_lock(relayd_factory, tmp_path):
    r, creds = _setup(relayd_factory, tmp_path)
    # RELAYD_CREDENTIALS_FILE overrides the config file's key
    other = str(tmp_path / "other-creds")
    with open(other, "w") as f:
        f.write("# managed by relayctl\n\n# apps\n")
    os.chmod(other, 0o640)
    env = {"RELAYD_CREDENTIALS_FILE": other}
    _ok(_ctl(r, "user", "add", "app1", input="pw1\n", env=env))
    assert not os.path.exists(creds)
    text = open(other).read()
    assert text.startswith("# managed by relayctl\n\n# apps\napp1:$scrypt$")
    # group read is kept, "other" never gets any
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o640
    _ok(_ctl(r, "user", "del", "app1", env=env))
    assert open(other).read() == "# managed by relayctl\n\n# apps\n"

    # concurrent adds: the lock keeps every one of them
    procs = []
    e = dict(os.environ)
    e["RELAYD_CREDENTIALS_FILE"] = other
    for i in range(8):
        p = subprocess.Popen([RELAYCTL, "-c", r.conf_path, "user", "add",
                              "u%d" % i], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=e)
        procs.append(p)
    for i, p in enumerate(procs):
        out, err = p.communicate(b"pw%d\n" % i, timeout=60)
        assert p.returncode == 0, err
    j = json.loads(_ok(_ctl(r, "user", "list", "--json", env=env)))
    assert [u["name"] for u in j["users"]] == ["u%d" % i for i in range(8)]
    assert _ok(_ctl(r, "user", "test", "u5", input="pw5\n", env=env)) == "ok\n"
    assert open(other).read().startswith("# managed by relayctl\n\n# apps\n")
    assert os.listdir(str(tmp_path)) == ["other-creds"]
