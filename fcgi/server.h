/*
 * server.h - the FastCGI front end: every connection in one event loop, requests answered by
 * a pool of handler threads, waiting POST /generate requests parked.
 *
 * Threads:
 *   - the event thread (epoll) accepts, reads records (fcgi_proto.h) from every connection
 *     without blocking, enforces the timeouts and writes answers out without blocking, so no
 *     peer, however slow, idle or numerous, holds anything but its own connection;
 *   - `handlers` threads, each with its own SQLite connection, run api_handle on complete
 *     requests (no handler ever waits for a generation);
 *   - the waiter thread, with its own connection, answers parked POST /generate requests
 *     when their job ends (woken by worker_wait, and once a second for jobs that other
 *     processes run and for deadlines), when sync_timeout runs out (504) or when the service
 *     stops (503).  A parked request whose client goes away (the web server closes the
 *     connection or sends FCGI_ABORT_REQUEST) has its job cancelled if it has not started
 *     (its id was never sent); a job already running is kept and stays readable by id.
 *
 * Connections: kept alive when the web server asks (FCGI_KEEP_CONN), one request at a time
 * each.  A connection that is idle between requests is closed after idle_timeout; one whose
 * request has not fully arrived request_timeout after its first byte, or whose answer makes
 * no progress for write_timeout, is closed.  At max_conns, the connection idle the longest
 * is closed to make room (else the new one is refused).
 *
 * Thread-safety: server_start, server_stop and server_free from one thread (main).
 */
#ifndef FX_SERVER_H
#define FX_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "api.h"

struct server_params {
    int listen_fd; /* a listening socket (made non-blocking by server_start) */
    int handlers;  /* handler threads, >= 1 */
    int max_conns; /* open connections at most */
    int64_t idle_timeout_ms, request_timeout_ms, write_timeout_ms;
    size_t max_body;   /* bodies over this are answered 413 and dropped */
    size_t max_params; /* FastCGI params of one request at most */
    int64_t sync_timeout_ms;
    const char *db; /* the store, opened once per handler and by the waiter */
    int busy_ms;
    const char *allowed_peers; /* comma-separated IP addresses allowed to connect over TCP
                                  (FCGI_WEB_SERVER_ADDRS); NULL or "": any */
    void (*on_fatal)(void);    /* called when a thread cannot start (the store cannot be
                                  opened): the process must exit non-zero */
};

struct server;

/*
 * Starts the threads.  api must outlive the server (its worker may be NULL: the waiter then
 * polls once a second).  Returns 0 and sets *out, or an error with msg set.
 */
int server_start(const struct server_params *p, const struct api_ctx *api, struct server **out,
                 char *msg, size_t msg_len);

/*
 * Drains: stops accepting, answers parked requests with 503 (call it after worker_stop so
 * that the running job is back in the queue first), lets handlers finish, flushes answers
 * for at most two seconds, closes every connection and joins the threads.  Idempotent;
 * NULL is a no-op.
 */
void server_stop(struct server *s);

/* Frees a stopped server; NULL is a no-op. */
void server_free(struct server *s);

#endif
