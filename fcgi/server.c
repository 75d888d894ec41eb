/* server.c - the event loop, the handler pool and the waiter (server.h says how they share
 * the work).  Only the event thread touches connections; the others talk to it through two
 * queues and an eventfd. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../core/err.h"
#include "api_int.h"
#include "fcgi_proto.h"
#include "log.h"
#include "metrics.h"

#define TAG_LISTEN UINT64_MAX
#define TAG_WAKE (UINT64_MAX - 1)
#define READ_CHUNK 65536
#define READ_BUDGET (4 * READ_CHUNK) /* per connection and wake-up, so one peer cannot hog */
#define DRAIN_FLUSH_MS 2000
#define PIPELINE_MAX (1 << 20) /* bytes a peer may send ahead while its request is answered */

struct conn {
    int fd;
    struct fcgi_in in;
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    bool want_out;    /* EPOLLOUT is armed */
    bool busy;        /* a request is with a handler or parked */
    bool close_after; /* close once the output is flushed */
    bool keep;        /* the web server keeps the connection after this request */
    uint16_t req_id;
    uint64_t serial;       /* identifies the request in flight */
    int64_t last_activity; /* monotonic ms: the last byte read or written */
    int64_t request_start; /* monotonic ms: the first byte of a request not yet complete */
    int64_t write_since;   /* monotonic ms: output pending without progress since */
};

/* A complete request, from the event thread to a handler. */
struct task {
    struct task *next;
    uint32_t slot;
    uint64_t serial;
    uint16_t req_id;
    char method[16];
    char *uri;
    char *body;
    size_t body_len;
    bool too_large, bad_length;
    struct api_headers hdr; /* access control: the headers api_handle reads */
};

/* An answer (or a park), from a handler or the waiter to the event thread. */
struct done {
    struct done *next;
    uint32_t slot;
    uint64_t serial;
    uint8_t *bytes; /* the encoded FastCGI answer (or part of it); NULL for a park */
    size_t len;
    bool park;    /* a POST /generate to park */
    bool stream;  /* the start of an event stream to park (bytes are sent first) */
    bool partial; /* a part of an event stream: the request stays open */
    char park_id[STORE_ID_LEN + 1];
    struct api_events events;
};

/* A parked POST /generate, or an open event stream. */
struct parked {
    struct parked *next;
    uint32_t slot;
    uint64_t serial;
    uint16_t req_id;
    char id[STORE_ID_LEN + 1];
    int64_t deadline; /* monotonic ms */
    bool aborted;     /* the client went away */
    bool stream;      /* GET /queue/events/{id}: events is what was sent */
    struct api_events events;
};

struct server {
    struct server_params p;
    const struct api_ctx *api;
    struct fcgi_limits lim;
    int ep, wake_fd;
    struct conn **conns; /* max_conns slots */
    int n_conns;
    uint64_t next_serial;
    int64_t relisten_at; /* monotonic ms: watch the listener again (after EMFILE); 0: no */

    pthread_t io_thread, waiter_thread, *handler_threads;
    int n_handlers;
    bool io_started, waiter_started;
    struct store **handler_st, *waiter_st;

