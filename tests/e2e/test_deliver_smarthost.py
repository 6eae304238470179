"""tests/e2e/test_deliver_smarthost.py - Smarthost delivery when all goes
well. Over STARTTLS (AUTH PLAIN, password in a file) and implicit TLS
(AUTH LOGIN, password in the environment), each upstream offering one
mechanism: messages of several sizes (one of 1 MB, one full of lines
starting with '.') arrive byte for byte as `relayctl cat` showed them, with
their envelope, over TLS and authenticated; nothing of the mail travels in
clear; they leave the queue and the log says status=sent and removed.
The TLS mode defaults to STARTTLS on a port other than 465;
smarthost_tls_verify=no takes any certificate, still over TLS. rewrite_sender
and rewrite_from_header rewrite MAIL FROM and From:, adding a Reply-To:
with the original From: unless there is one."""
import email
import email.policy
import re

import pytest

from conftest_upstream import (SENDER, assert_same_bytes, body_of,
                               make_message, message_id, queue_entry,
                               removed, statuses, submit, wait_gone)

USER, PASSWORD = "relay-user", "Pw-0f-the-relay"


def dot_body():
    """Lines that dot-stuffing must get right, both ways."""
    return (b".\r\n"
            b"..\r\n"
            b"...\r\n"
            b".leading dot\r\n"
            b"..two leading dots\r\n"
            b". dot and space\r\n"
            b"not a dot . in the middle\r\n"
            b"\r\n"
            b".\r\n"
            b"last line\r\n")


def big_body(size):
    lines, n = [], 0
    while sum(len(x) for x in lines) < size:
        lead = b"." if n % 37 == 3 else b"L"
        lines.append(lead + (b"%07d " % n) + b"abcdefghijklmnopqrstuvwxyz" * 2
                     + b"0123456789\r\n")
        n += 1
    return b"".join(lines)


def sent_line_shape(line, up):
    """The Postfix-shaped parts of a status=sent line."""
    pat = (r"relay=[^\s,]*\[%s\]:%d, delay=[\d.]+, delays=[\d.]+(/[\d.]+)*, "
           r"dsn=2\.\d+\.\d+, status=sent \(250[ -]" % (re.escape(up.addr),
                                                        up.port))
    assert re.search(pat, line), "sent line not in the expected shape:\n%s" % line


@pytest.mark.parametrize("tls,mech,via", [("starttls", "PLAIN", "file"),
                                          ("implicit", "LOGIN", "env")])
def test_messages_arrive_byte_for_byte(upstream_factory, relay_to, tls, mech,
                                       via):
    # MAIL is refused until every message has been read with relayctl cat.
    up = upstream_factory(tls=tls, users={USER: PASSWORD}, mechs=(mech,),
                          behaviour={"mail": {SENDER: "451 4.3.2 not yet"}})
    r = relay_to(up, password_via=via)
    cases = [
        ("small", ["one@dest.test"], b"Hello.\r\n"),
        ("dots", ["two@dest.test"], dot_body()),
        ("1 MB", ["three@dest.test"], big_body(1024 * 1024)),
        ("three recipients", ["a@dest.test", "b@dest.test", "c@dest.test"],
         big_body(64 * 1024)),
    ]
    sent = []   # (qid, rcpts, message id, stored bytes)
    for subject, rcpts, body in cases:
        content, mid = make_message(subject, body=body, to=rcpts[0])
        qid = submit(r, SENDER, rcpts, content)
        sent.append((qid, rcpts, mid, content))
    stored = []
    for qid, rcpts, mid, content in sent:
        cat = r.relayctl("cat", qid).stdout
        # relayd prepends its Received: and keeps the rest.
        assert cat.endswith(content), "stored %s is not the submitted one" % qid
        stored.append(cat)
    for qid, *_ in sent:
        assert queue_entry(r, qid) is not None

    up.set_behaviour({})
    got = up.wait_messages(len(sent), match=lambda m: m["mail_from"] == SENDER)
    for (qid, rcpts, mid, _), cat in zip(sent, stored):
        recs = [m for m in got if message_id(m["data"]) == mid]
        assert len(recs) == 1, "%s arrived %d times" % (qid, len(recs))
        rec = recs[0]
        assert_same_bytes(rec["data"], cat, "%s as delivered" % qid)
        assert rec["mail_from"] == SENDER
        assert sorted(rec["rcpt_tos"]) == sorted(rcpts)
        assert rec["tls"] and rec["tls"]["version"] in ("TLSv1.2", "TLSv1.3"), rec["tls"]
        assert rec["auth_user"] == USER

    for qid, rcpts, _, _ in sent:
        wait_gone(r, qid)
        assert removed(r, qid), "no '%s: removed' in the log" % qid
        for rcpt in rcpts:
            st = statuses(r, qid, rcpt)
            assert st and st[-1] == "sent" and st.count("sent") == 1, (rcpt, st)
            assert set(st) <= {"deferred", "sent"}, (rcpt, st)
    qid, rcpts, _, _ = sent[0]
    line = [x for x in r.log_text().splitlines()
            if re.search(r"\b%s: to=<%s>,.*status=sent" % (qid, rcpts[0]), x)][0]
    sent_line_shape(line, up)

    # Authenticated with the one mechanism offered, over TLS; nothing of
    # the mail (or the credentials) in clear.
    auths = [a for c in up.connections() for a in c["auth"]]
    assert auths, "relayd never authenticated"
    assert all(a["mech"] == mech and a["tls"] and a["user"] == USER
               for a in auths), auths
    assert all(a["ok"] for a in auths), auths
    assert up.mail_in_clear() == []
    log = r.log_text()
    assert PASSWORD not in log


