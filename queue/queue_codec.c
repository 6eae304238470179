/*
 * queue/queue_codec.c - The index record codec (the value stored under a
 * qid in the "msg" database) and queue_msg memory. Decoding is fed bytes
 * from disk (and from the fuzzer): every read is bounds-checked, every
 * allocation is bounded by the input length, and anything malformed is
 * -EINVAL. Encoding always writes the current format (2); decoding reads
 * formats 1 and 2.
 *
 * Primitives: varint = unsigned LEB128, at most 10 bytes; svarint =
 * zigzag varint; str = varint length + bytes, no NUL inside; ostr =
 * varint 0 for NULL, else length + 1, then bytes; blob = varint length +
 * bytes.
 *
 * Format 1 (relayd up to bb1fcad):
 *
 *   u8 version (1)
 *   svarint arrival, varint size, u8 state, u8 flags
 *   str sender, ostr envid
 *   varint nrcpt, then per recipient:
 *     str addr, ostr orcpt, u8 notify, u8 state, varint attempts,
 *     svarint next_attempt, ostr last_reply
 *
 * Format 2 (the direct-delivery, DKIM and statistics release):
 *
 *   u8 version (2)
 *   svarint arrival (s), varint arrival_ms (0-999), varint size,
 *   u8 state, u8 flags
 *   str sender, ostr envid, ostr dkim_sig (<= QUEUE_DKIM_SIG_MAX)
 *   varint nrcpt, then per recipient:
 *     str addr, ostr orcpt, u8 notify, u8 state, varint attempts,
 *     svarint next_attempt, ostr last_reply,
 *     ostr dest (<= QUEUE_DEST_MAX), ostr mx (<= QUEUE_MX_MAX),
 *     svarint last_try, blob ext (<= QUEUE_EXT_MAX)
 *   blob ext (<= QUEUE_EXT_MAX)
 *
 * Telling them apart: every record of every release starts with its
 * version byte (format 1 wrote 1 from the start), so the first byte
 * decides; anything else is -EINVAL. The index's format as a whole is
 * the "format" key of the "meta" DB (queue_int.h), written last by the
 * in-place upgrade (queue.c, recovery's restore phase), so a crash
 * mid-upgrade leaves a mix of format-1 and format-2 records, each
 * readable, and the next start finishes the job.
 *
 * The ext blobs are the room for later fields without a format 3: a list
 * of TLVs (varint tag, varint length, bytes), checked for shape here.
 * Tags are assigned in this comment as releases need them (none yet); a
 * release that knows a tag lifts it into a struct field, one that does
 * not keeps the bytes verbatim (queue_msg.ext, queue_rcpt.ext) so
 * rewriting a record never drops a newer release's fields. Both blobs
 * are length-prefixed, so a truncated record is always -EINVAL.
 *
 * Per-recipient records: one LMDB value per message, with per-recipient
 * changes merged by the writer thread. queue_update_rcpts() hands the
 * writer (index, new state) pairs, not a whole record; the writer reads
 * the stored record inside its write transaction, changes only those
 * recipients and writes it back. LMDB has one writer at a time and
 * relayd has one writer thread, so two jobs finishing different
 * recipients of one message are applied one after the other to the
 * latest record: neither can undo the other. Separate entries per
 * recipient (key qid + index) would give the same guarantee at the cost
 * of a second cursor walk for every list, show, check and recovery step,
 * a key per recipient (a 5000-recipient message = 5000 B-tree entries)
 * and a new way for a message to be half there; the merge keeps "one
 * record is one message", which recovery and relayctl check rely on.
 * queue_update() (a whole record) stays for message-level changes (hold,
 * release, the delay-warning flag) by a caller that owns every
 * recipient at the time.
 */
#include "queue/queue_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"

const char *const queue_rcpt_state_names[] = {
	[QUEUE_RCPT_PENDING] = "pending",
	[QUEUE_RCPT_DEFERRED] = "deferred",
	[QUEUE_RCPT_SENT] = "sent",
	[QUEUE_RCPT_BOUNCED] = "bounced",
};

const char *const queue_msg_state_names[] = {
	[QUEUE_MSG_ACTIVE] = "active",
	[QUEUE_MSG_HOLD] = "hold",
};

