/*
 * tools/ctl_json.c - A small JSON reader (RFC 8259) for relayd's control
 * replies ("ok {JSON}", deliver/deliver_ctl.h): validates a reply, prints
 * it flattened ("route.state: paused"), and finds a value by its dotted
 * path. No tree is built: each call reads the text again, which is at most
 * DELIVER_CTL_REPLY_MAX bytes. The input comes from another process, so
 * it is treated as hostile: every read is bounds-checked, nesting is
 * limited to CTL_JSON_DEPTH, strings must be valid UTF-8 (escapes
 * included: no lone surrogates) and memory is bounded by the input length.
 */
#include "ctl.h"

#include <errno.h>
#include <string.h>

/* Deeper nesting is refused (recursion bound). */
#define CTL_JSON_DEPTH 32

struct ctl_json {
	const unsigned char *p;
	size_t n, i;
	int depth;
	int in_array;           /* > 0: inside an array, no leaves */
	int members;            /* > 0: inside an object member's value */
	struct buf path;        /* dotted key path of the current value */
	struct buf tmp;         /* decoded strings, compacted arrays */
	/* flatten: */
	struct ctl_out *o;
	/* find: */
	const char *want;
	size_t wantlen;
	const unsigned char *found;
	size_t foundn;
};

static void ctl_json_ws(struct ctl_json *j)
{
	while (j->i < j->n && (j->p[j->i] == ' ' || j->p[j->i] == '\t' ||
	                       j->p[j->i] == '\n' || j->p[j->i] == '\r'))
		j->i++;
}

static int ctl_json_hex4(struct ctl_json *j, unsigned *v)
{
	if (j->n - j->i < 4)
		return -EPROTO;
	*v = 0;
	for (int k = 0; k < 4; k++) {
		unsigned char c = j->p[j->i++];
		unsigned d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -EPROTO;
		*v = *v << 4 | d;
	}
	return 0;
}

static int ctl_json_utf8(struct buf *b, unsigned cp)
{
	uint8_t u[4];
	size_t k;
	if (cp < 0x80) {
		u[0] = (uint8_t)cp;
		k = 1;
	} else if (cp < 0x800) {
		u[0] = (uint8_t)(0xc0 | cp >> 6);
		u[1] = (uint8_t)(0x80 | (cp & 0x3f));
		k = 2;
	} else if (cp < 0x10000) {
		u[0] = (uint8_t)(0xe0 | cp >> 12);
		u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (uint8_t)(0x80 | (cp & 0x3f));
		k = 3;
	} else {
		u[0] = (uint8_t)(0xf0 | cp >> 18);
		u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (uint8_t)(0x80 | (cp & 0x3f));
		k = 4;
	}
	return buf_append(b, u, k);
}

/* A string at j->i (the opening quote). Appends the decoded bytes to dec
 * unless it is NULL. */
static int ctl_json_string(struct ctl_json *j, struct buf *dec)
{
	int r = 0;
	if (j->i >= j->n || j->p[j->i] != '"')
		return -EPROTO;
	j->i++;
	for (;;) {
		if (j->i >= j->n)
			return -EPROTO;
		unsigned char c = j->p[j->i];
		if (c == '"') {
			j->i++;
			return 0;
		}
		if (c < 0x20)
			return -EPROTO;         /* controls must be escaped */
		if (c != '\\') {
			size_t k = ctl_utf8_len(j->p + j->i, j->n - j->i);
			if (k == 0)
				return -EPROTO;
			if (dec && (r = buf_append(dec, j->p + j->i, k)) < 0)
				return r;
			j->i += k;
			continue;
		}
		if (++j->i >= j->n)
			return -EPROTO;
		c = j->p[j->i++];
		unsigned cp;
		switch (c) {
		case '"': case '\\': case '/': cp = c; break;
		case 'b': cp = '\b'; break;
		case 'f': cp = '\f'; break;
		case 'n': cp = '\n'; break;
		case 'r': cp = '\r'; break;
		case 't': cp = '\t'; break;
		case 'u':
			if (ctl_json_hex4(j, &cp) < 0)
				return -EPROTO;
			if (cp >= 0xdc00 && cp <= 0xdfff)
				return -EPROTO;     /* lone low surrogate */
			if (cp >= 0xd800 && cp <= 0xdbff) {
				unsigned lo;
				if (j->n - j->i < 2 || j->p[j->i] != '\\' ||
				    j->p[j->i + 1] != 'u')
					return -EPROTO;
				j->i += 2;
				if (ctl_json_hex4(j, &lo) < 0 || lo < 0xdc00 ||
				    lo > 0xdfff)
					return -EPROTO;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			}
			break;
		default:
			return -EPROTO;
		}
		if (dec && (r = ctl_json_utf8(dec, cp)) < 0)
			return r;
	}
}