    pthread_mutex_t mu; /* guards tasks, dones, parked and the flags below */
    pthread_cond_t task_cv, waiter_cv;
    struct task *tasks, **tasks_tail;
    struct done *dones, **dones_tail;
    struct parked *parked;
    int tasks_in_flight; /* taken by a handler, answer not posted yet */
    bool stop_accept;    /* draining: no new connections */
    bool stop_waiter;    /* the worker stopped: parked requests get 503 */
    bool stop_threads;   /* handlers exit */
    bool stop_parked;    /* the waiter exits once nothing is parked */
    atomic_bool stop_io;
    bool stopped;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wake_io(struct server *s)
{
    uint64_t one = 1;
    ssize_t n = write(s->wake_fd, &one, sizeof(one));
    (void)n; /* a full counter still wakes the loop */
}

static void post_done(struct server *s, struct done *d)
{
    pthread_mutex_lock(&s->mu);
    d->next = NULL;
    *s->dones_tail = d;
    s->dones_tail = &d->next;
    pthread_mutex_unlock(&s->mu);
    wake_io(s);
}

/* ---- answers ----------------------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 507:
        return "Insufficient Storage";
    default:
        return "Unknown";
    }
}

/* Encodes rs as the FastCGI answer to request req_id; counts and logs it.  NULL when out of
 * memory. */
static uint8_t *encode(struct server *s, uint16_t req_id, const struct api_request *rq,
                       const struct api_response *rs, size_t *len)
{
    char head[2048];
    int n = snprintf(head, sizeof(head), "Status: %d %s\r\nContent-Type: %s\r\n", rs->status,
                     reason(rs->status), rs->content_type ? rs->content_type : "text/plain");
    if (!rs->stream && n > 0 && (size_t)n < sizeof(head)) /* a stream has no length */
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %zu\r\n", rs->body_len);
    for (int i = 0; i < rs->n_headers && n > 0 && (size_t)n < sizeof(head); i++)
        n += snprintf(head + n, sizeof(head) - (size_t)n, "%s: %s\r\n", rs->headers[i].name,
                      rs->headers[i].value);
    if (rs->content_type && strcmp(rs->content_type, "application/json") == 0 && n > 0 &&
        (size_t)n < sizeof(head))
        n += snprintf(head + n, sizeof(head) - (size_t)n, "Cache-Control: no-store\r\n");
    if (n > 0 && (size_t)n < sizeof(head))
        n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
    if (n <= 0 || (size_t)n >= sizeof(head))
        return NULL;
    metrics_count_http(s->api->metrics, rs->status);
    if (rs->status >= 500)
        log_printf("warn", "%s %.200s -> %d %.300s", rq && rq->method ? rq->method : "-",
                   rq && rq->uri ? rq->uri : "(waiting POST /generate)", rs->status,
                   rs->content_type && rs->content_type[0] == 'a' && rs->body ? rs->body : "");
    return fcgi_encode_stdout(req_id, head, (size_t)n, rs->body, rs->body_len, !rs->stream, len);
}

/* ---- handlers ---------------------------------------------------------------------------- */

struct handler_arg {
    struct server *s;
    int index;
};

/* Answers a task; the answer (or the park) for the event thread, NULL when out of memory
 * (the connection then times out). */
static struct done *handle(struct server *s, struct store *st, struct task *t)
{
    struct api_request rq = {t->method,    t->uri,        t->body, t->body_len,
                             t->too_large, t->bad_length, &t->hdr /* access control */};
    struct api_response rs;
    struct done *d = calloc(1, sizeof(*d));

