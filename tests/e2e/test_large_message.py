"""tests/e2e/test_large_message.py - A 30 MB message, sent with DATA through
smtplib and with BDAT chunks over a raw socket, is accepted, stored
byte-for-byte, and streamed: relayd's peak RSS (VmHWM) hardly moves.
"""
import hashlib
import re
import smtplib
import socket
import time

MB = 1024 * 1024
SIZE = 30 * MB
# The body is streamed to tmp/ while it arrives; what relayd keeps in memory
# is bounded by its read buffers, not by the message size.
RSS_GROWTH_MAX_KB = 8 * 1024


def make_body(size, seed):
    """CRLF lines of 76 characters; every 97th starts with '.', every
    1013th is a lone '.', so dot-stuffing is exercised on the way in."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    pool = []
    for j in range(257):
        h = hashlib.sha512(b"%d:%d" % (seed, j)).digest()
        pool.append(bytes(alphabet[b & 63] for b in h)[:67])
    lines = []
    total = 0
    i = 0
    while total < size:
        if i % 1013 == 500:
            line = b"."
        else:
            line = b"%08d " % i + pool[i % 257]       # 76 characters
            if i % 97 == 3:
                line = b"." + line[1:]
        lines.append(line + b"\r\n")
        total += len(line) + 2
        i += 1
    return b"".join(lines)


def split_body(data):
    """The part of a stored message after its header section."""
    i = data.find(b"\r\n\r\n")
    assert i >= 0, "no end of header section in %r" % data[:200]
    return data[i + 4:]


def read_reply(f):
    """One (possibly multiline) SMTP reply from a socket file."""
    lines = []
    for _ in range(100):
        line = f.readline(4096)
        assert line.endswith(b"\r\n"), "connection closed: %r" % lines
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)
    raise AssertionError("reply too long: %r" % lines)


def check_stored(relayd, qid, headers, body):
    stored = relayd.stored()
    assert qid in stored, "queued as %s but msg/ has %s" % (qid, list(stored))
    data = stored[qid]
    got = split_body(data)
    assert len(got) == len(body), (len(got), len(body))
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()
    head = data[:len(data) - len(got)]
    assert head.startswith(b"Received: "), head[:200]
    assert b"\r\nSubject: big\r\n" in head
    out = relayd.relayctl("list", "--json").stdout.decode()
    assert qid in out


def wait_peak_settled(relayd):
    """VmHWM once the daemon is idle (bounded wait)."""
    last = relayd.peak_rss_kb()
    for _ in range(10):
        time.sleep(0.05)
        cur = relayd.peak_rss_kb()
        if cur == last:
            break
        last = cur
    return last


def test_30mb_data_is_streamed(relayd_factory):
    relayd = relayd_factory(max_message_size="64M", timeout_data="60s")
    body = make_body(SIZE, 1)
    assert sum(1 for l in body.split(b"\r\n") if l.startswith(b".")) > 1000
    headers = (b"From: a@b.test\r\nTo: c@d.test\r\nSubject: big\r\n"
               b"Message-ID: <big-data@client.test>\r\n")
    msg = headers + b"\r\n" + body
    with smtplib.SMTP(relayd.addr, relayd.port, timeout=60) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert s.has_extn("size")
        assert int(s.esmtp_features["size"]) >= 64 * MB
        before = wait_peak_settled(relayd)
        t0 = time.monotonic()
        code, _ = s.mail("a@b.test", ["SIZE=%d" % len(msg)])
        assert code == 250
        code, _ = s.rcpt("c@d.test")
        assert code == 250
        code, resp = s.data(msg)
        elapsed = time.monotonic() - t0
    assert code == 250, resp
    after = relayd.peak_rss_kb()
    m = re.search(rb"queued as ([0-9A-Z]{16})", resp)
    assert m, resp
    qid = m.group(1).decode()
    print("DATA 30MB: peak RSS %d kB -> %d kB (+%d kB), %.2fs" %
          (before, after, after - before, elapsed))
    assert after - before < RSS_GROWTH_MAX_KB, \
        "peak RSS grew by %d kB for a %d-byte message" % (after - before, len(msg))
    check_stored(relayd, qid, headers, body)


def test_30mb_bdat_is_streamed(relayd_factory):
    relayd = relayd_factory(max_message_size="64M", timeout_data="60s")
    body = make_body(SIZE, 2)
    headers = (b"From: a@b.test\r\nTo: c@d.test\r\nSubject: big\r\n"
               b"Message-ID: <big-bdat@client.test>\r\n")
    msg = headers + b"\r\n" + body
    chunk = 1 * MB + 12345   # chunk boundaries fall mid-line
    with socket.create_connection((relayd.addr, relayd.port), timeout=60) as sock:
        f = sock.makefile("rb")
        assert read_reply(f)[0] == 220
        sock.sendall(b"EHLO client.test\r\n")
        code, text = read_reply(f)
        assert code == 250 and b"CHUNKING" in text, text
        before = wait_peak_settled(relayd)
        t0 = time.monotonic()
        sock.sendall(b"MAIL FROM:<a@b.test> SIZE=%d\r\n" % len(msg))
        assert read_reply(f)[0] == 250
        sock.sendall(b"RCPT TO:<c@d.test>\r\n")
        assert read_reply(f)[0] == 250
        off = 0
        nchunks = 0
        while off < len(msg):
            part = msg[off:off + chunk]
            off += len(part)
            last = off >= len(msg)
            sock.sendall(b"BDAT %d%s\r\n" % (len(part), b" LAST" if last else b""))
            sock.sendall(part)
            code, text = read_reply(f)
            nchunks += 1
            assert nchunks <= 64
            if not last:
                assert code == 250, text
        elapsed = time.monotonic() - t0
        assert code == 250, text
        sock.sendall(b"QUIT\r\n")
        read_reply(f)
        f.close()
    after = relayd.peak_rss_kb()
    m = re.search(rb"queued as ([0-9A-Z]{16})", text)
    assert m, text
    qid = m.group(1).decode()
    print("BDAT 30MB in %d chunks: peak RSS %d kB -> %d kB (+%d kB), %.2fs" %
          (nchunks, before, after, after - before, elapsed))
    assert after - before < RSS_GROWTH_MAX_KB, \
        "peak RSS grew by %d kB for a %d-byte message" % (after - before, len(msg))
    check_stored(relayd, qid, headers, body)
