/*
 * queue/queue_codec.c - The index record codec (the value stored under a
 * qid in the "msg" database) and queue_msg memory. Decoding is fed bytes
 * from disk (and from the fuzzer): every read is bounds-checked, every
 * allocation is bounded by the input length, and anything malformed is
 * -EINVAL.
 *
 * Record, version 1 (varint = unsigned LEB128, at most 10 bytes;
 * svarint = zigzag varint; str = varint length + bytes, no NUL inside;
 * ostr = varint 0 for NULL, else length + 1, then bytes):
 *
 *   u8 version (1)
 *   svarint arrival, varint size, u8 state, u8 flags
 *   str sender, ostr envid
 *   varint nrcpt, then per recipient:
 *     str addr, ostr orcpt, u8 notify, u8 state, varint attempts,
 *     svarint next_attempt, ostr last_reply
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
 * notify (1), state (1), attempts (1), next_attempt (1), NULL reply (1).
 * Bounds nrcpt before anything is allocated for it. */
#define RCPT_MIN_BYTES 7

void queue_msg_free(struct queue_msg *m)
{
	if (!m)
		return;
	for (size_t i = 0; m->rcpt && i < m->nrcpt; i++) {
		free(m->rcpt[i].addr);
		free(m->rcpt[i].orcpt);
		free(m->rcpt[i].last_reply);
	}
	free(m->rcpt);
	free(m->sender);
	free(m->envid);
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

struct queue_msg *queue_msg_dup(const struct queue_msg *m)
{
	bool fail = false;
	struct queue_msg *d = calloc(1, sizeof *d);
	if (!d)
		return NULL;
	*d = *m;
	d->sender = d->envid = NULL;
	d->rcpt = NULL;
	d->nrcpt = 0;
	d->sender = dup_opt(m->sender, &fail);
	d->envid = dup_opt(m->envid, &fail);
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

int queue_msg_encode(const struct queue_msg *m, uint8_t **out, size_t *outlen)
{
	if (!m->sender || (m->nrcpt && !m->rcpt))
		return -EINVAL;
	for (size_t i = 0; i < m->nrcpt; i++)
		if (!m->rcpt[i].addr)
			return -EINVAL;

	/* A sticky error (as in Knot): the puts check it, we check it once. */
	struct buf b = BUF_INIT(SIZE_MAX / 2);
	int err = 0;
	put_u8(&b, &err, QUEUE_REC_VERSION);
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

int queue_msg_decode(const char *qid, const uint8_t *p, size_t n,
                     struct queue_msg **out)
{
	if (!queue_id_valid(qid) || n == 0 || p[0] != QUEUE_REC_VERSION)
		return -EINVAL;
	struct queue_msg *m = calloc(1, sizeof *m);
	if (!m)
		return -ENOMEM;
	memcpy(m->qid, qid, QUEUE_ID_SIZE);

	struct rd r = {p + 1, n - 1, 0};
	m->arrival = get_svarint(&r);
	m->size = get_varint(&r);
	m->state = get_u8(&r);
	m->flags = get_u8(&r);
	m->sender = get_str(&r);
	m->envid = get_ostr(&r);
	uint64_t nrcpt = get_varint(&r);
	if (r.err)
		goto fail;
	if (m->state > QUEUE_MSG_HOLD || nrcpt > r.n / RCPT_MIN_BYTES) {
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
		if (rc->state > QUEUE_RCPT_BOUNCED || att > UINT32_MAX)
			r.err = r.err ? r.err : -EINVAL;
		rc->attempts = (uint32_t)att;
	}
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
