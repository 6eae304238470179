#!/usr/bin/python3
"""
tests/e2e/upstream_server.py - The upstream smarthost of the delivery
tests: aiosmtpd (1.4) in a process of its own, plain, with STARTTLS or with
implicit TLS, AUTH PLAIN and/or LOGIN, and replies that a test scripts
through a JSON behaviour file re-read on every command. It records what it
receives: one JSON file per message (the bytes beside it) and one per
connection, each written to a temp name and renamed. It adds nothing to
the messages it receives (no Received:, no X-Peer).

Started and stopped (by PID) by tests/e2e/upstream.py, which documents the
behaviour keys and the record layout; run it with --help for the options.
"""
import argparse
import asyncio
import asyncio.sslproto
import hashlib
import json
import logging
import os
import signal
import ssl
import sys
import time
import warnings

from aiosmtpd.smtp import SMTP, AuthResult

HOSTNAME = "smarthost.test"
DEFAULT_GREETING_HOLD_S = 120.0
MAX_LOGGED_COMMANDS = 5000
MAX_PARTIAL_LINE = 65536


def note(fmt, *args):
    sys.stderr.write("upstream[%d]: %s\n" % (os.getpid(), fmt % args))
    sys.stderr.flush()


class Behaviour:
    """The behaviour file, re-read on every use. A reply spec is a string
    (that reply every time), a list (one reply per use, in order, then the
    default) or absent (the default). When the file's content changes, the
    lists start over."""

    def __init__(self, path):
        self.path = path
        self.raw = None
        self.doc = {}
        self.used = {}

    def get(self):
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        if raw != self.raw:
            try:
                doc = json.loads(raw) if raw.strip() else {}
                assert isinstance(doc, dict), "not a JSON object"
            except (ValueError, AssertionError) as e:
                note("bad behaviour file %s (%s); keeping the previous one",
                     self.path, e)
                return self.doc
            self.raw, self.doc, self.used = raw, doc, {}
            note("behaviour: %s", json.dumps(doc, sort_keys=True))
        return self.doc

    def _pick(self, spec, key):
        if spec is None:
            return None
        if isinstance(spec, str):
            return spec
        if isinstance(spec, list):
            i = self.used.get(key, 0)
            if i < len(spec):
                self.used[key] = i + 1
                return spec[i]
            return None
        note("bad reply spec %r for %r", spec, key)
        return None

    def reply(self, name, addr=None):
        """The scripted reply for command `name` ("mail", "rcpt", "data",
        "auth", "ehlo"), or None for the default. A dict spec is keyed by
        address (MAIL FROM for mail and data, RCPT TO for rcpt; "<>" is the
        null sender) with "*" for any other."""
        spec = self.get().get(name)
        if isinstance(spec, dict):
            key = None
            if addr is not None:
                for k in (addr, addr.lower()):
                    if k in spec:
                        key = k
                        break
            if key is None and "*" in spec:
                key = "*"
            if key is None:
                return None
            return self._pick(spec[key], (name, key))
        return self._pick(spec, (name,))