    api_handle(s->api, st, &rq, &rs);
    if (d == NULL) {
        api_response_release(&rs);
        return NULL;
    }
    d->slot = t->slot;
    d->serial = t->serial;
    if (rs.park) {
        d->park = true;
        snprintf(d->park_id, sizeof(d->park_id), "%s", rs.park_id);
        d->events = rs.events; /* access control: the CORS origin of the later answer */
    } else {
        d->bytes = encode(s, t->req_id, &rq, &rs, &d->len);
    }
    if (rs.stream) {
        d->stream = true;
        snprintf(d->park_id, sizeof(d->park_id), "%s", rs.park_id);
        d->events = rs.events;
    }
    api_response_release(&rs);
    return d;
}

static void free_task(struct task *t)
{
    if (t) {
        free(t->uri);
        free(t->body);
        free(t);
    }
}

static void *handler_main(void *arg)
{
    struct handler_arg *ha = arg;
    struct server *s = ha->s;
    struct store *st = s->handler_st[ha->index];
    free(ha);
    for (;;) {
        struct task *t;
        pthread_mutex_lock(&s->mu);
        while (s->tasks == NULL && !s->stop_threads)
            pthread_cond_wait(&s->task_cv, &s->mu);
        t = s->tasks;
        if (t == NULL) { /* stopping, nothing left */
            pthread_mutex_unlock(&s->mu);
            break;
        }
        s->tasks = t->next;
        if (s->tasks == NULL)
            s->tasks_tail = &s->tasks;
        s->tasks_in_flight++;
        pthread_mutex_unlock(&s->mu);
        struct done *d = handle(s, st, t);
        if (d)
            post_done(s, d);
        free_task(t);
        pthread_mutex_lock(&s->mu);
        s->tasks_in_flight--;
        pthread_mutex_unlock(&s->mu);
        wake_io(s);
    }
    return NULL;
}

/* ---- the waiter -------------------------------------------------------------------------- */

/* Unlinks p from the parked list (only the waiter removes entries, so p is still there). */
static void unpark(struct server *s, struct parked *p)
{
    pthread_mutex_lock(&s->mu);
    for (struct parked **q = &s->parked; *q; q = &(*q)->next)
        if (*q == p) {
            *q = p->next;
            break;
        }
    pthread_mutex_unlock(&s->mu);
    free(p);
    if (s->api->metrics)
        atomic_fetch_sub(&s->api->metrics->requests_parked, 1);
}

/* Answers or drops the parked requests that are done.  The entries stay in the list while
 * the store is asked (without s->mu), so an abort that comes meanwhile still marks them. */
static void poll_parked(struct server *s, bool stopping)
{
    struct parked **snap = NULL, *p;
    size_t n = 0, k = 0;
    int64_t now = mono_ms();

    pthread_mutex_lock(&s->mu);
    for (p = s->parked; p; p = p->next)
        n++;
    snap = n ? malloc(n * sizeof(*snap)) : NULL;
    for (p = s->parked; p && snap; p = p->next)
        snap[k++] = p;
    pthread_mutex_unlock(&s->mu);

    for (size_t i = 0; i < k; i++) {
        struct api_response rs;
        bool aborted;
        p = snap[i];
        pthread_mutex_lock(&s->mu);
        aborted = p->aborted;
        pthread_mutex_unlock(&s->mu);
        if (aborted && p->stream) {
            unpark(s, p); /* nothing to cancel: the job goes on */
            continue;
        }
        if (p->stream) {
            char *out = NULL;
            size_t out_len = 0;
            bool end = api_events_poll(s->api, s->waiter_st, p->id,
                                       stopping ? API_POLL_STOPPING : API_POLL_CHECK, &p->events,
                                       now, &out, &out_len);
            if (out || end) {
                struct done *d = calloc(1, sizeof(*d));
                if (d) {
                    d->slot = p->slot;
                    d->serial = p->serial;
                    d->partial = !end;
                    d->bytes = fcgi_encode_stdout(p->req_id, out, out_len, NULL, 0, end, &d->len);
                    post_done(s, d);
                }
            }
            free(out);
            if (end)
                unpark(s, p);
            continue;
        }
        if (aborted) {
            bool cancelled = false;
            int rc = store_cancel_queued(s->waiter_st, p->id, api_now_ms(), &cancelled);
            if (rc == FX_EBUSY)
                continue; /* try again at the next pass */
            if (cancelled)
                log_printf("info",
                           "job %s: cancelled (its POST /generate client went away before it "
                           "started)",
                           p->id);
            else if (rc == 0)
                log_printf("info",
                           "job %s: its POST /generate client went away; the job goes on "
                           "(GET /result/%s)",
                           p->id, p->id);
            unpark(s, p);
            continue;
        }
        enum api_poll why = stopping             ? API_POLL_STOPPING
                            : now >= p->deadline ? API_POLL_TIMEOUT
                                                 : API_POLL_CHECK;
        if (!api_generate_poll(s->api, s->waiter_st, p->id, why, &p->events, &rs))
            continue;
        struct done *d = calloc(1, sizeof(*d));
        if (d) {
            d->slot = p->slot;
            d->serial = p->serial;
            d->bytes = encode(s, p->req_id, NULL, &rs, &d->len);
            post_done(s, d);
        }
        api_response_release(&rs);
        unpark(s, p);
    }
    free(snap);
}

static void *waiter_main(void *arg)
{
    struct server *s = arg;
    uint64_t seen = 0;
    for (;;) {
        bool stopping, done;
        int rc = 0;
        bool streams = false;
        pthread_mutex_lock(&s->mu);
        stopping = s->stop_waiter;
        done = s->stop_parked && s->parked == NULL;
        for (struct parked *p = s->parked; p && !streams; p = p->next)
            streams = p->stream;
        pthread_mutex_unlock(&s->mu);
        if (done)
            break;
        if (!stopping && s->api->worker) {
            /* event streams follow every step: look four times a second while one is open */
            rc = worker_wait(s->api->worker, &seen, streams ? 250 : 1000);
        } else {
            /* no worker to wake us (or it stopped): a short timed wait on our own cv */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += stopping ? 50000000L : 0;
            ts.tv_sec += stopping ? 0 : 1;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_mutex_lock(&s->mu);
            if (!s->stop_parked)
                pthread_cond_timedwait(&s->waiter_cv, &s->mu, &ts);
            pthread_mutex_unlock(&s->mu);
        }
        if (rc == FX_ESHUTDOWN)
            stopping = true;
        poll_parked(s, stopping);
    }
    return NULL;
}

/* ---- connections ------------------------------------------------------------------------- */

static void mark_aborted(struct server *s, uint32_t slot, uint64_t serial)
{
    pthread_mutex_lock(&s->mu);
    for (struct parked *p = s->parked; p; p = p->next)
        if (p->slot == slot && p->serial == serial)
            p->aborted = true;
    pthread_mutex_unlock(&s->mu);
}

static void close_conn(struct server *s, uint32_t slot)
{
    struct conn *c = s->conns[slot];
    if (c == NULL)
        return;
    if (c->busy)
        mark_aborted(s, slot, c->serial);
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (s->api->metrics)
        atomic_fetch_sub(&s->api->metrics->conns_open, 1);
    fcgi_in_release(&c->in);
    free(c->out);
    free(c);
    s->conns[slot] = NULL;
    s->n_conns--;
}

static void arm(struct server *s, uint32_t slot, bool want_out)
{
    struct conn *c = s->conns[slot];
    struct epoll_event ev = {0};
    if (c->want_out == want_out)
        return;
    ev.events = EPOLLIN | EPOLLRDHUP | (want_out ? EPOLLOUT : 0);
    ev.data.u64 = slot;
    if (epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = want_out;
}

static int queue_out(struct conn *c, const uint8_t *b, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        uint8_t *q;
        while (cap < c->out_len + n)
            cap *= 2;
        q = realloc(c->out, cap);
        if (q == NULL)
            return FX_ENOMEM;
        c->out = q;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, b, n);
    if (c->out_len == c->out_off)
        c->write_since = mono_ms();
    c->out_len += n;
    return 0;
}

/* Writes what is pending; closes the connection when done and asked to, or on an error.
 * Returns false when the connection was closed. */
static bool flush(struct server *s, uint32_t slot)
{
    struct conn *c = s->conns[slot];
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            c->last_activity = c->write_since = mono_ms();
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            arm(s, slot, true);
            return true;
        }
        close_conn(s, slot);
        return false;
    }
    c->out_off = c->out_len = 0;
    if (c->out_cap > 1 << 20) { /* do not keep an image-sized buffer on an idle connection */
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    arm(s, slot, false);
    if (c->close_after) {
        close_conn(s, slot);
        return false;
    }
    return true;
}