/* Smallest encoding of one recipient: empty addr (1), NULL orcpt (1),
 * notify (1), state (1), attempts (1), next_attempt (1), NULL reply (1);
 * format 2 adds NULL dest (1), NULL mx (1), last_try (1), empty ext (1).
 * Bounds nrcpt before anything is allocated for it. */
#define RCPT_MIN_BYTES_V1 7
#define RCPT_MIN_BYTES_V2 11

void queue_msg_free(struct queue_msg *m)
{
	if (!m)
		return;
	for (size_t i = 0; m->rcpt && i < m->nrcpt; i++) {
		free(m->rcpt[i].addr);
		free(m->rcpt[i].orcpt);
		free(m->rcpt[i].last_reply);
		free(m->rcpt[i].dest);
		free(m->rcpt[i].mx);
		free(m->rcpt[i].ext);
	}
	free(m->rcpt);
	free(m->sender);
	free(m->envid);
	free(m->dkim_sig);
	free(m->ext);
	free(m);
}

static char *dup_opt(const char *s, bool *fail)
{
	if (!s)
		return NULL;
	char *d = strdup(s);
	if (!d)
		*fail = true;
	return d;
}

static uint8_t *dup_blob(const uint8_t *p, size_t n, bool *fail)
{
	if (!p || !n)
		return NULL;
	uint8_t *d = malloc(n);
	if (!d)
		*fail = true;
	else
		memcpy(d, p, n);
	return d;
}

struct queue_msg *queue_msg_dup(const struct queue_msg *m)
{
	bool fail = false;
	struct queue_msg *d = calloc(1, sizeof *d);
	if (!d)
		return NULL;
	*d = *m;
	d->sender = d->envid = d->dkim_sig = NULL;
	d->rcpt = NULL;
	d->nrcpt = 0;
	d->ext = NULL;
	d->sender = dup_opt(m->sender, &fail);
	d->envid = dup_opt(m->envid, &fail);
	d->dkim_sig = dup_opt(m->dkim_sig, &fail);
	d->ext = dup_blob(m->ext, m->extlen, &fail);
	if (!d->ext)
		d->extlen = 0;
	if (m->nrcpt) {
		d->rcpt = calloc(m->nrcpt, sizeof *d->rcpt);
		if (!d->rcpt)
			fail = true;
		else
			d->nrcpt = m->nrcpt;
	}
	for (size_t i = 0; d->rcpt && i < m->nrcpt; i++) {
		d->rcpt[i] = m->rcpt[i];
		d->rcpt[i].addr = dup_opt(m->rcpt[i].addr, &fail);
		d->rcpt[i].orcpt = dup_opt(m->rcpt[i].orcpt, &fail);
		d->rcpt[i].last_reply = dup_opt(m->rcpt[i].last_reply, &fail);
		d->rcpt[i].dest = dup_opt(m->rcpt[i].dest, &fail);
		d->rcpt[i].mx = dup_opt(m->rcpt[i].mx, &fail);
		d->rcpt[i].ext = dup_blob(m->rcpt[i].ext, m->rcpt[i].extlen, &fail);
		if (!d->rcpt[i].ext)
			d->rcpt[i].extlen = 0;
	}
	if (fail) {
		queue_msg_free(d);
		return NULL;
	}
	return d;
}

int64_t queue_msg_due(const struct queue_msg *m)
{
	int64_t due = -1;
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		if (r->state != QUEUE_RCPT_PENDING && r->state != QUEUE_RCPT_DEFERRED)
			continue;
		int64_t t = r->next_attempt ? r->next_attempt : m->arrival;
		/* A negative time is due at once (the schedule key clamps it to
		 * 0 too); left negative it read as "nothing left", and recovery
		 * removed the message, body and all. */
		if (t < 0)
			t = 0;
		if (due < 0 || t < due)
			due = t;
	}
	return due;
}

/* ---- encode ----------------------------------------------------------- */

static void put_varint(struct buf *b, int *err, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = 0;
	do {
		tmp[n] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v)
			tmp[n] |= 0x80;
		n++;
	} while (v);
	if (*err == 0)
		*err = buf_append(b, tmp, n);
}