def test_tls_mode_defaults_to_starttls(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls")
    r = relay_to(up, smarthost_tls=None)
    content, mid = make_message("default tls")
    qid = submit(r, SENDER, ["rcpt@dest.test"], content)
    (rec,) = up.wait_messages(1)
    assert message_id(rec["data"]) == mid and rec["tls"] is not None
    assert [v for _, v in up.commands_in_clear()] == ["EHLO", "STARTTLS"] * \
        len(up.connections())
    wait_gone(r, qid)


def test_tls_verify_no_accepts_any_certificate(upstream_factory, relay_to):
    up = upstream_factory(tls="implicit", cert="untrusted")
    r = relay_to(up, smarthost_tls_verify="no", smarthost_tls_ca=None)
    content, mid = make_message("unverified but encrypted")
    qid = submit(r, SENDER, ["rcpt@dest.test"], content)
    (rec,) = up.wait_messages(1)
    assert message_id(rec["data"]) == mid and rec["tls"] is not None
    wait_gone(r, qid)


def _addresses(msg, name):
    values = msg.get_all(name) or []
    assert len(values) == 1, "%d %s: fields" % (len(values), name)
    return [a.addr_spec for a in values[0].addresses]


def test_rewrite_sender_and_from_header(upstream_factory, relay_to):
    up = upstream_factory(tls="starttls")
    r = relay_to(up, rewrite_sender="bounces@relay.test",
                 rewrite_from_header="yes")
    plain, mid_plain = make_message("no reply-to",
                                    frm="Alice Example <alice@client.test>",
                                    body=b"first body\r\n")
    with_rt, mid_rt = make_message(
        "has reply-to", frm="Bob <bob@client.test>", body=b"second body\r\n",
        headers=["Reply-To: Help Desk <help@client.test>"])
    submit(r, "alice@client.test", ["x@dest.test"], plain)
    submit(r, "bob@client.test", ["y@dest.test"], with_rt)
    got = {message_id(m["data"]): m for m in up.wait_messages(2)}
    assert set(got) == {mid_plain, mid_rt}

    for mid, original in ((mid_plain, plain), (mid_rt, with_rt)):
        rec = got[mid]
        assert rec["mail_from"] == "bounces@relay.test"
        assert body_of(rec["data"]) == body_of(original)
        out = email.message_from_bytes(rec["data"], policy=email.policy.default)
        src = email.message_from_bytes(original, policy=email.policy.default)
        assert _addresses(out, "From") == ["bounces@relay.test"]
        for h in ("To", "Subject", "Message-ID", "Date"):
            assert out.get_all(h) == src.get_all(h), h

    out = email.message_from_bytes(got[mid_plain]["data"],
                                   policy=email.policy.default)
    assert _addresses(out, "Reply-To") == ["alice@client.test"]
    # An existing Reply-To: is kept as it was.
    data = got[mid_rt]["data"]
    out = email.message_from_bytes(data, policy=email.policy.default)
    assert _addresses(out, "Reply-To") == ["help@client.test"]
    assert b"\r\nReply-To: Help Desk <help@client.test>\r\n" in data