/* The complete request of c as a task (c is busy with it from now on); NULL when out of
 * memory (the connection is then closed after what it has to write). */
static struct task *take_request(struct server *s, uint32_t slot, struct conn *c, bool early)
{
    struct task *t = calloc(1, sizeof(*t));
    size_t ulen = c->in.params_len + 1;
    if (t == NULL || (t->uri = malloc(ulen)) == NULL) {
        free(t);
        c->close_after = true;
        return NULL;
    }
    c->busy = true;
    c->serial = ++s->next_serial;
    c->req_id = c->in.id;
    c->keep = c->in.keep_conn;
    c->request_start = 0;
    t->slot = slot;
    t->serial = c->serial;
    t->req_id = c->in.id;
    if (!fcgi_in_param(&c->in, "REQUEST_METHOD", t->method, sizeof(t->method)))
        t->method[0] = '\0';
    if (!fcgi_in_param(&c->in, "REQUEST_URI", t->uri, ulen))
        t->uri[0] = '\0';
    /* access control (fcgi/access.c): the request headers it reads, as HTTP_* params */
    for (int i = 0; i < API_HDR_COUNT; i++)
        t->hdr.present[i] = fcgi_in_param(&c->in, api_header_params[i], t->hdr.value[i],
                                          sizeof(t->hdr.value[i])) != NULL;
    if (early) {
        t->bad_length = c->in.content_length < 0; /* a CONTENT_LENGTH that is not a number */
        t->too_large = !t->bad_length;
    } else {
        /* the body moves to the task */
        t->body = c->in.body;
        t->body_len = c->in.body_len;
        c->in.body = NULL;
        c->in.body_cap = 0;
        t->bad_length = c->in.short_body;
    }
    return t;
}

/* Gives a task to the handler threads. */
static void queue_task(struct server *s, struct task *t)
{
    pthread_mutex_lock(&s->mu);
    *s->tasks_tail = t;
    s->tasks_tail = &t->next;
    pthread_cond_signal(&s->task_cv);
    pthread_mutex_unlock(&s->mu);
}

