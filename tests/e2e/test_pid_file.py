"""tests/e2e/test_pid_file.py - pid_file: relayd's process id in a file
for init scripts without systemd, locked while it runs (a second relayd
with the same file refuses to start and names the first one's pid), a
stale file taken over, links refused, the file removed at exit."""
import os
import subprocess

from conftest import RELAYD


def test_pid_file_written_locked_and_removed(relayd_factory, tmp_path):
    pid_file = str(tmp_path / "relayd.pid")
    # A stale file, as a killed relayd leaves it: taken over.
    with open(pid_file, "w") as f:
        f.write("999999\n")
    r = relayd_factory(pid_file=pid_file)
    with open(pid_file) as f:
        assert f.read() == "%d\n" % r.pid

    # A second relayd with the same pid_file (another port) refuses.
    other = relayd_factory(start=False, pid_file=pid_file)
    res = subprocess.run([RELAYD, "-c", other.conf_path], capture_output=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    assert ("pid_file %s: relayd is already running (pid %d)" %
            (pid_file, r.pid)) in res.stderr.decode(), res.stderr
    with open(pid_file) as f:
        assert f.read() == "%d\n" % r.pid     # untouched

    r.stop()
    assert not os.path.exists(pid_file)


def test_pid_file_never_through_a_link(relayd_factory, tmp_path):
    target = tmp_path / "target"
    target.write_text("keep me\n")
    link = tmp_path / "relayd.pid"
    os.symlink(str(target), str(link))
    r = relayd_factory(start=False, pid_file=str(link))
    res = subprocess.run([RELAYD, "-c", r.conf_path], capture_output=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    assert "pid_file %s: is a symbolic link" % link in res.stderr.decode()
    assert target.read_text() == "keep me\n"
