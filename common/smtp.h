/*
 * common/smtp.h - SMTP protocol limits and the one table of reply codes,
 * shared by smtpd/ (server replies) and deliver/ (classifying replies).
 * No "451 4.3.0" literal should appear anywhere but smtp.c.
 */
#ifndef RELAY_SMTP_H
#define RELAY_SMTP_H

#include <stddef.h>
#include <stdint.h>

/* RFC 5321 §4.5.3.1.4 allows 512 octets per command line, and lets service
 * extensions raise it (RFC 1869 §4, RFC 3461 §4: ENVID adds 100, ORCPT 500).
 * Like Postfix (line_length_limit) we accept 2048 including CRLF. */
#define SMTP_CMD_LINE_MAX 2048
/* RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6: a line of a message holds at most
 * 998 octets before its CRLF (long_lines: wrap or reject). */
#define SMTP_TEXT_LINE_MAX 998
/* RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with CRLF. */
#define SMTP_REPLY_LINE_MAX 512
/* RFC 5321 §4.5.3.1.1-3: local part 64, domain 255, path 256 octets. */
#define SMTP_LOCAL_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_PATH_MAX 256
/* RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients. */
#define SMTP_RCPT_MIN 100
/* RFC 3461 §4.4 (ENVID) and §4.2 (ORCPT) value lengths. */
#define SMTP_ENVID_MAX 100
#define SMTP_ORCPT_MAX 500

/* Every reply relayd sends or reasons about. Texts are compile-time format
 * strings; the only arguments ever passed are relayd's own values. */