/* Writes the answer of the request c is busy with; false when the connection was closed. */
static bool answer(struct server *s, uint32_t slot, struct conn *c, const struct done *d)
{
    c->busy = false;
    fcgi_in_done(&c->in);
    if (d == NULL || d->bytes == NULL || queue_out(c, d->bytes, d->len) || !c->keep)
        c->close_after = true;
    return flush(s, slot);
}

/* Acts on what the bytes read so far complete.  Returns false when the connection was
 * closed. */
static bool parse(struct server *s, uint32_t slot)
{
    struct conn *c = s->conns[slot];
    for (;;) {
        enum fcgi_event ev = fcgi_in_next(&c->in, &s->lim);
        switch (ev) {
        case FCGI_EV_NONE:
            if (c->in.state == FCGI_PARAMS_IN || c->in.state == FCGI_STDIN_IN ||
                (c->in.len > 0 && !c->busy)) {
                if (c->request_start == 0)
                    c->request_start = mono_ms();
            } else if (!c->busy) {
                c->request_start = 0;
            }
            return true;
        case FCGI_EV_REQUEST:
        case FCGI_EV_EARLY: {
            struct task *t = take_request(s, slot, c, ev == FCGI_EV_EARLY);
            if (t == NULL)
                return flush(s, slot);
            if (api_needs_store(s->api, t->method, t->uri)) {
                queue_task(s, t);
                break;
            }
            /* answered from memory (/ping, unknown paths, refused methods): here, at once,
             * so that liveness never waits behind requests that read the store */
            struct done *d = handle(s, NULL, t);
            bool open = answer(s, slot, c, d);
            if (d)
                free(d->bytes);
            free(d);
            free_task(t);
            if (!open)
                return false;
            break;
        }
        case FCGI_EV_ABORT:
            /* the answer is still coming (a handler, or a parked wait): the client left */
            if (c->busy) {
                uint8_t end[16];
                mark_aborted(s, slot, c->serial);
                c->busy = false;
                fcgi_in_done(&c->in);
                memset(end, 0, sizeof(end));
                end[0] = 1;
                end[1] = FCGI_END_REQUEST;
                end[2] = (uint8_t)(c->req_id >> 8);
                end[3] = (uint8_t)c->req_id;
                end[5] = 8;
                if (queue_out(c, end, sizeof(end)) || !c->keep)
                    c->close_after = true;
                if (!flush(s, slot))
                    return false;
            }
            break;
        case FCGI_EV_REPLY:
            if (queue_out(c, c->in.reply, c->in.reply_len)) {
                close_conn(s, slot);
                return false;
            }
            if (!flush(s, slot))
                return false;
            break;
        case FCGI_EV_ERROR:
            log_printf("warn", "fastcgi connection closed: %s", c->in.msg ? c->in.msg : "error");
            close_conn(s, slot);
            return false;
        }
    }
}

static void on_readable(struct server *s, uint32_t slot)
{
    struct conn *c = s->conns[slot];
    uint8_t buf[READ_CHUNK];
    size_t budget = READ_BUDGET;
    while (budget > 0) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            c->last_activity = mono_ms();
            if (fcgi_in_append(&c->in, buf, (size_t)n) || (c->busy && c->in.len > PIPELINE_MAX)) {
                close_conn(s, slot); /* out of memory, or a peer that floods while it waits */
                return;
            }
            if (!parse(s, slot))
                return;
            budget -= (size_t)n < budget ? (size_t)n : budget;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* end of stream or an error: the peer is gone (a parked job is cancelled if it has
         * not started) */
        close_conn(s, slot);
        return;
    }
}

static bool peer_allowed(const struct server *s, int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char addr[INET6_ADDRSTRLEN] = "";
    const char *list = s->p.allowed_peers;
    if (list == NULL || list[0] == '\0')
        return true;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
        return false;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, addr, sizeof(addr));
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, addr, sizeof(addr));
    else
        return true; /* a unix socket: the file's permissions decide */
    for (const char *p = list; *p;) {
        size_t k = strcspn(p, ", ");
        if (k == strlen(addr) && k > 0 && memcmp(p, addr, k) == 0)
            return true;
        p += k;
        p += strspn(p, ", ");
    }
    log_printf("warn", "connection from %s refused (not in FCGI_WEB_SERVER_ADDRS)", addr);
    return false;
}