static void put_svarint(struct buf *b, int *err, int64_t v)
{
	put_varint(b, err, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

static void put_u8(struct buf *b, int *err, uint8_t v)
{
	if (*err == 0)
		*err = buf_append(b, &v, 1);
}

static void put_str(struct buf *b, int *err, const char *s)
{
	size_t n = strlen(s);
	put_varint(b, err, n);
	if (*err == 0)
		*err = buf_append(b, s, n);
}

static void put_ostr(struct buf *b, int *err, const char *s)
{
	if (!s) {
		put_varint(b, err, 0);
		return;
	}
	size_t n = strlen(s);
	put_varint(b, err, (uint64_t)n + 1);
	if (*err == 0)
		*err = buf_append(b, s, n);
}

static void put_blob(struct buf *b, int *err, const uint8_t *p, size_t n)
{
	put_varint(b, err, n);
	if (*err == 0 && n)
		*err = buf_append(b, p, n);
}

static bool ostr_fits(const char *s, size_t max)
{
	return !s || strlen(s) <= max;
}

/* A blob is a well-formed TLV list: (varint tag, varint len, bytes)*. */
static bool ext_valid(const uint8_t *p, size_t n);

static bool ext_ok(const uint8_t *p, size_t n)
{
	return n <= QUEUE_EXT_MAX && (n == 0 || (p && ext_valid(p, n)));
}

int queue_msg_encode(const struct queue_msg *m, uint8_t **out, size_t *outlen)
{
	if (!m->sender || (m->nrcpt && !m->rcpt) || m->arrival_ms > 999 ||
	    !ostr_fits(m->dkim_sig, QUEUE_DKIM_SIG_MAX) ||
	    !ext_ok(m->ext, m->extlen))
		return -EINVAL;
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		if (!r->addr || !ostr_fits(r->dest, QUEUE_DEST_MAX) ||
		    !ostr_fits(r->mx, QUEUE_MX_MAX) || !ext_ok(r->ext, r->extlen))
			return -EINVAL;
	}

	/* A sticky error (as in Knot): the puts check it, we check it once. */
	struct buf b = BUF_INIT(SIZE_MAX / 2);
	int err = 0;
	put_u8(&b, &err, QUEUE_REC_VERSION);
	put_svarint(&b, &err, m->arrival);
	put_varint(&b, &err, m->arrival_ms);
	put_varint(&b, &err, m->size);
	put_u8(&b, &err, m->state);
	put_u8(&b, &err, m->flags);
	put_str(&b, &err, m->sender);
	put_ostr(&b, &err, m->envid);
	put_ostr(&b, &err, m->dkim_sig);
	put_varint(&b, &err, m->nrcpt);
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		put_str(&b, &err, r->addr);
		put_ostr(&b, &err, r->orcpt);
		put_u8(&b, &err, r->notify);
		put_u8(&b, &err, r->state);
		put_varint(&b, &err, r->attempts);
		put_svarint(&b, &err, r->next_attempt);
		put_ostr(&b, &err, r->last_reply);
		put_ostr(&b, &err, r->dest);
		put_ostr(&b, &err, r->mx);
		put_svarint(&b, &err, r->last_try);
		put_blob(&b, &err, r->ext, r->extlen);
	}
	put_blob(&b, &err, m->ext, m->extlen);
	if (err < 0) {
		buf_free(&b);
		return err == -ENOBUFS ? -ENOMEM : err;
	}
	*out = b.data;
	*outlen = b.len;
	return 0;
}

int queue_msg_encode_v1(const struct queue_msg *m, uint8_t **out,
                        size_t *outlen)
{
	if (!m->sender || (m->nrcpt && !m->rcpt))
		return -EINVAL;
	for (size_t i = 0; i < m->nrcpt; i++)
		if (!m->rcpt[i].addr)
			return -EINVAL;
	struct buf b = BUF_INIT(SIZE_MAX / 2);
	int err = 0;
	put_u8(&b, &err, 1);
	put_svarint(&b, &err, m->arrival);
	put_varint(&b, &err, m->size);
	put_u8(&b, &err, m->state);
	put_u8(&b, &err, m->flags);
	put_str(&b, &err, m->sender);
	put_ostr(&b, &err, m->envid);
	put_varint(&b, &err, m->nrcpt);
	for (size_t i = 0; i < m->nrcpt; i++) {
		const struct queue_rcpt *r = &m->rcpt[i];
		put_str(&b, &err, r->addr);
		put_ostr(&b, &err, r->orcpt);
		put_u8(&b, &err, r->notify);
		put_u8(&b, &err, r->state);
		put_varint(&b, &err, r->attempts);
		put_svarint(&b, &err, r->next_attempt);
		put_ostr(&b, &err, r->last_reply);
	}
	if (err < 0) {
		buf_free(&b);
		return err == -ENOBUFS ? -ENOMEM : err;
	}
	*out = b.data;
	*outlen = b.len;
	return 0;
}

