"""
tests/e2e/dsn.py - Reads a delivery status notification (RFC 3464) with
Python's email package, for the delivery tests: the multipart/report
structure, the per-message fields, one dict per recipient, and the
returned content (message/rfc822 or text/rfc822-headers). Field names are
lower-cased; values are unfolded strings.

Reports about internationalized mail use RFC 6533's types instead:
message/global-delivery-status (UTF-8 fields, read here from the raw
bytes, which must be valid UTF-8) and message/global or
message/global-headers for the returned content (parsed from its UTF-8
text, so header values are Unicode strings); d.is_global says which.

  d = parse_dsn(data)             asserts the RFC 3464 / 6522 structure
  d.fields["reporting-mta"]       "dns;relay.test"
  d.recipient("a@b.test")         {"final-recipient": ..., "action": ...}
  typed(d.fields["reporting-mta"]) -> ("dns", "relay.test")
"""
import email
import email.policy


def typed(value):
    """'rfc822; a@b' -> ('rfc822', 'a@b'): an address-type or
    diagnostic-type field, split at its first ';' (RFC 3464 §2.1.2)."""
    assert value is not None, "missing field"
    kind, sep, rest = value.partition(";")
    assert sep, "no ';' in typed field %r" % value
    return kind.strip().lower(), rest.strip()


def _raw_parts(data, boundary):
    """The bytes of each body part of a multipart, headers included."""
    delim = b"\r\n--" + boundary.encode()
    chunks = data.split(delim)
    out = []
    for c in chunks[1:]:
        if c.startswith(b"--"):
            break
        assert c.startswith(b"\r\n"), "delimiter line not ended: %r" % c[:40]
        out.append(c[2:])
    return out


def _split_part(raw):
    i = raw.find(b"\r\n\r\n")
    assert i >= 0, "no end of part header in %r" % raw[:200]
    return raw[:i + 2], raw[i + 4:]


def _utf8_blocks(text):
    """RFC 3464 §2.1 blocks of fields, separated by empty lines; folded
    lines joined. One dict per block."""
    out = []
    for block in text.split("\r\n\r\n"):
        if not block.strip():
            continue
        fields, name = {}, None
        for line in block.strip("\r\n").split("\r\n"):
            if line[:1] in (" ", "\t"):
                assert name, "continuation before any field: %r" % line
                fields[name] += " " + line.strip()
                continue
            k, sep, v = line.partition(":")
            assert sep, "not a field: %r" % line
            name = k.strip().lower()
            assert name not in fields, "field %s repeated in one block" % k
            fields[name] = v.strip()
        out.append({k: " ".join(v.split()) for k, v in fields.items()})
    return out


def _fields(block):
    out = {}
    for name, value in block.items():
        key = name.lower()
        assert key not in out, "field %s repeated in one block" % name
        out[key] = " ".join(str(value).split())
    return out


class DSN:
    def __init__(self, data):
        self.raw = data
        self.msg = email.message_from_bytes(data, policy=email.policy.default)
        m = self.msg
        assert m.get_content_type() == "multipart/report", m.get_content_type()
        assert m.get_param("report-type") == "delivery-status", \
            "report-type is %r" % m.get_param("report-type")
        parts = m.get_payload()
        assert isinstance(parts, list) and len(parts) in (2, 3), \
            "multipart/report with %d parts" % (len(parts) if isinstance(parts, list) else -1)
        # RFC 6522 §3: the first part is human-readable, the second the
        # machine-readable report, the third (optional) the returned content.
        self.text_part = parts[0]
        self.text = (parts[0].get_content()
                     if parts[0].get_content_maintype() == "text" else "")
        status = parts[1]
        self.status_type = status.get_content_type()
        self.is_global = self.status_type == "message/global-delivery-status"
        raw_parts = _raw_parts(data, m.get_param("boundary"))
        assert len(raw_parts) == len(parts), (len(raw_parts), len(parts))
        if self.is_global:
            # RFC 6533 §6.1: UTF-8 fields, 8bit; not parsed by the email
            # package as a report, so read here.
            body = _split_part(raw_parts[1])[1]
            blocks = _utf8_blocks(body.decode("utf-8"))
            assert len(blocks) >= 2, "global-delivery-status blocks: %r" % (
                blocks,)
            self.fields = blocks[0]
            self.recipients = blocks[1:]
        else:
            assert self.status_type == "message/delivery-status", \
                self.status_type
            blocks = status.get_payload()
            assert isinstance(blocks, list) and len(blocks) >= 2, \
                "delivery-status needs a per-message block and at least " \
                "one per-recipient block, got %r" % (blocks,)
            self.fields = _fields(blocks[0])
            self.recipients = [_fields(b) for b in blocks[1:]]
        self.returned_type = None
        self.returned = None
        if len(parts) == 3:
            third = parts[2]
            self.returned_type = third.get_content_type()
            if self.returned_type == "message/rfc822":
                self.returned = third.get_payload(0)
            elif self.returned_type == "text/rfc822-headers":
                text = third.get_payload(decode=True)
                self.returned = email.message_from_bytes(
                    text, policy=email.policy.default)
                self.returned_raw = text
            elif self.returned_type in ("message/global",
                                        "message/global-headers"):
                # RFC 6532 §3.7, RFC 6533 §6.3: UTF-8 header fields.
                text = _split_part(raw_parts[2])[1]
                self.returned_raw = text
                self.returned = email.message_from_string(
                    text.decode("utf-8"), policy=email.policy.default)
            else:
                raise AssertionError("unexpected third part %s" %
                                     self.returned_type)

    def recipient(self, addr):
        """The per-recipient block whose Final-Recipient is addr."""
        found = [r for r in self.recipients
                 if typed(r.get("final-recipient"))[1].lower() == addr.lower()]
        assert len(found) == 1, "%d blocks for %s in %r" % (
            len(found), addr, self.recipients)
        return found[0]

    def final_recipients(self):
        return sorted(typed(r["final-recipient"])[1] for r in self.recipients)

    @property
    def queue_id(self):
        return self.fields.get("x-relayd-queue-id")


def parse_dsn(data):
    return DSN(data)
