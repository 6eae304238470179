"""
tests/e2e/tlsutil.py - A throw-away CA for the listener TLS tests, made
with the openssl CLI in the test's own directory, and client helpers that
verify relayd's certificate chain and name against it.

  ca = TestCA(directory)            the CA (ca.crt / ca.key)
  ca.leaf("relay.test")             -> (cert_path, key_path); the cert file
                                       holds leaf + intermediate (a full
                                       chain), signed by an intermediate
  ca.client_context()               ssl.SSLContext trusting only this CA,
                                       checking the host name
  fingerprint(ssl_socket)           SHA-256 of the peer's leaf certificate
  leaf_fingerprint_of_file(path)    SHA-256 of the first certificate in path
"""
import hashlib
import os
import ssl
import subprocess
import time

TLS_NAME = "relay.test"   # conftest's default hostname


def _openssl(*args, cwd):
    r = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise AssertionError("openssl %s failed: %s" %
                             (" ".join(args), r.stderr.decode()[-2000:]))


class TestCA:
    __test__ = False   # not a pytest class

    def __init__(self, directory, name="relayd e2e test CA"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.cert = os.path.join(directory, "ca.crt")
        self.key = os.path.join(directory, "ca.key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
                 "-out", "ca.crt", "-days", "3", "-subj", "/CN=%s" % name,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
        # An intermediate, so the served chain matters: a client that only
        # trusts the root can verify the leaf only if relayd sends both.
        self.inter_cert = os.path.join(directory, "inter.crt")
        with open(os.path.join(directory, "inter.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                    "keyUsage=critical,keyCertSign,cRLSign\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                 "inter.key", "-out", "inter.csr", "-subj",
                 "/CN=%s intermediate" % name, cwd=directory)
        _openssl("x509", "-req", "-in", "inter.csr", "-CA", "ca.crt",
                 "-CAkey", "ca.key", "-set_serial", self._serial(), "-days", "3",
                 "-extfile", "inter.ext", "-out", "inter.crt", cwd=directory)
        self._n = 0

    @staticmethod
    def _serial():
        return str(time.time_ns() // 1000)

    def leaf(self, dns=TLS_NAME, tag=None):
        """A server certificate for dns, signed by the intermediate.
        Returns (fullchain_path, key_path); each call makes a new key."""
        self._n += 1
        tag = tag or "leaf%d" % self._n
        d = self.dir
        with open(os.path.join(d, tag + ".ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\n"
                    "subjectAltName=DNS:%s\n" % dns)
        _openssl("req", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                 tag + ".key", "-out", tag + ".csr", "-subj", "/CN=%s" % dns,
                 cwd=d)
        _openssl("x509", "-req", "-in", tag + ".csr", "-CA", "inter.crt",
                 "-CAkey", "inter.key", "-set_serial", self._serial(),
                 "-days", "3", "-extfile", tag + ".ext", "-out",
                 tag + ".only.crt", cwd=d)
        chain = os.path.join(d, tag + ".crt")
        with open(chain, "wb") as out:
            for part in (tag + ".only.crt", "inter.crt"):
                with open(os.path.join(d, part), "rb") as f:
                    out.write(f.read())
        return chain, os.path.join(d, tag + ".key")

    def client_context(self):
        """Verifies the chain up to this CA only, and the host name."""
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def leaf_fingerprint_of_file(chain_path):
    """SHA-256 of the first (leaf) certificate in a PEM file."""
    with open(chain_path) as f:
        pem = f.read()
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    der = ssl.PEM_cert_to_DER_cert(pem[:end] + "\n")
    return hashlib.sha256(der).hexdigest()


def fingerprint(ssl_sock):
    return hashlib.sha256(ssl_sock.getpeercert(binary_form=True)).hexdigest()


# ---- relayd with TLS listeners ---------------------------------------------

import socket

from conftest import SmtpRaw


def free_port(addr):
    s = socket.socket()
    try:
        s.bind((addr, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def tls_relayd(factory, ca, modes=("submission", "smtps"), cert=None,
               start=True, **conf):
    """A relayd whose listeners are modes (in that order) on its own
    127.0.0.x, with a certificate from ca (or cert = (chain, key)).
    r.ports[mode] is each listener's port; r.cert the (chain, key)."""
    cert = cert or ca.leaf()
    r = factory(start=False, tls_cert_file=cert[0], tls_key_file=cert[1],
                **conf)
    r.ports = {}
    items = []
    for i, m in enumerate(modes):
        p = r.port if i == 0 else free_port(r.addr)
        r.ports[m] = p
        items.append("%s:%d/%s" % (r.addr, p, m))
    r.conf["listen"] = ", ".join(items)
    r.write_conf()
    r.cert = cert
    if start:
        r.start()
    return r


def connect(r, mode, ctx=None, greet=True, timeout=10.0):
    """A SmtpRaw to r's listener of that mode; smtps is wrapped in TLS
    (ctx verifies chain and name) before the greeting is read."""
    c = SmtpRaw(r.addr, r.ports[mode], timeout=timeout)
    if mode == "smtps":
        c.sock = ctx.wrap_socket(c.sock, server_hostname=TLS_NAME)
    if greet:
        g = c.reply()
        assert g.code == 220, g
        c.greeting = g
    return c


def starttls(c, ctx):
    """STARTTLS on an open SmtpRaw (after EHLO): 220, then the handshake
    over the same socket, verifying chain and name."""
    rep = c.cmd("STARTTLS")
    assert rep.pair == (220, "2.0.0"), rep
    assert c.buf == b"", "plaintext after the 220: %r" % c.buf
    c.sock = ctx.wrap_socket(c.sock, server_hostname=TLS_NAME)
    return c
