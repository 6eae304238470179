"""tests/e2e/test_smuggling.py - SMTP smuggling (CVE-2023-51764): a body
that hides a second transaction behind a non-standard end-of-data sequence.
With bare_newline=reject (the default) the message is refused with 554
5.6.0 and nothing at all is queued; with bare_newline=normalize exactly one
message is queued, the hidden commands are its content, and the stored file
has CRLF line ends only. Also NUL bytes in DATA."""
import os
import re
import time

import pytest

from conftest import no_unfinished, list_json, smtp_connect

SEQS = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-lf": b"\r.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
    "lf-dot": b"\n.",
    "bare-cr": b"\r",
    "bare-lf": b"\n",
}
HIDDEN = b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\nsmuggled\r\n"
HEAD = b"Subject: smuggle\r\n\r\n"


def _body(seq):
    return HEAD + b"a" + seq + HIDDEN + b"\r\n.\r\n"


def _open_txn(c):
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<good@client.test>").pair == (250, "2.1.0")
    assert c.cmd("RCPT TO:<good@dest.test>").pair == (250, "2.1.5")
    assert c.cmd("DATA").code == 354


def _spool_mentions(r, needle):
    hits = []
    for root, _, files in os.walk(r.spool):
        for f in files:
            if not os.path.isfile(os.path.join(root, f)):
                continue   # the control socket
            with open(os.path.join(root, f), "rb") as fh:
                if needle in fh.read():
                    hits.append(os.path.join(root, f))
    return hits


def _no_bare_newlines(b):
    return re.search(rb"\r(?!\n)|(?<!\r)\n", b) is None


@pytest.mark.parametrize("name", list(SEQS))
def test_reject_queues_nothing(relayd, name):
    with smtp_connect(relayd) as c:
        _open_txn(c)
        c.send(_body(SEQS[name]))
        rep = c.reply()
        assert rep.pair == (554, "5.6.0"), rep
        assert rep.text == \
            "Message contains bare CR or LF; lines must end with CRLF"
        # The hidden commands were never run: no replies for them.
        c.no_more(0.3)
        # The transaction is over; the session is not.
        assert c.cmd("RCPT TO:<x@dest.test>").pair == (503, "5.5.1")
        assert c.cmd("NOOP").pair == (250, "2.0.0")
        assert c.cmd("QUIT").pair == (221, "2.0.0")
    assert relayd.stored() == {}
    assert no_unfinished(relayd) == []
    assert list_json(relayd)["count"] == 0
    assert _spool_mentions(relayd, b"evil") == []
    assert _spool_mentions(relayd, b"smuggled") == []


@pytest.mark.parametrize("name", list(SEQS))
def test_normalize_queues_exactly_one(relayd_factory, name):
    r = relayd_factory(bare_newline="normalize")
    with smtp_connect(r) as c:
        _open_txn(c)
        c.send(_body(SEQS[name]))
        qid = c.reply().queued_id()
        c.no_more(0.3)
        assert c.cmd("QUIT").pair == (221, "2.0.0")
    stored = r.stored()
    assert list(stored) == [qid], stored.keys()
    msg = stored[qid]
    assert _no_bare_newlines(msg), msg
    # The hidden "transaction" is plain content of the one message.
    _, _, body = msg.partition(b"\r\n\r\n")
    assert body.startswith(b"a\r\n"), body
    assert body.endswith(HIDDEN + b"\r\n"), body
    assert msg.count(b"smuggled") == 1
    lj = list_json(r)
    assert lj["count"] == 1
    m = lj["messages"][0]
    assert m["sender"] == "good@client.test"
    assert [x["address"] for x in m["recipients"]] == ["good@dest.test"]
    assert "evil" not in r.relayctl("list").stdout.decode()


@pytest.mark.parametrize("name", ["lf-dot-crlf", "crlf-dot-cr", "cr-dot-lf"])
def test_split_sequence_same_result(relayd_factory, name):
    """The sequence arriving one byte per segment changes nothing."""
    r = relayd_factory(bare_newline="normalize")
    body = _body(SEQS[name])
    cut = len(HEAD) + 1
    with smtp_connect(r) as c:
        _open_txn(c)
        c.send(body[:cut])
        for i in range(cut, cut + len(SEQS[name]) + 2):
            time.sleep(0.02)
            c.send(body[i:i + 1])
        c.send(body[cut + len(SEQS[name]) + 2:])
        qid = c.reply().queued_id()
        c.no_more(0.2)
    with smtp_connect(r) as c:
        _open_txn(c)
        c.send(body)
        qid2 = c.reply().queued_id()
    stored = r.stored()
    assert sorted(stored) == sorted([qid, qid2])
    # Same content apart from relayd's own lines (Received, Message-ID).
    def strip(b):
        return b.split(b"\r\n\r\n", 1)[1]
    assert strip(stored[qid]) == strip(stored[qid2])
    assert _no_bare_newlines(stored[qid])


@pytest.mark.parametrize("policy", ["reject", "normalize"])
def test_nul_in_data_refused(relayd_factory, policy):
    r = relayd_factory(bare_newline=policy)
    with smtp_connect(r) as c:
        _open_txn(c)
        c.send(b"Subject: nul\r\n\r\nbefore\x00after\r\n.\r\n")
        rep = c.reply()
        assert rep.pair == (554, "5.6.0"), rep
        assert rep.text == "Message contains NUL characters"
        assert c.cmd("NOOP").pair == (250, "2.0.0")
    assert r.stored() == {}
    assert no_unfinished(r) == []