enum smtp_reply_id {
	SMTP_R_OK,              /* 250 2.0.0 */
	SMTP_R_SENDER_OK,       /* 250 2.1.0 */
	SMTP_R_RCPT_OK,         /* 250 2.1.5 */
	SMTP_R_QUEUED,          /* 250 2.0.0 queued as %s */
	SMTP_R_BDAT_OK,         /* 250 2.0.0 %llu octets received */
	SMTP_R_VRFY,            /* 252 2.5.0 */
	SMTP_R_HELP,            /* 214 2.0.0 */
	SMTP_R_DATA_GO,         /* 354 */
	SMTP_R_BYE,             /* 221 2.0.0 */
	SMTP_R_SHUTDOWN,        /* 421 4.3.2 */
	SMTP_R_TOO_MANY_CONN,   /* 421 4.7.0 */
	SMTP_R_TOO_MANY_CONN_IP,/* 421 4.7.0 */
	SMTP_R_TOO_MANY_ERRORS, /* 421 4.7.0 */
	SMTP_R_TIMEOUT,         /* 421 4.4.2 */
	SMTP_R_DATA_SLOW,       /* 421 4.4.2 below data_min_rate */
	SMTP_R_LIFETIME,        /* 421 4.4.2 session_max_lifetime */
	SMTP_R_STORAGE_ERR,     /* 451 4.3.0 */
	SMTP_R_STORAGE_FULL,    /* 452 4.3.1 */
	SMTP_R_TOO_MANY_RCPT,   /* 452 4.5.3 */
	SMTP_R_UNKNOWN_CMD,     /* 500 5.5.1 */
	SMTP_R_LINE_TOO_LONG,   /* 500 5.5.2 */
	SMTP_R_SYNTAX,          /* 501 5.5.4 %s */
	SMTP_R_BAD_SENDER,      /* 501 5.1.7 */
	SMTP_R_BAD_RCPT,        /* 501 5.1.3 */
	SMTP_R_NOT_IMPL,        /* 502 5.5.1 %s */
	SMTP_R_EXPN,            /* 502 5.5.1 */
	SMTP_R_SEQ_HELO,        /* 503 5.5.1 */
	SMTP_R_SEQ_NESTED_MAIL, /* 503 5.5.1 */
	SMTP_R_SEQ_NEED_MAIL,   /* 503 5.5.1 */
	SMTP_R_SEQ_NEED_RCPT,   /* 503 5.5.1 */
	SMTP_R_SEQ_BDAT_MIX,    /* 503 5.5.1 */
	SMTP_R_SEQ_IN_BDAT,     /* 503 5.5.1 */
	SMTP_R_PARAM_UNKNOWN,   /* 555 5.5.4 %s */
	SMTP_R_PARAM_BAD,       /* 501 5.5.4 %s */
	SMTP_R_SIZE_TOO_BIG,    /* 552 5.3.4 */
	SMTP_R_MSG_TOO_BIG,     /* 552 5.3.4 */
	SMTP_R_NEED_UTF8,       /* 553 5.6.7 */
	SMTP_R_BARE_NEWLINE,    /* 554 5.6.0 */
	SMTP_R_NUL,             /* 554 5.6.0 */
	SMTP_R_LONG_LINE,       /* 554 5.6.0 long_lines=reject, at end of data */
	SMTP_R_TOO_MANY_HOPS,   /* 554 5.4.6 %u Received: fields, limit %u,
	                         * at end of data (hop_limit, issue 9 §3) */
	/* Relay policy (issue 4 §3; smtpd/smtpd_policy_net.h). */
	SMTP_R_ACCESS_DENIED,   /* 554 5.7.1 deny_networks, at connect */
	SMTP_R_CONN_RATE,       /* 421 4.7.0 rate_connections, at connect */
	SMTP_R_SENDER_DOMAIN,   /* 553 5.7.1 sender_domains */
	SMTP_R_RCPT_DOMAIN,     /* 550 5.7.1 recipient_domains */
	SMTP_R_MSG_RATE,        /* 450 4.7.1 rate_messages, at MAIL */
	/* STARTTLS (RFC 3207 §4) */
	SMTP_R_TLS_READY,       /* 220 2.0.0 */
	SMTP_R_TLS_UNAVAILABLE, /* 454 4.7.0 */
	SMTP_R_TLS_ACTIVE,      /* 503 5.5.1 */
	SMTP_R_TLS_IN_TXN,      /* 503 5.5.1 */
	/* AUTH (RFC 4954 §4-6) */
	SMTP_R_AUTH_CHALLENGE,  /* 334 %s (base64; may be empty) */
	SMTP_R_AUTH_OK,         /* 235 2.7.0 */
	SMTP_R_AUTH_FAILED,     /* 535 5.7.8 */
	SMTP_R_AUTH_TEMP,       /* 454 4.7.0 */
	SMTP_R_AUTH_LOCKED,     /* 454 4.7.0 (a client or name slowed down) */
	SMTP_R_AUTH_LOCKED_IP,  /* 421 4.7.0 (the client locked out) */
	SMTP_R_AUTH_UNTRACKED,  /* 421 4.7.0 (a failure the full lockout
	                         * table cannot record: fail closed) */
	SMTP_R_AUTH_CANCELLED,  /* 501 5.7.0 */
	SMTP_R_AUTH_BAD_B64,    /* 501 5.5.2 */
	SMTP_R_AUTH_MECH,       /* 504 5.5.4 */
	SMTP_R_AUTH_ALREADY,    /* 503 5.5.1 */
	SMTP_R_AUTH_IN_TXN,     /* 503 5.5.1 */
	SMTP_R_AUTH_ENCRYPT,    /* 538 5.7.11 */
	SMTP_R_AUTH_REQUIRED,   /* 530 5.7.0 */
	/* Relay access (issue 4 §3) */
	SMTP_R_RELAY_DENIED,    /* 554 5.7.1 */
	SMTP_R_CRED_SENDER,     /* 553 5.7.1 */
	SMTP_R_CRED_RCPT,       /* 550 5.7.1 */
	SMTP_R_CRED_FROM,       /* 553 5.7.1 From: header, at end of data */
	SMTP_R_QUOTA,           /* 450 4.7.1 a credential's hourly/daily quota */
	SMTP_R_DKIM_FAILED,     /* 451 4.7.0 dkim_required: signing failed */
	SMTP_R_DKIM_NO_KEY,     /* 550 5.7.1 dkim_required: no key for From: */
	/* The SMTP client's own refusals (deliver/deliver_client.c), given as
	 * a recipient's result when a message cannot go to a server as it is
	 * (issue 8 §10). */
	SMTP_R_DLV_NO_UTF8,     /* 553 5.6.7 SMTPUTF8 not offered (RFC 6531 §3.4) */
	SMTP_R_DLV_NO_8BIT,     /* 554 5.6.3 8BITMIME not offered, 8-bit body */
	/* Direct delivery's own results (deliver/deliver_mx.h,
	 * deliver/deliver_policy.h; issue 9 §3). */
	SMTP_R_DLV_NULL_MX,     /* 556 5.1.10 null MX (RFC 7505 §4.2) */
	SMTP_R_DLV_LOOP,        /* 554 5.4.6 the MX or literal is relayd */
	SMTP_R_DLV_LITERAL_REFUSED, /* 550 5.4.4 %s: address literal refused */
	SMTP_R_DLV_MX_REFUSED,  /* 451 4.4.4 %s: every MX address refused */
	SMTP_R_DLV_TLS_NOT_OFFERED, /* 451 4.7.4 policy needs TLS, not offered */
	SMTP_R_DLV_TLS_FAILED,  /* 451 4.7.5 policy needs TLS, handshake failed */
	SMTP_R_DLV_TLS_UNVERIFIED, /* 451 4.7.5 verify: certificate not valid */
	SMTP_R_DLV_NXDOMAIN,    /* 550 5.1.2 %s: the recipient domain does not exist */
	SMTP_R_DLV_BAD_DOMAIN,  /* 550 5.1.2 %s: not a valid domain name (%s) */
	SMTP_R_DLV_DNS_TEMP,    /* 451 4.4.3 %s: DNS lookup failed (%s) */
	SMTP_R_DLV_NO_MX_ADDR,  /* 451 4.4.3 %s: no address for the MX hosts */
	SMTP_R__COUNT
};

struct smtp_reply_def {
	uint16_t code;
	const char *enh;  /* RFC 3463 enhanced status code */
	const char *text; /* printf format; see the enum for its argument */
};

extern const struct smtp_reply_def smtp_replies[SMTP_R__COUNT];

#endif