static bool ctl_json_digit(struct ctl_json *j)
{
	return j->i < j->n && j->p[j->i] >= '0' && j->p[j->i] <= '9';
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int ctl_json_number(struct ctl_json *j)
{
	if (j->i < j->n && j->p[j->i] == '-')
		j->i++;
	if (!ctl_json_digit(j))
		return -EPROTO;
	if (j->p[j->i] == '0')
		j->i++;
	else
		while (ctl_json_digit(j))
			j->i++;
	if (j->i < j->n && j->p[j->i] == '.') {
		j->i++;
		if (!ctl_json_digit(j))
			return -EPROTO;
		while (ctl_json_digit(j))
			j->i++;
	}
	if (j->i < j->n && (j->p[j->i] == 'e' || j->p[j->i] == 'E')) {
		j->i++;
		if (j->i < j->n && (j->p[j->i] == '+' || j->p[j->i] == '-'))
			j->i++;
		if (!ctl_json_digit(j))
			return -EPROTO;
		while (ctl_json_digit(j))
			j->i++;
	}
	return 0;
}

static int ctl_json_word(struct ctl_json *j, const char *w)
{
	size_t k = strlen(w);
	if (j->n - j->i < k || memcmp(j->p + j->i, w, k) != 0)
		return -EPROTO;
	j->i += k;
	return 0;
}

/* An array's text without the blanks between tokens. */
static int ctl_json_compact(struct buf *out, const unsigned char *p, size_t n)
{
	bool in_str = false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = p[i];
		if (in_str) {
			if (c == '\\' && i + 1 < n) {
				if (buf_append(out, p + i, 2) < 0)
					return -ENOMEM;
				i++;
				continue;
			}
			in_str = c != '"';
		} else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
			continue;
		} else {
			in_str = c == '"';
		}
		if (buf_append(out, &c, 1) < 0)
			return -ENOMEM;
	}
	return 0;
}

/* A value that is not an object with members: printed (flatten) or
 * compared with the path looked for (find). */
static int ctl_json_leaf(struct ctl_json *j, size_t start)
{
	const unsigned char *v = j->p + start;
	size_t vn = j->i - start;
	if (j->in_array)
		return 0;
	if (j->want) {
		if (!j->found && j->members > 0 && j->path.len == j->wantlen &&
		    (j->wantlen == 0 ||
		     memcmp(j->path.data, j->want, j->wantlen) == 0)) {
			j->found = v;
			j->foundn = vn;
		}
		return 0;
	}
	if (!j->o || j->members == 0)
		return 0;           /* the top level's "{}" */
	if (j->path.len > 0)    /* a key may be "" */
		ctl_out_text(j->o, j->path.data, j->path.len, 0);
	ctl_out_str(j->o, ": ");
	buf_reset(&j->tmp);
	int r = 0;
	if (v[0] == '"') {
		struct ctl_json s = {.p = v, .n = vn};
		r = ctl_json_string(&s, &j->tmp);
	} else if (v[0] == '[') {
		r = ctl_json_compact(&j->tmp, v, vn);
	} else {
		r = buf_append(&j->tmp, v, vn);     /* number, literal, {} */
	}
	if (r < 0)
		return r;
	if (j->tmp.len > 0)     /* "": tmp.data may still be NULL */
		ctl_out_text(j->o, j->tmp.data, j->tmp.len, 0);
	ctl_out_str(j->o, "\n");
	return 0;
}

static int ctl_json_value(struct ctl_json *j);

static int ctl_json_object(struct ctl_json *j, size_t start)
{
	int r;
	j->i++;                 /* '{' */
	ctl_json_ws(j);
	if (j->i < j->n && j->p[j->i] == '}') {
		j->i++;
		return ctl_json_leaf(j, start);     /* "{}" */
	}
	for (;;) {
		size_t plen = j->path.len;
		ctl_json_ws(j);
		if (!j->in_array && plen > 0 && (r = buf_append(&j->path, ".", 1)) < 0)
			return r;
		if ((r = ctl_json_string(j, j->in_array ? NULL : &j->path)) < 0)
			return r;
		ctl_json_ws(j);
		if (j->i >= j->n || j->p[j->i] != ':')
			return -EPROTO;
		j->i++;
		j->members++;
		if ((r = ctl_json_value(j)) < 0)
			return r;
		j->members--;
		j->path.len = plen;
		ctl_json_ws(j);
		if (j->i >= j->n)
			return -EPROTO;
		if (j->p[j->i] == '}') {
			j->i++;
			return 0;
		}
		if (j->p[j->i] != ',')
			return -EPROTO;
		j->i++;
	}
}

static int ctl_json_array(struct ctl_json *j, size_t start)
{
	int r;
	j->i++;                 /* '[' */
	j->in_array++;
	ctl_json_ws(j);
	if (j->i < j->n && j->p[j->i] == ']') {
		j->i++;
	} else {
		for (;;) {
			if ((r = ctl_json_value(j)) < 0)
				return r;
			ctl_json_ws(j);
			if (j->i >= j->n)
				return -EPROTO;
			if (j->p[j->i] == ']') {
				j->i++;
				break;
			}
			if (j->p[j->i] != ',')
				return -EPROTO;
			j->i++;
		}
	}
	j->in_array--;
	return ctl_json_leaf(j, start);
}