/* At max_conns: closes the connection idle the longest, if there is one. */
static bool evict_idle(struct server *s)
{
    int64_t oldest = INT64_MAX;
    int victim = -1;
    for (int i = 0; i < s->p.max_conns; i++) {
        struct conn *c = s->conns[i];
        if (c && !c->busy && c->out_len == c->out_off && c->in.len == 0 &&
            c->in.state == FCGI_IDLE && c->last_activity < oldest) {
            oldest = c->last_activity;
            victim = i;
        }
    }
    if (victim < 0)
        return false;
    close_conn(s, (uint32_t)victim);
    return true;
}

static void on_accept(struct server *s)
{
    for (;;) {
        int fd = accept4(s->p.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct epoll_event ev = {0};
        struct conn *c;
        int slot = -1;
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* the pending connection stays in the backlog and would wake the loop again
                 * at once: stop watching the listener for a moment */
                log_printf("warn", "accept: %s (raise the open-file limit or lower max_conns)",
                           strerror(errno));
                epoll_ctl(s->ep, EPOLL_CTL_DEL, s->p.listen_fd, NULL);
                s->relisten_at = mono_ms() + 200;
            }
            return; /* EAGAIN, or an error that a later wake-up retries */
        }
        if (!peer_allowed(s, fd) || (s->n_conns >= s->p.max_conns && !evict_idle(s))) {
            close(fd);
            if (s->api->metrics)
                atomic_fetch_add(&s->api->metrics->conns_refused, 1);
            continue;
        }
        for (int i = 0; i < s->p.max_conns; i++)
            if (s->conns[i] == NULL) {
                slot = i;
                break;
            }
        c = calloc(1, sizeof(*c));
        if (slot < 0 || c == NULL) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        fcgi_in_init(&c->in);
        c->last_activity = mono_ms();
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = (uint64_t)slot;
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            free(c);
            close(fd);
            continue;
        }
        s->conns[slot] = c;
        s->n_conns++;
        if (s->api->metrics) {
            atomic_fetch_add(&s->api->metrics->conns_accepted, 1);
            atomic_fetch_add(&s->api->metrics->conns_open, 1);
        }
    }
}

static void register_park(struct server *s, const struct done *d, struct conn *c)
{
    struct parked *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        if (c)
            c->close_after = true;
        return;
    }
    p->slot = d->slot;
    p->serial = d->serial;
    p->req_id = c ? c->req_id : 0;
    p->aborted = c == NULL;
    p->deadline = mono_ms() + s->p.sync_timeout_ms;
    p->stream = d->stream;
    p->events = d->events;
    snprintf(p->id, sizeof(p->id), "%s", d->park_id);
    pthread_mutex_lock(&s->mu);
    p->next = s->parked;
    s->parked = p;
    pthread_cond_signal(&s->waiter_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->api->metrics)
        atomic_fetch_add(&s->api->metrics->requests_parked, 1);
}

static void apply_dones(struct server *s)
{
    struct done *list;
    pthread_mutex_lock(&s->mu);
    list = s->dones;
    s->dones = NULL;
    s->dones_tail = &s->dones;
    pthread_mutex_unlock(&s->mu);
    while (list) {
        struct done *d = list;
        struct conn *c = d->slot < (uint32_t)s->p.max_conns ? s->conns[d->slot] : NULL;
        list = d->next;
        if (c && (!c->busy || c->serial != d->serial))
            c = NULL; /* the request it answers is gone */
        if (d->park) {
            register_park(s, d, c);
        } else if (d->stream || d->partial) {
            /* a part of an event stream: the request stays open */
            if (c && (d->bytes == NULL || queue_out(c, d->bytes, d->len))) {
                c->close_after = true;
                c->busy = false;
            }
            if (c && !flush(s, d->slot))
                c = NULL; /* closed (and freed) by the flush */
            if (d->stream && c && c->busy)
                register_park(s, d, c);
        } else if (c && answer(s, d->slot, c, d)) {
            parse(s, d->slot); /* a request that came in behind this one */
        }
        free(d->bytes);
        free(d);
    }
}