class Recorder:
    """record/msg/NNNNNN.json + NNNNNN.eml, record/conn/NNNNNN.json."""

    def __init__(self, root):
        self.msg_dir = os.path.join(root, "msg")
        self.conn_dir = os.path.join(root, "conn")
        os.makedirs(self.msg_dir, exist_ok=True)
        os.makedirs(self.conn_dir, exist_ok=True)
        self.msg_seq = 0
        self.conn_seq = 0

    @staticmethod
    def _atomic(path, data):
        tmp = os.path.join(os.path.dirname(path),
                           "." + os.path.basename(path) + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def next_conn(self):
        self.conn_seq += 1
        return self.conn_seq

    def save_conn(self, conn):
        self._atomic(os.path.join(self.conn_dir, "%06d.json" % conn["seq"]),
                     json.dumps(conn, indent=1).encode())

    def save_message(self, rec, data):
        self.msg_seq += 1
        rec["seq"] = self.msg_seq
        name = "%06d" % self.msg_seq
        rec["data_file"] = name + ".eml"
        rec["size"] = len(data)
        rec["sha256"] = hashlib.sha256(data).hexdigest()
        # The bytes first: a .json names a complete message.
        self._atomic(os.path.join(self.msg_dir, name + ".eml"), data)
        self._atomic(os.path.join(self.msg_dir, name + ".json"),
                     json.dumps(rec, indent=1).encode())
        return self.msg_seq


def tls_info(transport):
    obj = transport.get_extra_info("ssl_object") if transport else None
    if obj is None:
        return None
    c = obj.cipher()
    return {"version": obj.version(), "cipher": c[0] if c else None}


def printable(b, limit=200):
    s = b.decode("latin-1")[:limit]
    return "".join(ch if 32 <= ord(ch) < 127 else "\\x%02x" % ord(ch)
                   for ch in s)


class State:
    """What every connection of this server shares."""

    def __init__(self, args):
        self.args = args
        self.beh = Behaviour(args.behaviour)
        self.rec = Recorder(args.record)
        self.users = {}
        if args.users:
            with open(args.users) as f:
                self.users = json.load(f)
        self.open = set()


class UpstreamSMTP(SMTP):
    """aiosmtpd's SMTP with the test hooks: a wire-level record of every
    command and whether TLS was up when it came, scripted greeting, drop in
    DATA, 421 closes the connection."""

    def __init__(self, state, conn=None, implicit=False, **kw):
        self.st = state
        self.implicit = implicit
        self.conn = conn                # the connection record
        self._buf = b""
        self._mode = "cmd"              # cmd | data | auth
        self._data_seen = 0
        self._drop_at = None
        self._dropped = False
        self._broken = None             # starttls_broken mode once set
        self.mail_auth_param = None
        super().__init__(**kw)

    # ---- the connection record ----
    def _new_conn(self, transport):
        peer = transport.get_extra_info("peername")
        self.conn = new_conn_record(self.st, peer, self.st.args.tls)

    def save(self):
        if self.conn is not None:
            self.st.rec.save_conn(self.conn)

    def tls_up(self):
        return self.implicit or self._tls_protocol is not None

    def connection_made(self, transport):
        # Called again when STARTTLS completes, with the TLS transport.
        first = self not in self.st.open
        if self.conn is None:
            self._new_conn(transport)
        if first:
            self.st.open.add(self)
            self.conn["concurrent"] = len(self.st.open)
        super().connection_made(transport)
        t = tls_info(transport)
        if t:
            self.conn["tls"] = t
        self.save()

    def connection_lost(self, error):
        self.st.open.discard(self)
        if self.conn is not None:
            self.conn["closed"] = time.time()
            if error is not None:
                self.conn["close_error"] = repr(error)
            self.save()
        super().connection_lost(error)

    # ---- what came over the wire ----
    def data_received(self, data):
        if self._dropped:
            return
        if self._broken:
            # After "220 ready" to STARTTLS in starttls_broken mode: the
            # TLS bytes are counted, never read as commands.
            self.conn["clear_bytes"] += len(data)
            self.conn["broken_bytes"] = self.conn.get("broken_bytes", 0) + \
                len(data)
            self._dropped = True
            if self._broken == "garbage":
                self.transport.write(b"this is not a TLS record\r\n" * 4)
            note("conn %d: STARTTLS handshake broken (%s) after %d bytes",
                 self.conn["seq"], self._broken, len(data))
            self.save()
            self.transport.close()
            return
        tls = self.tls_up()
        if not tls:
            self.conn["clear_bytes"] += len(data)
        if self._mode == "data" and self._drop_at is not None:
            self._data_seen += len(data)
            if self._data_seen >= self._drop_at:
                self._dropped = True
                self.conn["dropped_in_data"] = self._data_seen
                note("conn %d: dropping after %d bytes of DATA",
                     self.conn["seq"], self._data_seen)
                self.save()
                self.transport.abort()
                return
        self._scan(data, tls)
        super().data_received(data)

    def _scan(self, data, tls):
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_PARTIAL_LINE:
                    # Keep "not at the start of a line" and a trailing CR.
                    self._buf = b"x" + self._buf[-1:]
                return
            line, self._buf = self._buf[:nl + 1], self._buf[nl + 1:]
            if self._mode == "data":
                if line == b".\r\n":
                    self._mode = "cmd"
                    self._drop_at = None
                continue
            if self._mode == "auth":
                self._mode = "cmd"
                self._log_cmd({"verb": "<auth-response>", "tls": tls})
                continue
            words = line.rstrip(b"\r\n").split(None, 2)
            verb = printable(words[0], 20).upper() if words else ""
            entry = {"verb": verb, "tls": tls}
            if verb == "AUTH":
                # The mechanism only: never the credentials.
                entry["arg"] = printable(words[1], 20) if len(words) > 1 else ""
            elif len(words) > 1:
                entry["arg"] = printable(line.rstrip(b"\r\n")[len(words[0]):].strip())
            self._log_cmd(entry)

    def _log_cmd(self, entry):
        cmds = self.conn["commands"]
        if len(cmds) < MAX_LOGGED_COMMANDS:
            cmds.append(entry)
        self.save()

    async def push(self, status):
        s = status if isinstance(status, str) else status.decode("latin-1")
        if s.startswith("354"):
            self._mode = "data"
            self._data_seen = 0
            drop = self.st.beh.get().get("drop_in_data")
            self._drop_at = int(drop) if drop is not None else None
        elif s.startswith("334"):
            self._mode = "auth"
        replies = self.conn["replies"]
        if len(replies) < MAX_LOGGED_COMMANDS:
            replies.append(s.split("\r\n")[-1][:200])
        await super().push(status)
        if s.startswith("421") and self.transport is not None:
            self.transport.close()

    # ---- scripted greeting ----
    async def _handle_client(self):
        beh = self.st.beh.get()
        cap = beh.get("max_connections")
        if cap is not None and len(self.st.open) > int(cap):
            self.conn["greeting"] = "refused: max_connections"
            await self.push(beh.get("max_connections_reply",
                                    "421 4.7.0 Too many connections"))
            if self.transport is not None:
                self.transport.close()
            return
        g = beh.get("greeting")
        if g == "none":
            # Accept and never answer: the client's timeout must end it.
            self.conn["greeting"] = "none"
            self.save()
            try:
                await asyncio.sleep(float(beh.get("greeting_hold_s",
                                                  DEFAULT_GREETING_HOLD_S)))
            finally:
                # Also when the client gives up first (EOF cancels us).
                if self.transport is not None:
                    self.transport.close()
            return
        if g:
            self.conn["greeting"] = g
            await self.push(g)
            if self.transport is not None:
                self.transport.close()
            return
        self.conn["greeting"] = "220"
        await super()._handle_client()

    async def smtp_MAIL(self, arg):
        # RFC 4954 §5: a server that offers AUTH accepts MAIL's AUTH=
        # parameter; aiosmtpd 1.4 answers 555 to it. Set it aside (the
        # handler records it with the other options).
        self.mail_auth_param = None
        if arg:
            words = arg.split(" ")
            keep = [w for w in words[1:] if not w.upper().startswith("AUTH=")]
            if len(keep) < len(words) - 1:
                self.mail_auth_param = [w for w in words[1:] if w not in keep][0]
                arg = " ".join(words[:1] + keep)
        await super().smtp_MAIL(arg)

    async def smtp_STARTTLS(self, arg):
        broken = self.st.beh.get().get("starttls_broken")
        if broken and not arg and not self.tls_up():
            # "220 ready", then the handshake breaks: once the client's
            # first TLS bytes (its ClientHello) arrive, "garbage" answers
            # bytes that are no TLS record and closes, "close" just
            # closes (data_received does it).
            await self.push("220 2.0.0 Ready to start TLS")
            self._broken = broken
            self.conn["handshake_error"] = "broken on purpose: %s" % broken
            self.save()
            return
        try:
            await super().smtp_STARTTLS(arg)
        except Exception as e:
            self.conn["handshake_error"] = repr(e.__cause__ or e)
            self.save()
            raise


def new_conn_record(state, peer, mode):
    return {
        "seq": state.rec.next_conn(),
        "peer": list(peer[:2]) if peer else None,
        "opened": time.time(),
        "closed": None,
        "tls_mode": mode,
        "tls": None,
        "handshake_error": None,
        "greeting": None,
        "clear_bytes": 0,
        "commands": [],
        "replies": [],
        "auth": [],
        "auth_user": None,
        "messages": 0,
        "concurrent": None,
    }


class Handler:
    """aiosmtpd hooks: scripted replies, and the message records."""

    def __init__(self, state):
        self.st = state

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        beh = self.st.beh.get()
        r = self.st.beh.reply("ehlo")
        if r:
            return [r]
        drop = {x.upper() for x in beh.get("ehlo_remove", [])}
        body = [x[4:] for x in responses[1:]
                if x[4:].split(" ")[0].upper() not in drop]
        body[-1:-1] = list(beh.get("ehlo_add", []))
        lines = [responses[0][4:]] + body
        return ["250%s%s" % ("-" if i < len(lines) - 1 else " ", x)
                for i, x in enumerate(lines)]

    async def handle_MAIL(self, server, session, envelope, address, options):
        sender = "" if address == "<>" else address
        beh = self.st.beh.get()
        t = beh.get("throttle")
        if t and server.conn["messages"] >= int(t.get("per_connection", 1)):
            return t.get("reply", "421 4.7.0 Too many messages, slow down")
        r = self.st.beh.reply("mail", sender or "<>") or "250 2.1.0 Ok"
        if r.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            if server.mail_auth_param:
                envelope.mail_options.append(server.mail_auth_param)
            envelope.rcpt_rejected = []
        return r

    async def handle_RCPT(self, server, session, envelope, address, options):
        r = self.st.beh.reply("rcpt", address) or "250 2.1.5 Ok"
        if r.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        else:
            getattr(envelope, "rcpt_rejected", []).append([address, r])
        return r

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        reply = self.st.beh.reply("data", sender or "<>")
        conn = server.conn
        rec = {
            "conn": conn["seq"],
            "conn_msg_index": conn["messages"] + 1,
            "peer": conn["peer"],
            "time": time.time(),
            "mail_from": sender,
            "mail_options": list(envelope.mail_options),
            "rcpt_tos": list(envelope.rcpt_tos),
            "rcpt_options": list(envelope.rcpt_options),
            "rcpt_rejected": getattr(envelope, "rcpt_rejected", []),
            "tls": tls_info(server.transport),
            "auth_user": conn["auth_user"] if session.authenticated else None,
            "ehlo": session.host_name,
        }
        # Recorded before the reply, as a real server commits before its
        # 250: a client killed while waiting for it sends the message again.
        rec["reply"] = reply or "250 2.0.0 Ok: queued as %d" % (
            self.st.rec.msg_seq + 1)
        rec["accepted"] = rec["reply"].startswith("2")
        seq = self.st.rec.save_message(rec, data)
        if rec["accepted"]:
            conn["messages"] += 1
            server.save()
        note("conn %d: message %d from <%s> to %s, %d bytes: %s", conn["seq"],
             seq, sender, rec["rcpt_tos"], len(data), rec["reply"])
        delay = self.st.beh.get().get("delay_data_reply_ms")
        if delay:
            await asyncio.sleep(float(delay) / 1000.0)
        # Held until the test changes the behaviour (bounded: 120 s).
        if self.st.beh.get().get("hold_data_reply"):
            note("conn %d: holding the reply to the final dot", conn["seq"])
            end = time.monotonic() + 120
            while self.st.beh.get().get("hold_data_reply") and \
                    time.monotonic() < end:
                await asyncio.sleep(0.05)
            note("conn %d: reply to the final dot released", conn["seq"])
        return rec["reply"]


def make_authenticator(state):
    def authenticator(server, session, envelope, mechanism, auth_data):
        user = auth_data.login.decode("utf-8", "replace")
        scripted = state.beh.reply("auth")
        if scripted:
            ok = False
        else:
            ok = state.users.get(user) == auth_data.password.decode(
                "utf-8", "replace")
        server.conn["auth"].append({"mech": mechanism, "user": user,
                                    "ok": ok, "tls": server.tls_up()})
        if ok:
            server.conn["auth_user"] = user
        server.save()
        if scripted:
            return AuthResult(success=False, handled=False, message=scripted)
        return AuthResult(success=ok, handled=False, auth_data=user)
    return authenticator


class ImplicitTLS(asyncio.sslproto.SSLProtocol):
    """Implicit TLS the way loop.create_server(ssl=...) does it, with the
    TCP connection recorded before the handshake, so a client that rejects
    the certificate still shows up in the connection log."""

    def __init__(self, loop, state, make_app, ctx):
        self.st = state
        waiter = loop.create_future()
        self.app = make_app()
        super().__init__(loop, self.app, ctx, waiter, server_side=True)
        waiter.add_done_callback(self._handshake_done)

    def connection_made(self, transport):
        peer = transport.get_extra_info("peername")
        self.app.conn = new_conn_record(self.st, peer, "implicit")
        self.st.rec.save_conn(self.app.conn)
        super().connection_made(transport)

    def _handshake_done(self, fut):
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None and self.app.conn is not None:
            self.app.conn["handshake_error"] = repr(exc)
            self.app.conn["closed"] = time.time()
            self.st.rec.save_conn(self.app.conn)


async def serve(args):
    loop = asyncio.get_running_loop()
    state = State(args)
    ctx = None
    if args.tls != "none":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
    mechs = [m.upper() for m in args.auth_mechs.split(",") if m]
    exclude = [m for m in ("PLAIN", "LOGIN") if m not in mechs]
    auth = bool(state.users)

    def make_app(implicit=False):
        return UpstreamSMTP(
            state, implicit=implicit,
            handler=Handler(state), hostname=HOSTNAME, loop=loop,
            enable_SMTPUTF8=True, decode_data=False,
            tls_context=ctx if args.tls == "starttls" else None,
            require_starttls=False,
            auth_required=auth,
            # AUTH only after STARTTLS; implicit TLS is TLS from the start,
            # and "none" is plain on purpose.
            auth_require_tls=(args.tls == "starttls"),
            auth_exclude_mechanism=exclude,
            authenticator=make_authenticator(state),
            timeout=args.idle_timeout)

    if args.tls == "implicit":
        def factory():
            return ImplicitTLS(loop, state, lambda: make_app(True), ctx)
    else:
        factory = make_app
    host, port = args.listen.rsplit(":", 1)
    server = await loop.create_server(factory, host, int(port),
                                      reuse_address=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    with open(args.ready + ".tmp", "w") as f:
        f.write("%s %s %d\n" % (host, port, os.getpid()))
    os.replace(args.ready + ".tmp", args.ready)
    note("listening on %s (tls %s, auth %s, mechanisms %s)", args.listen,
         args.tls, "required" if auth else "off", ",".join(mechs) or "-")
    # Never outlive the test run that started us (a killed pytest leaves
    # no teardown behind).
    parent = os.getppid()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except asyncio.TimeoutError:
            if os.getppid() != parent:
                note("parent %d gone; stopping", parent)
                stop.set()
    server.close()
    for c in list(state.open):
        if c.transport is not None:
            c.transport.abort()
    await asyncio.sleep(0.05)
    note("stopped")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="ADDR:PORT")
    p.add_argument("--tls", choices=("none", "starttls", "implicit"),
                   default="starttls")
    p.add_argument("--cert", help="PEM certificate (chain)")
    p.add_argument("--key", help="PEM private key")
    p.add_argument("--users", help="JSON file {name: password}; AUTH is "
                   "required when it names anyone")
    p.add_argument("--auth-mechs", default="PLAIN,LOGIN",
                   help="mechanisms offered (comma separated)")
    p.add_argument("--behaviour", required=True, help="JSON behaviour file")
    p.add_argument("--record", required=True, help="directory to record in")
    p.add_argument("--ready", required=True,
                   help="file created once the server listens")
    p.add_argument("--idle-timeout", type=float, default=300.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    if args.tls != "none" and not (args.cert and args.key):
        p.error("--tls %s needs --cert and --key" % args.tls)
    logging.basicConfig(stream=sys.stderr,
                        level=logging.INFO if args.verbose else logging.WARNING,
                        format="upstream %(name)s %(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message="Requiring AUTH while not")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
