/*
 * webhook.h - the thread that delivers webhooks (docs/api.md, "Webhooks").
 *
 * Deliveries are rows of the store's webhook_deliveries table, queued by triggers when a job
 * with a webhook ends (and after each step when it asked for progress), so every process
 * sharing the store sees them and none is lost by a crash.  One thread per process, with its
 * own store connection, claims the due row (a lease keeps other processes off it), POSTs the
 * job's status JSON with libcurl, and records the attempt: delivered on a 2xx answer; else
 * retried after 1 s, 2 s, 4 s, ... (at most 5 min apart) until webhook_attempts, then failed.
 * A progress event gets one attempt, and is dropped once the job has ended.  The destination
 * is checked against webhook_hosts again at each attempt; redirects are not followed and only
 * http and https are spoken, so a receiver cannot bounce the call to another address.  One
 * attempt takes at most webhook_timeout; a slow receiver delays later deliveries, never a
 * request.
 *
 * Each request carries Content-Type: application/json, X-Fluxcgi-Event (end | progress),
 * X-Fluxcgi-Delivery (the row's seq), X-Fluxcgi-Timestamp (Unix seconds) and, when the job's
 * key (or the config's webhook_secret, for jobs without a key) has a secret,
 * X-Fluxcgi-Signature: sha256=HEX of HMAC-SHA256(secret, TIMESTAMP "." BODY) (auth.h).
 *
 * Thread-safety: webhook_start, webhook_stop and webhook_free from one thread (main).
 */
#ifndef FX_WEBHOOK_H
#define FX_WEBHOOK_H

#include <stddef.h>

#include "api.h"

struct webhook;

/* Starts the thread (api must outlive it).  Returns 0 and sets *out, or an error with msg
 * set (the store cannot be opened, no thread). */
int webhook_start(const struct api_ctx *api, struct webhook **out, char *msg, size_t msg_len);

/* Stops and joins the thread after the attempt in flight (bounded by webhook_timeout).
 * Idempotent; NULL is a no-op. */
void webhook_stop(struct webhook *w);

/* Frees a stopped deliverer; NULL is a no-op. */
void webhook_free(struct webhook *w);

/* The delay before attempt number `attempts` + 1 after a failure: 1 s doubling, at most
 * 300 s.  Pure. */
long webhook_backoff_ms(int attempts);

#endif