static void check_timers(struct server *s, int64_t now)
{
    for (int i = 0; i < s->p.max_conns; i++) {
        struct conn *c = s->conns[i];
        if (c == NULL)
            continue;
        if (c->out_off < c->out_len) {
            if (now - c->write_since > s->p.write_timeout_ms)
                close_conn(s, (uint32_t)i);
        } else if (c->request_start && now - c->request_start > s->p.request_timeout_ms) {
            close_conn(s, (uint32_t)i); /* a request that does not finish arriving */
        } else if (!c->busy && !c->request_start && now - c->last_activity > s->p.idle_timeout_ms) {
            close_conn(s, (uint32_t)i);
        }
    }
}

static void *io_main(void *arg)
{
    struct server *s = arg;
    struct epoll_event evs[256];
    int64_t last_timers = mono_ms(), drain_until = 0;
    bool listening = true;

    for (;;) {
        int n = epoll_wait(s->ep, evs, 256, 250);
        int64_t now;
        bool stop_accept, idle;
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_LISTEN) {
                on_accept(s);
            } else if (tag == TAG_WAKE) {
                uint64_t v;
                ssize_t r = read(s->wake_fd, &v, sizeof(v));
                (void)r;
            } else if (tag < (uint64_t)s->p.max_conns && s->conns[tag]) {
                if (evs[i].events & EPOLLOUT) {
                    if (!flush(s, (uint32_t)tag))
                        continue;
                }
                if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    on_readable(s, (uint32_t)tag);
            }
        }
        apply_dones(s);
        now = mono_ms();
        if (now - last_timers >= 1000) {
            check_timers(s, now);
            last_timers = now;
        }
        pthread_mutex_lock(&s->mu);
        stop_accept = s->stop_accept;
        idle = s->tasks == NULL && s->tasks_in_flight == 0 && s->parked == NULL && s->dones == NULL;
        pthread_mutex_unlock(&s->mu);
        if (stop_accept && listening) {
            epoll_ctl(s->ep, EPOLL_CTL_DEL, s->p.listen_fd, NULL);
            listening = false;
        }
        if (s->relisten_at && now >= s->relisten_at) {
            struct epoll_event lev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};
            s->relisten_at = 0;
            if (listening)
                epoll_ctl(s->ep, EPOLL_CTL_ADD, s->p.listen_fd, &lev);
        }
        if (atomic_load(&s->stop_io)) {
            bool pending = false;
            if (drain_until == 0)
                drain_until = now + DRAIN_FLUSH_MS;
            for (int i = 0; i < s->p.max_conns && !pending; i++)
                if (s->conns[i] && (s->conns[i]->out_off < s->conns[i]->out_len))
                    pending = true;
            if ((idle && !pending) || now >= drain_until)
                break;
        }
    }
    for (int i = 0; i < s->p.max_conns; i++)
        close_conn(s, (uint32_t)i);
    return NULL;
}

/* ---- start and stop ---------------------------------------------------------------------- */

