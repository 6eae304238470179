"""
tests/e2e/dnsstub.py - A small DNS server for the answers dnsmasq cannot
give (SERVFAIL, REFUSED, truncation without TCP, null MX, silence,
arbitrary records), run as its own process by dnsutil.DnsStub:

    /usr/bin/python3 dnsstub.py CONFIG.json

CONFIG: {"addr": "127.0.0.1" or "::1", "port": 0, "tcp": false,
         "ready": "/path/ready", "log": "/path/queries",
         "names": {"name.test": BEHAVIOUR, ...}}
BEHAVIOUR: {"rcode": "SERVFAIL"|"REFUSED"|"NXDOMAIN"|"NOERROR",
            "tc": true (UDP answers truncated, empty),
            "drop": true (never answer),
            "records": ["name. 300 IN MX 0 .", ...] (answer section),
            "authority": ["test. 300 IN SOA ns.test. h.test. 1 2 3 4 60"]}
A name not in the table gets REFUSED. Each query is logged as one line
"PROTO NAME TYPE" (flushed) before it is answered; the bound port is
written to `ready` once both sockets listen. Stops on SIGTERM.
"""
import json
import os
import selectors
import signal
import socket
import sys

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


def load(path):
    with open(path) as f:
        return json.load(f)


def answer(cfg, wire, proto):
    try:
        q = dns.message.from_wire(wire)
    except Exception:
        return None
    if not q.question:
        return None
    qname = q.question[0].name.to_text(omit_final_dot=True).lower()
    qtype = dns.rdatatype.to_text(q.question[0].rdtype)
    with open(cfg["log"], "a") as f:
        f.write("%s %s %s\n" % (proto, qname, qtype))
        f.flush()
    b = cfg["names"].get(qname)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    if b is None:
        r.set_rcode(dns.rcode.REFUSED)
        return r.to_wire()
    if b.get("drop"):
        return None
    r.set_rcode(dns.rcode.from_text(b.get("rcode", "NOERROR")))
    if b.get("tc") and proto == "udp":
        r.flags |= dns.flags.TC
        return r.to_wire()
    for text in b.get("records", []):
        rr = dns.rrset.from_text(*text.split(None, 4)[0:4],
                                 text.split(None, 4)[4])
        if rr.rdtype == q.question[0].rdtype or \
                rr.rdtype == dns.rdatatype.CNAME:
            r.answer.append(rr)
    for text in b.get("authority", []):
        r.authority.append(dns.rrset.from_text(*text.split(None, 4)[0:4],
                                               text.split(None, 4)[4]))
    return r.to_wire()


def main():
    cfg = load(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    fam = socket.AF_INET6 if ":" in cfg["addr"] else socket.AF_INET
    udp = socket.socket(fam, socket.SOCK_DGRAM)
    udp.bind((cfg["addr"], cfg.get("port", 0)))
    port = udp.getsockname()[1]
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ, "udp")
    if cfg.get("tcp"):
        tcp = socket.socket(fam, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((cfg["addr"], port))
        tcp.listen(16)
        sel.register(tcp, selectors.EVENT_READ, "tcp")
    tmp = cfg["ready"] + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, cfg["ready"])
    while True:
        for key, _ in sel.select():
            if key.data == "udp":
                wire, peer = udp.recvfrom(65535)
                out = answer(cfg, wire, "udp")
                if out is not None:
                    udp.sendto(out, peer)
            else:
                conn, _ = key.fileobj.accept()
                conn.settimeout(2.0)
                try:
                    hdr = conn.recv(2)
                    if len(hdr) == 2:
                        n = int.from_bytes(hdr, "big")
                        wire = b""
                        while len(wire) < n:
                            chunk = conn.recv(n - len(wire))
                            if not chunk:
                                break
                            wire += chunk
                        out = answer(cfg, wire, "tcp")
                        if out is not None:
                            conn.sendall(len(out).to_bytes(2, "big") + out)
                except OSError:
                    pass
                finally:
                    conn.close()


if __name__ == "__main__":
    main()
