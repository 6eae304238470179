"""tests/e2e/test_metrics.py - metrics_listen (issue 11 §2): GET /metrics
in the Prometheus text format, checked by promtool. Ten messages through a
smarthost move the accepted and sent counters by exactly ten and fill the
latency histogram; with the upstream deferring, held and queued messages
show in the queue gauges as `relayctl list` counts them. The endpoint
answers nothing but GET /metrics (404, 405), cuts off a 100 KB request
(431 or a close) and one trickled past its 10 s deadline (408 or a close),
and a non-loopback metrics_listen is logged as a warning."""
import re
import shutil
import socket
import subprocess
import time

import pytest

from conftest import wait_until
from conftest_upstream import (SENDER, make_message, queue_list, submit,
                               wait_queue_empty, wait_rcpt_state)


def free_port(addr="127.0.0.1"):
    s = socket.socket()
    try:
        s.bind((addr, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def http(addr, port, raw, timeout=15.0):
    """Sends raw bytes, returns everything the server sent until it closed
    (b"" when it reset the connection first)."""
    with socket.create_connection((addr, port), timeout=timeout) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            return b""
        out = b""
        try:
            while len(out) < (4 << 20):
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except ConnectionResetError:
            pass
        return out


def get(addr, port, path="/metrics"):
    resp = http(addr, port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
                % path.encode())
    head, _, body = resp.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode()
    return status, head.decode(), body.decode()


def parse(body):
    """{name or name{labels}: value} of every sample line."""
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        key, val = line.rsplit(" ", 1)
        out[key] = float(val)
    return out


def promtool_check(body):
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool missing: `make deps` installs Debian's "
                    "prometheus package (DEPS_TEST)")
    p = subprocess.run([tool, "check", "metrics"], input=body.encode(),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, (p.stdout, p.stderr)


def metrics_relay(relay_to, up, **conf):
    mport = free_port()
    r = relay_to(up, metrics_listen="127.0.0.1:%d" % mport, **conf)
    return r, mport


def test_counters_move_by_ten(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls")
    r, mport = metrics_relay(relay_to, up)
    status, head, body = get("127.0.0.1", mport)
    assert status == "HTTP/1.1 200 OK", head
    assert "text/plain; version=0.0.4" in head and "Connection: close" in head
    promtool_check(body)
    before = parse(body)
    assert before['relayd_build_info{version="%s"}' % before_version(body)] == 1
    assert before["relayd_start_time_seconds"] > 0

    for i in range(10):
        content, _ = make_message("metrics %d" % i, to="m%d@dest.test" % i)
        submit(r, SENDER, ["m%d@dest.test" % i], content)
    up.wait_messages(10)
    wait_queue_empty(r)
    # The counters are read on the loop after the queue change: wait for
    # the sent count, bounded.
    wait_until(lambda: parse(get("127.0.0.1", mport)[2])["relayd_sent_total"]
               >= before["relayd_sent_total"] + 10, timeout=10,
               what="sent_total + 10")
    status, _, body = get("127.0.0.1", mport)
    promtool_check(body)
    after = parse(body)
    assert after["relayd_accepted_total"] - before["relayd_accepted_total"] == 10
    assert after["relayd_sent_total"] - before["relayd_sent_total"] == 10
    assert after["relayd_bounced_total"] == before["relayd_bounced_total"]
    inf = 'relayd_delivery_latency_seconds_bucket{le="+Inf"}'
    assert after[inf] - before[inf] == 10
    assert after["relayd_delivery_latency_seconds_count"] == after[inf]
    assert after['relayd_queue_messages{state="active"}'] == 0
    assert after['relayd_queue_messages{state="hold"}'] == 0
    assert after["relayd_queue_oldest_message_age_seconds"] == 0


def before_version(body):
    m = re.search(r'relayd_build_info\{version="([^"]+)"\} 1', body)
    assert m, body[:500]
    return m.group(1)


def test_queue_gauges_match_relayctl_list(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"*": "451 4.3.0 try later"}})
    r, mport = metrics_relay(relay_to, up, retry_min="1h", retry_max="2h")
    qids = []
    for i in range(5):
        content, _ = make_message("q %d" % i, to="q%d@dest.test" % i)
        qids.append(submit(r, SENDER, ["q%d@dest.test" % i], content))
    for i, q in enumerate(qids):
        wait_rcpt_state(r, q, "q%d@dest.test" % i,
                        lambda x: x["state"] == "deferred" and
                        x["attempts"] >= 1, what="q%d deferred" % i)
    r.relayctl("hold", qids[0])
    r.relayctl("hold", qids[1])
    wait_until(lambda: sum(m["state"] == "hold" for m in queue_list(r)) == 2,
               timeout=10, what="two held")
    listed = queue_list(r)
    m = parse(get("127.0.0.1", mport)[2])
    held = sum(1 for x in listed if x["state"] == "hold")
    assert held == 2
    assert m['relayd_queue_messages{state="hold"}'] == held
    assert (m['relayd_queue_messages{state="active"}'] +
            m['relayd_queue_messages{state="hold"}']) == len(listed) == 5
    assert m["relayd_deferred_total"] >= 5
    assert m["relayd_queue_oldest_message_age_seconds"] >= 0
    promtool_check(get("127.0.0.1", mport)[2])


def test_only_get_metrics_and_bounded(relayd_factory):
    mport = free_port()
    r = relayd_factory(metrics_listen="127.0.0.1:%d" % mport)
    assert get("127.0.0.1", mport, "/other")[0] == "HTTP/1.1 404 Not Found"
    assert get("127.0.0.1", mport, "/")[0] == "HTTP/1.1 404 Not Found"
    resp = http("127.0.0.1", mport, b"POST /metrics HTTP/1.1\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 405 "), resp[:100]
    resp = http("127.0.0.1", mport, b"GET /metrics HTTP/1.1\r\nA: b\r\n c\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400 "), resp[:100]

    # 100 KB of head: cut off at 8 KiB with 431, or the connection closed
    # (a reset while we still send); never a 200.
    big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 100000 + b"\r\n\r\n"
    resp = http("127.0.0.1", mport, big)
    assert resp == b"" or resp.startswith(b"HTTP/1.1 431 "), resp[:100]
    wait_until(lambda: "metrics: 431" in r.log_text(), timeout=10,
               what="the 431 logged")

    # A request trickled a byte at a time past the 10 s deadline: the
    # server answers 408 (or closes) before the head is complete.
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", mport), timeout=30) as s:
        got = b""
        sent = 0
        start = time.monotonic()
        while sent < len(req) - 1 and time.monotonic() - start < 25:
            try:
                s.sendall(req[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            s.settimeout(0.5)
            try:
                chunk = s.recv(4096)
                got += chunk
                if not chunk or got:
                    break
            except socket.timeout:
                pass
        s.settimeout(15)
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    # The head was never finished, and the server spoke first.
    assert sent < len(req) - 1 or got, "no deadline"
    assert got.startswith(b"HTTP/1.1 408 "), got[:100]
    assert "metrics: request timed out" in r.log_text()
    # Still serving.
    assert get("127.0.0.1", mport)[0] == "HTTP/1.1 200 OK"


def test_non_loopback_warns(relayd_factory):
    mport = free_port("0.0.0.0")
    r = relayd_factory(metrics_listen="0.0.0.0:%d" % mport)
    wait_until(lambda: "is not a loopback address" in r.log_text(),
               timeout=10, what="the warning")
    assert re.search(r"warning: metrics_listen 0\.0\.0\.0:%d is not a "
                     r"loopback address" % mport, r.log_text())
    # Served (on loopback too, since 0.0.0.0 covers it).
    assert get("127.0.0.1", mport)[0] == "HTTP/1.1 200 OK"


def test_loopback_does_not_warn(relayd_factory):
    mport = free_port()
    r = relayd_factory(metrics_listen="127.0.0.1:%d" % mport)
    assert get("127.0.0.1", mport)[0] == "HTTP/1.1 200 OK"
    assert "metrics: listening on 127.0.0.1:%d" % mport in r.log_text()
    assert "not a loopback address" not in r.log_text()


def test_relayctl_status(upstream_factory, relay_to):
    """relayctl status: running, then stopped; the queue counts, the
    deferral reason and the since-start counters agree with the daemon."""
    import json
    up = upstream_factory(tls="starttls",
                          behaviour={"rcpt": {"*": "451 4.3.0 try later"}})
    r, mport = metrics_relay(relay_to, up, retry_min="1h", retry_max="2h")
    qids = []
    for i in range(3):
        content, _ = make_message("s %d" % i, to="s%d@dest.test" % i)
        qids.append(submit(r, SENDER, ["s%d@dest.test" % i], content))
    for i, q in enumerate(qids):
        wait_rcpt_state(r, q, "s%d@dest.test" % i,
                        lambda x: x["state"] == "deferred", what="deferred")
    r.relayctl("hold", qids[0])
    wait_until(lambda: sum(m["state"] == "hold" for m in queue_list(r)) == 1,
               timeout=10, what="one held")
    doc = json.loads(r.relayctl("status", "--json").stdout.decode())
    assert doc["running"] is True and doc["delivery"] == "smarthost", doc
    assert doc["listeners"] == ["%s:%d/smtp" % (r.addr, r.port)], doc
    assert doc["queue"]["messages"] == 3 and doc["queue"]["hold"] == 1, doc
    assert doc["queue"]["recipients"]["deferred"] == 3, doc
    assert doc["since_start"]["deferred"] >= 3, doc
    reasons = doc["deferral_reasons"]
    assert reasons and reasons[0]["count"] == 3, reasons
    assert "try later" in reasons[0]["reason"], reasons
    m = parse(get("127.0.0.1", mport)[2])
    assert m["relayd_deferred_total"] == doc["since_start"]["deferred"]
    text = r.relayctl("status").stdout.decode()
    assert "running (pid %d)" % doc["pid"] in text, text
    assert "3 messages (2 active, 1 held)" in text, text
    assert re.search(r"^\s+3\s+.*try later", text, re.M), text

    r.stop()
    doc = json.loads(r.relayctl("status", "--json").stdout.decode())
    assert doc["running"] is False and "since_start" not in doc, doc
    assert doc["queue"]["messages"] == 3 and doc["queue"]["hold"] == 1, doc
    assert doc["deferral_reasons"][0]["count"] == 3, doc
    text = r.relayctl("status").stdout.decode()
    assert "not running" in text and "3 messages" in text, text


def test_smtpd_counters(relayd_factory, tmp_path):
    """Refusals by class, a failed TLS handshake, and open sessions, as
    the metrics show them before and after."""
    from conftest import SmtpRaw
    from tlsutil import TestCA, tls_relayd
    ca = TestCA(str(tmp_path / "ca"))
    mport = free_port()
    r = tls_relayd(relayd_factory, ca, metrics_listen="127.0.0.1:%d" % mport)
    # The start-up probes (and the maildrop import at start) have left.
    wait_until(lambda: parse(get("127.0.0.1", mport)[2])
               ["relayd_smtp_sessions"] == 0, timeout=20,
               what="no session open")
    before = parse(get("127.0.0.1", mport)[2])
    assert before["relayd_smtp_sessions"] == 0

    c = SmtpRaw(r.addr, r.ports["submission"])
    assert c.reply().code == 220
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("FROB").code == 500                       # protocol
    assert c.cmd("RCPT TO:<a@dest.test>").code == 503      # protocol
    # The session is open while we hold it.
    mid = parse(get("127.0.0.1", mport)[2])
    assert mid["relayd_smtp_sessions"] == 1
    c.close()

    # A handshake that fails: plaintext on the smtps port.
    bad = SmtpRaw(r.addr, r.ports["smtps"])
    bad.send(b"EHLO client.test\r\n")
    assert bad.closed_within(5)
    bad.close()
    wait_until(lambda: parse(get("127.0.0.1", mport)[2])
               ["relayd_tls_handshake_failures_total"] ==
               before["relayd_tls_handshake_failures_total"] + 1,
               timeout=10, what="the failed handshake counted")
    wait_until(lambda: parse(get("127.0.0.1", mport)[2])
               ["relayd_smtp_sessions"] == 0, timeout=10,
               what="sessions closed")
    after = parse(get("127.0.0.1", mport)[2])
    key = 'relayd_rejected_total{reason="protocol"}'
    assert after[key] - before[key] == 2
    for k in ("policy", "auth", "quota", "rate", "size"):
        kk = 'relayd_rejected_total{reason="%s"}' % k
        assert after[kk] == before[kk], kk
    assert after["relayd_accepted_total"] == before["relayd_accepted_total"]