static int ctl_json_value(struct ctl_json *j)
{
	int r;
	ctl_json_ws(j);
	if (j->i >= j->n)
		return -EPROTO;
	if (j->depth >= CTL_JSON_DEPTH)
		return -EPROTO;
	size_t start = j->i;
	switch (j->p[j->i]) {
	case '{':
		j->depth++;
		r = ctl_json_object(j, start);
		j->depth--;
		return r;
	case '[':
		j->depth++;
		r = ctl_json_array(j, start);
		j->depth--;
		return r;
	case '"':
		r = ctl_json_string(j, NULL);
		break;
	case 't':
		r = ctl_json_word(j, "true");
		break;
	case 'f':
		r = ctl_json_word(j, "false");
		break;
	case 'n':
		r = ctl_json_word(j, "null");
		break;
	default:
		r = ctl_json_number(j);
		break;
	}
	return r < 0 ? r : ctl_json_leaf(j, start);
}

/* Reads the whole text, which must be one object (blanks around it are
 * allowed). */
static int ctl_json_run(struct ctl_json *j, const char *p, size_t n)
{
	j->p = (const unsigned char *)p;
	j->n = n;
	/* Paths and decoded strings are never longer than the input. */
	buf_init(&j->path, n + 1);
	buf_init(&j->tmp, 2 * n + 1);
	ctl_json_ws(j);
	int r = j->i < j->n && j->p[j->i] == '{' ? ctl_json_value(j) : -EPROTO;
	if (r == 0) {
		ctl_json_ws(j);
		if (j->i != j->n)
			r = -EPROTO;
	}
	buf_free(&j->path);
	buf_free(&j->tmp);
	return r == -ENOBUFS ? -EPROTO : r;
}

int ctl_json_check(const char *p, size_t n)
{
	struct ctl_json j = {0};
	return ctl_json_run(&j, p, n);
}

int ctl_json_flatten(struct ctl_out *o, const char *p, size_t n)
{
	/* Validate first: nothing is printed for a bad reply. */
	int r = ctl_json_check(p, n);
	if (r < 0)
		return r;
	struct ctl_json j = {.o = o};
	return ctl_json_run(&j, p, n);
}

int ctl_json_find(const char *p, size_t n, const char *path,
                  const char **v, size_t *vn)
{
	struct ctl_json j = {.want = path, .wantlen = strlen(path)};
	int r = ctl_json_run(&j, p, n);
	if (r < 0)
		return r;
	if (!j.found)
		return -ENOENT;
	*v = (const char *)j.found;
	*vn = j.foundn;
	return 0;
}

int ctl_json_each(const char *p, size_t n, const char *path,
                  int (*cb)(void *arg, const char *v, size_t vn), void *arg)
{
	const char *v;
	size_t vn;
	int r = ctl_json_find(p, n, path, &v, &vn);
	if (r < 0)
		return r;
	if (v[0] != '[')
		return -EPROTO;
	/* Already validated as a whole by the find: walk the elements. */
	struct ctl_json j = {.p = (const unsigned char *)v, .n = vn, .i = 1,
	                     .in_array = 1, .depth = 1};
	buf_init(&j.path, vn + 1);
	buf_init(&j.tmp, 2 * vn + 1);
	ctl_json_ws(&j);
	if (j.i < j.n && j.p[j.i] == ']')
		goto out;
	for (;;) {
		ctl_json_ws(&j);
		size_t start = j.i;
		if ((r = ctl_json_value(&j)) < 0)
			break;
		if ((r = cb(arg, v + start, j.i - start)) != 0)
			break;
		ctl_json_ws(&j);
		if (j.i >= j.n) {
			r = -EPROTO;
			break;
		}
		if (j.p[j.i] == ']')
			break;
		if (j.p[j.i] != ',') {
			r = -EPROTO;
			break;
		}
		j.i++;
	}
out:
	buf_free(&j.path);
	buf_free(&j.tmp);
	return r == -ENOBUFS ? -EPROTO : r;
}

int ctl_json_get_str(const char *p, size_t n, const char *path,
                     struct buf *out)
{
	const char *v;
	size_t vn;
	int r = ctl_json_find(p, n, path, &v, &vn);
	if (r < 0)
		return r;
	if (v[0] != '"')
		return -EPROTO;
	struct ctl_json s = {.p = (const unsigned char *)v, .n = vn};
	return ctl_json_string(&s, out);
}

int ctl_json_get_int(const char *p, size_t n, const char *path, int64_t *out)
{
	const char *v;
	size_t vn;
	int r = ctl_json_find(p, n, path, &v, &vn);
	if (r < 0)
		return r;
	/* Integers only: digits, an optional minus, no fraction. */
	size_t i = v[0] == '-';
	if (i >= vn)
		return -EPROTO;
	int64_t x = 0;
	for (; i < vn; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -EPROTO;
		int d = v[i] - '0';
		if (x > (INT64_MAX - d) / 10)
			return -ERANGE;
		x = x * 10 + d;
	}
	*out = v[0] == '-' ? -x : x;
	return 0;
}
