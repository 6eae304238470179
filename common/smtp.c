/*
 * common/smtp.c - The reply table: every code, enhanced status code
 * (RFC 3463) and text relayd uses, in one place.
 */
#include "smtp.h"

const struct smtp_reply_def smtp_replies[SMTP_R__COUNT] = {
	[SMTP_R_OK]              = {250, "2.0.0", "Ok"},
	[SMTP_R_SENDER_OK]       = {250, "2.1.0", "Sender ok"},
	[SMTP_R_RCPT_OK]         = {250, "2.1.5", "Recipient ok"},
	[SMTP_R_QUEUED]          = {250, "2.0.0", "Ok: queued as %s"},
	[SMTP_R_BDAT_OK]         = {250, "2.0.0", "%llu octets received"},
	[SMTP_R_VRFY]            = {252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"},
	[SMTP_R_HELP]            = {214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY"},
	[SMTP_R_DATA_GO]         = {354, "",      "End data with <CR><LF>.<CR><LF>"},
	[SMTP_R_BYE]             = {221, "2.0.0", "Bye"},
	[SMTP_R_SHUTDOWN]        = {421, "4.3.2", "Service shutting down, closing connection"},
	[SMTP_R_TOO_MANY_CONN]   = {421, "4.7.0", "Too many connections, try again later"},
	[SMTP_R_TOO_MANY_CONN_IP]= {421, "4.7.0", "Too many connections from your address, try again later"},
	[SMTP_R_TOO_MANY_ERRORS] = {421, "4.7.0", "Too many errors, closing connection"},
	[SMTP_R_TIMEOUT]         = {421, "4.4.2", "Timeout exceeded, closing connection"},
	[SMTP_R_DATA_SLOW]       = {421, "4.4.2", "Data arriving too slowly, closing connection"},
	[SMTP_R_LIFETIME]        = {421, "4.4.2", "Session lasted too long, closing connection"},
	[SMTP_R_STORAGE_ERR]     = {451, "4.3.0", "Local error in processing, try again later"},
	[SMTP_R_STORAGE_FULL]    = {452, "4.3.1", "Insufficient system storage, try again later"},
	[SMTP_R_TOO_MANY_RCPT]   = {452, "4.5.3", "Too many recipients"},
	[SMTP_R_UNKNOWN_CMD]     = {500, "5.5.1", "Command unrecognized"},
	[SMTP_R_LINE_TOO_LONG]   = {500, "5.5.2", "Line too long"},
	[SMTP_R_SYNTAX]          = {501, "5.5.4", "Syntax: %s"},
	[SMTP_R_BAD_SENDER]      = {501, "5.1.7", "Bad sender address syntax"},
	[SMTP_R_BAD_RCPT]        = {501, "5.1.3", "Bad recipient address syntax"},
	[SMTP_R_NOT_IMPL]        = {502, "5.5.1", "%s not implemented"},
	[SMTP_R_EXPN]            = {502, "5.5.1", "EXPN not supported"},
	[SMTP_R_SEQ_HELO]        = {503, "5.5.1", "Error: send HELO/EHLO first"},
	[SMTP_R_SEQ_NESTED_MAIL] = {503, "5.5.1", "Error: nested MAIL command"},
	[SMTP_R_SEQ_NEED_MAIL]   = {503, "5.5.1", "Error: need MAIL command"},
	[SMTP_R_SEQ_NEED_RCPT]   = {503, "5.5.1", "Error: need RCPT command"},
	[SMTP_R_SEQ_BDAT_MIX]    = {503, "5.5.1", "Error: DATA not allowed after BDAT"},
	[SMTP_R_SEQ_IN_BDAT]     = {503, "5.5.1", "Error: only BDAT, RSET, NOOP or QUIT during a BDAT transfer"},
	[SMTP_R_PARAM_UNKNOWN]   = {555, "5.5.4", "Unsupported parameter %s"},
	[SMTP_R_PARAM_BAD]       = {501, "5.5.4", "Bad parameter value %s"},
	[SMTP_R_SIZE_TOO_BIG]    = {552, "5.3.4", "Message size exceeds fixed limit"},
	[SMTP_R_MSG_TOO_BIG]     = {552, "5.3.4", "Message size exceeds fixed limit"},
	[SMTP_R_NEED_UTF8]       = {553, "5.6.7", "Non-ASCII address requires SMTPUTF8"},
	[SMTP_R_BARE_NEWLINE]    = {554, "5.6.0", "Message contains bare CR or LF; lines must end with CRLF"},
	[SMTP_R_NUL]             = {554, "5.6.0", "Message contains NUL characters"},
	/* A line over 998 octets (RFC 5322 §2.1.1) with long_lines = reject.
	 * 554: RFC 5321 §4.2.5/§4.3.2, the transaction failed at the end of
	 * the data (as for bare CR/LF and NUL above; 550 is for mailboxes and
	 * policy). 5.6.0, RFC 3463 "other or undefined media error": the
	 * content is malformed. Not 5.6.2/5.6.3: those name a conversion
	 * between media types (8BITMIME to 7BIT), which this is not. */
	[SMTP_R_LONG_LINE]       = {554, "5.6.0", "Message contains a line longer than 998 characters (RFC 5322 2.1.1)"},
	/* hop_limit (issue 9 §3): as many Received: fields as the limit or
	 * more. 554, like Postfix's cleanup ("too many hops") at the end of
	 * the data; 5.4.6, RFC 3463 "Routing loop detected". Both numbers are
	 * relayd's own counts. */
	[SMTP_R_TOO_MANY_HOPS]   = {554, "5.4.6", "Too many hops (%u Received: header fields, limit %u), mail loop suspected"},
	[SMTP_R_ACCESS_DENIED]   = {554, "5.7.1", "Access denied"},
	[SMTP_R_CONN_RATE]       = {421, "4.7.0", "Too many connections, slow down"},
	[SMTP_R_SENDER_DOMAIN]   = {553, "5.7.1", "Sender domain not allowed"},
	[SMTP_R_RCPT_DOMAIN]     = {550, "5.7.1", "Recipient domain not allowed"},
	[SMTP_R_MSG_RATE]        = {450, "4.7.1", "Message rate limit exceeded, try again later"},
	[SMTP_R_TLS_READY]       = {220, "2.0.0", "Ready to start TLS"},
	[SMTP_R_TLS_UNAVAILABLE] = {454, "4.7.0", "TLS not available due to temporary reason"},
	[SMTP_R_TLS_ACTIVE]      = {503, "5.5.1", "Error: TLS already active"},
	[SMTP_R_TLS_IN_TXN]      = {503, "5.5.1", "Error: STARTTLS not allowed inside a mail transaction"},
	[SMTP_R_AUTH_CHALLENGE]  = {334, "",      "%s"},
	[SMTP_R_AUTH_OK]         = {235, "2.7.0", "Authentication successful"},
	[SMTP_R_AUTH_FAILED]     = {535, "5.7.8", "Authentication credentials invalid"},
	[SMTP_R_AUTH_TEMP]       = {454, "4.7.0", "Temporary authentication failure"},
	[SMTP_R_AUTH_LOCKED]     = {454, "4.7.0", "Too many failed authentications, try again later"},
	[SMTP_R_AUTH_LOCKED_IP]  = {421, "4.7.0", "Too many failed authentications from your address, closing connection"},
	[SMTP_R_AUTH_UNTRACKED]  = {421, "4.7.0", "Too many failed authentications, closing connection"},
	[SMTP_R_AUTH_CANCELLED]  = {501, "5.7.0", "Authentication cancelled"},
	[SMTP_R_AUTH_BAD_B64]    = {501, "5.5.2", "Cannot decode response"},
	[SMTP_R_AUTH_MECH]       = {504, "5.5.4", "Unrecognized authentication type"},
	[SMTP_R_AUTH_ALREADY]    = {503, "5.5.1", "Error: already authenticated"},
	[SMTP_R_AUTH_IN_TXN]     = {503, "5.5.1", "Error: AUTH not allowed inside a mail transaction"},
	[SMTP_R_AUTH_ENCRYPT]    = {538, "5.7.11", "Encryption required for requested authentication mechanism"},
	[SMTP_R_AUTH_REQUIRED]   = {530, "5.7.0", "Authentication required"},
	[SMTP_R_RELAY_DENIED]    = {554, "5.7.1", "Relay access denied"},
	[SMTP_R_CRED_SENDER]     = {553, "5.7.1", "Sender address not allowed for this credential"},
	[SMTP_R_CRED_RCPT]       = {550, "5.7.1", "Recipient not allowed for this credential"},
	[SMTP_R_CRED_FROM]       = {553, "5.7.1", "From: header address not allowed for this credential"},
	[SMTP_R_QUOTA]           = {450, "4.7.1", "Sending quota exceeded for this credential, try again later"},
	/* dkim_required (issue 10 §1), at the end of the data, nothing
	 * queued: a signing failure is ours and may pass (451 4.7.0, RFC
	 * 3463 "other or undefined security status"); a From: domain
	 * relayd has no key for will not sign on a retry (550 5.7.1,
	 * "delivery not authorized, message refused"). */
	[SMTP_R_DKIM_FAILED]     = {451, "4.7.0", "DKIM signing failed, try again later"},
	[SMTP_R_DKIM_NO_KEY]     = {550, "5.7.1", "No DKIM key for the From: header's domain; message refused"},
	[SMTP_R_DLV_NO_UTF8]     = {553, "5.6.7", "the server does not offer SMTPUTF8, which this message needs"},
	[SMTP_R_DLV_NO_8BIT]     = {554, "5.6.3", "the server does not offer 8BITMIME and the message has 8-bit content (not converted: that would break its signatures)"},
	/* RFC 7505 §4.2: a null MX gets 556 with 5.1.10 (RFC 7505 §5). */
	[SMTP_R_DLV_NULL_MX]     = {556, "5.1.10", "the recipient domain does not accept mail (null MX, RFC 7505)"},
	/* Postfix's "mail for DOMAIN loops back to myself"; 5.4.6 is RFC
	 * 3463's routing loop. */
	[SMTP_R_DLV_LOOP]        = {554, "5.4.6", "mail for this destination loops back to myself"},
	/* 5.4.4 "unable to route" (RFC 3463). An address literal cannot
	 * change, so it bounces; an MX set's addresses can (DNS is fixed),
	 * so that defers until max_queue_lifetime. The argument is one of
	 * deliver_mx.c's fixed reasons ("private address", ...). */
	[SMTP_R_DLV_LITERAL_REFUSED] = {550, "5.4.4", "address literal refused: %s (mx_allow_private)"},
	[SMTP_R_DLV_MX_REFUSED]  = {451, "4.4.4", "every address of the MX hosts is refused: %s (mx_allow_private)"},
	/* RFC 3463 X.7.4 "security features not supported", X.7.5
	 * "cryptographic failure", as Postfix reports them. */
	[SMTP_R_DLV_TLS_NOT_OFFERED] = {451, "4.7.4", "TLS is required for this destination (tls_policy_file), but the server does not offer STARTTLS"},
	[SMTP_R_DLV_TLS_FAILED]  = {451, "4.7.5", "TLS is required for this destination (tls_policy_file), but the TLS handshake failed"},
	[SMTP_R_DLV_TLS_UNVERIFIED] = {451, "4.7.5", "the server certificate does not verify for the MX host name (tls_policy_file: verify)"},
	/* RFC 3463 X.1.2 "bad destination system address": NXDOMAIN is
	 * permanent (issue 9 §2); X.4.3 "directory server failure" for a
	 * lookup that failed (SERVFAIL, timeout): that only defers. */
	[SMTP_R_DLV_NXDOMAIN]    = {550, "5.1.2", "%s: the recipient domain does not exist (NXDOMAIN)"},
	[SMTP_R_DLV_BAD_DOMAIN]  = {550, "5.1.2", "%s: not a valid domain name (%s)"},
	[SMTP_R_DLV_DNS_TEMP]    = {451, "4.4.3", "%s: DNS lookup failed (%s); will retry"},
	[SMTP_R_DLV_NO_MX_ADDR]  = {451, "4.4.3", "%s: no usable address for its MX hosts"},
};