/* ---- decode ----------------------------------------------------------- */

struct rd {
	const uint8_t *p;
	size_t n;       /* bytes left */
	int err;        /* sticky: once set, every get returns zero/NULL */
};

static uint64_t get_varint(struct rd *r)
{
	uint64_t v = 0;
	for (int shift = 0; r->err == 0; shift += 7) {
		if (r->n == 0 || shift > 63) {
			r->err = -EINVAL;
			break;
		}
		uint8_t c = *r->p++;
		r->n--;
		/* The tenth byte may only carry the top bit of a uint64. */
		if (shift == 63 && (c & 0x7e)) {
			r->err = -EINVAL;
			break;
		}
		v |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80))
			return v;
	}
	return 0;
}

static int64_t get_svarint(struct rd *r)
{
	uint64_t u = get_varint(r);
	return (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
}

static uint8_t get_u8(struct rd *r)
{
	if (r->err)
		return 0;
	if (r->n == 0) {
		r->err = -EINVAL;
		return 0;
	}
	r->n--;
	return *r->p++;
}

/* n bytes as a new NUL-terminated string; NUL inside is corrupt (the
 * result would be silently cut short). */
static char *get_bytes(struct rd *r, uint64_t n)
{
	if (r->err)
		return NULL;
	if (n > r->n || memchr(r->p, '\0', (size_t)n)) {
		r->err = -EINVAL;
		return NULL;
	}
	char *s = malloc((size_t)n + 1);
	if (!s) {
		r->err = -ENOMEM;
		return NULL;
	}
	memcpy(s, r->p, (size_t)n);
	s[n] = '\0';
	r->p += n;
	r->n -= (size_t)n;
	return s;
}

static char *get_str(struct rd *r)
{
	uint64_t n = get_varint(r);
	return get_bytes(r, n);
}

static char *get_ostr(struct rd *r)
{
	uint64_t n = get_varint(r);
	if (r->err || n == 0)
		return NULL;
	return get_bytes(r, n - 1);
}

/* An ostr of at most max bytes. */
static char *get_ostr_max(struct rd *r, size_t max)
{
	uint64_t n = get_varint(r);
	if (r->err || n == 0)
		return NULL;
	if (n - 1 > max) {
		r->err = -EINVAL;
		return NULL;
	}
	return get_bytes(r, n - 1);
}

static bool ext_valid(const uint8_t *p, size_t n)
{
	struct rd r = {p, n, 0};
	while (r.n && r.err == 0) {
		(void)get_varint(&r);           /* tag */
		uint64_t len = get_varint(&r);
		if (r.err || len > r.n)
			return false;
		r.p += len;
		r.n -= (size_t)len;
	}
	return r.err == 0;
}

/* A blob that must be a TLV list; NULL (and *len 0) when empty. */
static uint8_t *get_ext(struct rd *r, size_t *len)
{
	*len = 0;
	uint64_t n = get_varint(r);
	if (r->err || n == 0)
		return NULL;
	if (n > QUEUE_EXT_MAX || n > r->n || !ext_valid(r->p, (size_t)n)) {
		r->err = -EINVAL;
		return NULL;
	}
	uint8_t *d = malloc((size_t)n);
	if (!d) {
		r->err = -ENOMEM;
		return NULL;
	}
	memcpy(d, r->p, (size_t)n);
	r->p += n;
	r->n -= (size_t)n;
	*len = (size_t)n;
	return d;
}

int queue_msg_decode(const char *qid, const uint8_t *p, size_t n,
                     struct queue_msg **out)
{
	if (!queue_id_valid(qid) || n == 0 || (p[0] != 1 && p[0] != 2))
		return -EINVAL;
	const bool v2 = p[0] == 2;
	struct queue_msg *m = calloc(1, sizeof *m);
	if (!m)
		return -ENOMEM;
	memcpy(m->qid, qid, QUEUE_ID_SIZE);

	struct rd r = {p + 1, n - 1, 0};
	m->arrival = get_svarint(&r);
	if (v2) {
		uint64_t ms = get_varint(&r);
		if (ms > 999 && r.err == 0)
			r.err = -EINVAL;
		m->arrival_ms = (uint16_t)(ms > 999 ? 0 : ms);
	}
	m->size = get_varint(&r);
	m->state = get_u8(&r);
	m->flags = get_u8(&r);
	m->sender = get_str(&r);
	m->envid = get_ostr(&r);
	if (v2)
		m->dkim_sig = get_ostr_max(&r, QUEUE_DKIM_SIG_MAX);
	uint64_t nrcpt = get_varint(&r);
	if (r.err)
		goto fail;
	if (m->state > QUEUE_MSG_HOLD ||
	    nrcpt > r.n / (v2 ? RCPT_MIN_BYTES_V2 : RCPT_MIN_BYTES_V1)) {
		r.err = -EINVAL;
		goto fail;
	}
	if (nrcpt) {
		m->rcpt = calloc((size_t)nrcpt, sizeof *m->rcpt);
		if (!m->rcpt) {
			r.err = -ENOMEM;
			goto fail;
		}
	}
	for (size_t i = 0; i < nrcpt && r.err == 0; i++) {
		struct queue_rcpt *rc = &m->rcpt[i];
		m->nrcpt = i + 1;   /* so queue_msg_free sees what was filled */
		rc->addr = get_str(&r);
		rc->orcpt = get_ostr(&r);
		rc->notify = get_u8(&r);
		rc->state = get_u8(&r);
		uint64_t att = get_varint(&r);
		rc->next_attempt = get_svarint(&r);
		rc->last_reply = get_ostr(&r);
		if (v2) {
			rc->dest = get_ostr_max(&r, QUEUE_DEST_MAX);
			rc->mx = get_ostr_max(&r, QUEUE_MX_MAX);
			rc->last_try = get_svarint(&r);
			rc->ext = get_ext(&r, &rc->extlen);
		}
		if (rc->state > QUEUE_RCPT_BOUNCED || att > UINT32_MAX)
			r.err = r.err ? r.err : -EINVAL;
		rc->attempts = (uint32_t)att;
	}
	if (v2 && r.err == 0)
		m->ext = get_ext(&r, &m->extlen);
	/* Trailing bytes mean a record we do not understand. */
	if (r.err == 0 && r.n != 0)
		r.err = -EINVAL;
	if (r.err)
		goto fail;
	*out = m;
	return 0;
fail:
	queue_msg_free(m);
	return r.err;
}

/* ---- per-recipient merge (queue_update_rcpts) ------------------------- */

static int change_valid(const struct queue_rcpt_change *c)
{
	if (c->state > QUEUE_RCPT_BOUNCED ||
	    !ostr_fits(c->dest, QUEUE_DEST_MAX) || !ostr_fits(c->mx, QUEUE_MX_MAX))
		return -EINVAL;
	return 0;
}

int queue_msg_apply_rcpts(struct queue_msg *m,
                          const struct queue_rcpt_change *ch, size_t n)
{
	/* Checked and copied first, so a failure leaves m as it was. */
	for (size_t i = 0; i < n; i++)
		if (ch[i].index >= m->nrcpt || change_valid(&ch[i]))
			return -EINVAL;
	struct strs { char *reply, *dest, *mx; } *s = calloc(n ? n : 1, sizeof *s);
	if (!s)
		return -ENOMEM;
	bool fail = false;
	for (size_t i = 0; i < n; i++) {
		s[i].reply = dup_opt(ch[i].last_reply, &fail);
		s[i].dest = dup_opt(ch[i].dest, &fail);
		s[i].mx = dup_opt(ch[i].mx, &fail);
	}
	if (fail) {
		for (size_t i = 0; i < n; i++) {
			free(s[i].reply);
			free(s[i].dest);
			free(s[i].mx);
		}
		free(s);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		struct queue_rcpt *r = &m->rcpt[ch[i].index];
		free(r->last_reply);
		free(r->dest);
		free(r->mx);
		r->state = ch[i].state;
		r->attempts = ch[i].attempts;
		r->next_attempt = ch[i].next_attempt;
		r->last_try = ch[i].last_try;
		r->last_reply = s[i].reply;
		r->dest = s[i].dest;
		r->mx = s[i].mx;
	}
	free(s);
	return 0;
}

int queue_rcpt_change_check(const struct queue_rcpt_change *ch, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (change_valid(&ch[i]))
			return -EINVAL;
	return 0;
}