static int fcntl_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int server_start(const struct server_params *p, const struct api_ctx *api, struct server **out,
                 char *msg, size_t msg_len)
{
    struct server *s = calloc(1, sizeof(*s));
    struct epoll_event ev = {0};
    int rc = FX_ENOMEM;

    *out = NULL;
    if (s == NULL)
        return FX_ENOMEM;
    s->p = *p;
    s->api = api;
    s->ep = s->wake_fd = -1;
    s->lim.max_params = p->max_params;
    s->lim.max_body = p->max_body;
    s->lim.max_discard = 64u << 20; /* an over-long body is read and dropped up to this */
    s->lim.max_conns = p->max_conns;
    s->tasks_tail = &s->tasks;
    s->dones_tail = &s->dones;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->task_cv, NULL);
    pthread_cond_init(&s->waiter_cv, NULL);
    s->conns = calloc((size_t)p->max_conns, sizeof(*s->conns));
    s->handler_threads = calloc((size_t)p->handlers, sizeof(*s->handler_threads));
    s->handler_st = calloc((size_t)p->handlers, sizeof(*s->handler_st));
    if (s->conns == NULL || s->handler_threads == NULL || s->handler_st == NULL) {
        snprintf(msg, msg_len, "out of memory");
        goto fail;
    }
    /* every store connection is opened here, so a store that cannot be opened stops the
     * start instead of a thread */
    for (int i = 0; i < p->handlers; i++)
        if ((rc = store_open(p->db, p->busy_ms, &s->handler_st[i], msg, msg_len)))
            goto fail;
    if ((rc = store_open(p->db, p->busy_ms, &s->waiter_st, msg, msg_len)))
        goto fail;
    rc = FX_EIO;
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->ep < 0 || s->wake_fd < 0) {
        snprintf(msg, msg_len, "epoll/eventfd: %s", strerror(errno));
        goto fail;
    }
    if (fcntl_nonblock(p->listen_fd) != 0) {
        snprintf(msg, msg_len, "cannot make the listening socket non-blocking: %s",
                 strerror(errno));
        goto fail;
    }
    ev.events = EPOLLIN;
    ev.data.u64 = TAG_LISTEN;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, p->listen_fd, &ev) != 0) {
        snprintf(msg, msg_len, "cannot watch the listening socket: %s", strerror(errno));
        goto fail;
    }
    ev.data.u64 = TAG_WAKE;
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake_fd, &ev) != 0) {
        snprintf(msg, msg_len, "cannot watch the eventfd: %s", strerror(errno));
        goto fail;
    }
    rc = FX_ENOMEM;
    if (pthread_create(&s->io_thread, NULL, io_main, s) != 0) {
        snprintf(msg, msg_len, "cannot start the event thread");
        goto fail;
    }
    s->io_started = true;
    if (pthread_create(&s->waiter_thread, NULL, waiter_main, s) != 0) {
        snprintf(msg, msg_len, "cannot start the waiter thread");
        goto fail;
    }
    s->waiter_started = true;
    for (int i = 0; i < p->handlers; i++) {
        struct handler_arg *ha = malloc(sizeof(*ha));
        if (ha == NULL)
            break;
        ha->s = s;
        ha->index = i;
        if (pthread_create(&s->handler_threads[s->n_handlers], NULL, handler_main, ha) != 0) {
            free(ha);
            break;
        }
        s->n_handlers++;
    }
    if (s->n_handlers == 0) {
        snprintf(msg, msg_len, "cannot start the handler threads");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    server_stop(s);
    server_free(s);
    return rc;
}

void server_stop(struct server *s)
{
    if (s == NULL || s->stopped)
        return;
    /* 1. no new connections; the waiter answers parked requests: their image if the job
     *    is done, else 503 (the job stays queued) */
    pthread_mutex_lock(&s->mu);
    s->stop_accept = true;
    s->stop_waiter = true;
    pthread_cond_broadcast(&s->waiter_cv);
    /* 2. handlers finish what is queued for them and exit */
    s->stop_threads = true;
    pthread_cond_broadcast(&s->task_cv);
    pthread_mutex_unlock(&s->mu);
    wake_io(s);
    for (int i = 0; i < s->n_handlers; i++)
        pthread_join(s->handler_threads[i], NULL);
    /* 3. their last answers reach the event thread, which parks what must wait (bounded) */
    for (int i = 0; i < 200 && s->io_started; i++) {
        bool empty;
        pthread_mutex_lock(&s->mu);
        empty = s->dones == NULL;
        pthread_mutex_unlock(&s->mu);
        if (empty)
            break;
        wake_io(s);
        nanosleep(&(struct timespec){0, 5000000L}, NULL);
    }
    /* 4. the waiter answers the last parked requests and exits */
    pthread_mutex_lock(&s->mu);
    s->stop_parked = true;
    pthread_cond_broadcast(&s->waiter_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->waiter_started)
        pthread_join(s->waiter_thread, NULL);
    /* 5. the event thread writes out what it has (bounded) and closes everything */
    atomic_store(&s->stop_io, true);
    wake_io(s);
    if (s->io_started)
        pthread_join(s->io_thread, NULL);
    s->stopped = true;
}

void server_free(struct server *s)
{
    if (s == NULL)
        return;
    while (s->tasks) {
        struct task *t = s->tasks;
        s->tasks = t->next;
        free_task(t);
    }
    while (s->dones) {
        struct done *d = s->dones;
        s->dones = d->next;
        free(d->bytes);
        free(d);
    }
    while (s->parked) {
        struct parked *p = s->parked;
        s->parked = p->next;
        free(p);
    }
    for (int i = 0; s->handler_st && i < s->p.handlers; i++)
        store_close(s->handler_st[i]);
    store_close(s->waiter_st);
    if (s->ep >= 0)
        close(s->ep);
    if (s->wake_fd >= 0)
        close(s->wake_fd);
    free(s->conns);
    free(s->handler_threads);
    free(s->handler_st);
    pthread_cond_destroy(&s->task_cv);
    pthread_cond_destroy(&s->waiter_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
