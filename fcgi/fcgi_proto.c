/* fcgi_proto.c - FastCGI records in and out (fcgi_proto.h says why it is written here). */
#include "fcgi_proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"

/* Largest record: header, 65535 content bytes, 255 padding bytes. */
#define RECORD_MAX (FCGI_HEADER_LEN + 65535 + 255)

void fcgi_in_init(struct fcgi_in *in)
{
    memset(in, 0, sizeof(*in));
    in->state = FCGI_IDLE;
}

void fcgi_in_release(struct fcgi_in *in)
{
    if (in == NULL)
        return;
    free(in->buf);
    free(in->params);
    free(in->body);
    fcgi_in_init(in);
}

static int reserve(uint8_t **p, size_t *cap, size_t need)
{
    size_t c = *cap ? *cap : 256;
    uint8_t *q;
    if (need <= *cap)
        return 0;
    while (c < need)
        c *= 2;
    q = realloc(*p, c);
    if (q == NULL)
        return FX_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

int fcgi_in_append(struct fcgi_in *in, const void *data, size_t n)
{
    if (reserve(&in->buf, &in->cap, in->len + n))
        return FX_ENOMEM;
    memcpy(in->buf + in->len, data, n);
    in->len += n;
    return 0;
}

static void start_request(struct fcgi_in *in, uint16_t id, bool keep)
{
    in->state = FCGI_PARAMS_IN;
    in->id = id;
    in->keep_conn = keep;
    in->stdin_done = false;
    in->params_len = 0;
    in->body_len = 0;
    in->content_length = 0;
    in->too_large = false;
    in->short_body = false;
    in->discarded = 0;
}

void fcgi_in_done(struct fcgi_in *in)
{
    in->state = FCGI_IDLE;
    in->params_len = 0;
    in->body_len = 0;
    /* a kept connection must not hold a large body's buffer while it idles */
    if (in->body_cap > 65536) {
        free(in->body);
        in->body = NULL;
        in->body_cap = 0;
    }
}

static void put_header(uint8_t *h, int type, uint16_t id, size_t clen, size_t plen)
{
    h[0] = 1;
    h[1] = (uint8_t)type;
    h[2] = (uint8_t)(id >> 8);
    h[3] = (uint8_t)id;
    h[4] = (uint8_t)(clen >> 8);
    h[5] = (uint8_t)clen;
    h[6] = (uint8_t)plen;
    h[7] = 0;
}

static void reply_end(struct fcgi_in *in, uint16_t id, int protocol_status)
{
    uint8_t *r = in->reply;
    put_header(r, FCGI_END_REQUEST, id, 8, 0);
    memset(r + 8, 0, 8);
    r[12] = (uint8_t)protocol_status;
    in->reply_len = 16;
}

/* Reads one name-value length at *pos; -1 when it runs past the end. */
static long nv_len(const uint8_t *p, size_t n, size_t *pos)
{
    long v;
    if (*pos >= n)
        return -1;
    if (p[*pos] < 0x80)
        return p[(*pos)++];
    if (n - *pos < 4)
        return -1;
    v = (long)(((unsigned long)(p[*pos] & 0x7f) << 24) | ((unsigned long)p[*pos + 1] << 16) |
               ((unsigned long)p[*pos + 2] << 8) | p[*pos + 3]);
    *pos += 4;
    return v;
}

/* Walks the pairs in p[0..n): calls back (if fn) for each; returns false when malformed. */
static bool nv_walk(const uint8_t *p, size_t n,
                    bool (*fn)(void *ud, const uint8_t *name, size_t nl, const uint8_t *val,
                               size_t vl),
                    void *ud)
{
    size_t pos = 0;
    while (pos < n) {
        long nl = nv_len(p, n, &pos), vl;
        if (nl < 0)
            return false;
        vl = nv_len(p, n, &pos);
        if (vl < 0 || (size_t)nl > n - pos || (size_t)vl > n - pos - (size_t)nl)
            return false;
        if (fn && !fn(ud, p + pos, (size_t)nl, p + pos + nl, (size_t)vl))
            return true; /* the callback is done */
        pos += (size_t)nl + (size_t)vl;
    }
    return true;
}

struct find {
    const char *name;
    size_t name_len;
    const uint8_t *val;
    size_t val_len;
    bool found;
};

static bool find_cb(void *ud, const uint8_t *name, size_t nl, const uint8_t *val, size_t vl)
{
    struct find *f = ud;
    if (nl == f->name_len && memcmp(name, f->name, nl) == 0) {
        f->val = val;
        f->val_len = vl;
        f->found = true;
        return false;
    }
    return true;
}

const char *fcgi_in_param(const struct fcgi_in *in, const char *name, char *out, size_t out_len)
{
    struct find f = {name, strlen(name), NULL, 0, false};
    size_t k;
    if (out_len == 0 || in->params == NULL)
        return NULL;
    nv_walk(in->params, in->params_len, find_cb, &f);
    if (!f.found)
        return NULL;
    k = f.val_len < out_len - 1 ? f.val_len : out_len - 1;
    memcpy(out, f.val, k);
    out[k] = '\0';
    return out;
}

/* CONTENT_LENGTH: digits only, bounded; -1 when malformed; 0 when absent or empty. */
static long parse_length(const struct fcgi_in *in)
{
    char v[32];
    long n = 0;
    const char *s = fcgi_in_param(in, "CONTENT_LENGTH", v, sizeof(v));
    if (s == NULL || *s == '\0')
        return 0;
    if (strlen(s) > 18)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        n = n * 10 + (*s - '0');
    }
    return n;
}

/* FCGI_GET_VALUES: answers the variables asked that fluxcgi knows. */
struct values {
    struct fcgi_in *in;
    const struct fcgi_limits *lim;
    size_t at;
};

static bool values_cb(void *ud, const uint8_t *name, size_t nl, const uint8_t *val, size_t vl)
{
    struct values *v = ud;
    char num[16];
    const char *known[] = {"FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"};
    (void)val;
    (void)vl;
    for (int i = 0; i < 3; i++) {
        size_t k = strlen(known[i]), m;
        if (nl != k || memcmp(name, known[i], k) != 0)
            continue;
        m = (size_t)snprintf(num, sizeof(num), "%d", i == 2 ? 0 : v->lim->max_conns);
        if (v->at + 2 + k + m > sizeof(v->in->reply))
            return false;
        v->in->reply[v->at++] = (uint8_t)k;
        v->in->reply[v->at++] = (uint8_t)m;
        memcpy(v->in->reply + v->at, known[i], k);
        memcpy(v->in->reply + v->at + k, num, m);
        v->at += k + m;
    }
    return true;
}

/* One complete record at buf[0..FCGI_HEADER_LEN + clen); returns its event. */
static enum fcgi_event record(struct fcgi_in *in, const struct fcgi_limits *lim, int type,
                              uint16_t id, const uint8_t *c, size_t clen)
{
    bool open = in->state != FCGI_IDLE && id == in->id;

    if (id == 0) { /* management records */
        if (type == FCGI_GET_VALUES) {
            struct values v = {in, lim, FCGI_HEADER_LEN};
            if (!nv_walk(c, clen, values_cb, &v)) {
                in->msg = "malformed FCGI_GET_VALUES";
                return FCGI_EV_ERROR;
            }
            put_header(in->reply, FCGI_GET_VALUES_RESULT, 0, v.at - FCGI_HEADER_LEN, 0);
            in->reply_len = v.at;
            return FCGI_EV_REPLY;
        }
        put_header(in->reply, FCGI_UNKNOWN_TYPE, 0, 8, 0);
        memset(in->reply + 8, 0, 8);
        in->reply[8] = (uint8_t)type;
        in->reply_len = 16;
        return FCGI_EV_REPLY;
    }
    switch (type) {
    case FCGI_BEGIN_REQUEST:
        if (clen != 8) {
            in->msg = "FCGI_BEGIN_REQUEST with a body that is not 8 bytes";
            return FCGI_EV_ERROR;
        }
        if (open) {
            in->msg = "FCGI_BEGIN_REQUEST for a request that is already open";
            return FCGI_EV_ERROR;
        }
        if (in->state != FCGI_IDLE) {
            reply_end(in, id, FCGI_CANT_MPX_CONN);
            return FCGI_EV_REPLY;
        }
        if (((unsigned)c[0] << 8 | c[1]) != FCGI_RESPONDER) {
            reply_end(in, id, FCGI_UNKNOWN_ROLE);
            return FCGI_EV_REPLY;
        }
        start_request(in, id, (c[2] & FCGI_KEEP_CONN) != 0);
        return FCGI_EV_NONE;
    case FCGI_ABORT_REQUEST:
        if (!open)
            return FCGI_EV_NONE;
        if (in->state == FCGI_HANDLING) {
            in->aborted_id = id;
            return FCGI_EV_ABORT;
        }
        /* not handed over yet: nothing to stop, answer the abort here */
        fcgi_in_done(in);
        reply_end(in, id, FCGI_REQUEST_COMPLETE);
        return FCGI_EV_REPLY;
    case FCGI_PARAMS:
        if (!open || in->state != FCGI_PARAMS_IN)
            break;
        if (clen == 0) {
            if (!nv_walk(in->params, in->params_len, NULL, NULL)) {
                in->msg = "malformed FCGI_PARAMS";
                return FCGI_EV_ERROR;
            }
            in->state = FCGI_STDIN_IN;
            in->content_length = parse_length(in);
            /* an over-long body is read and dropped: the web server is still sending it,
             * and a connection closed under it would lose the answer too */
            in->too_large = in->content_length < 0 || (size_t)in->content_length > lim->max_body;
            return FCGI_EV_NONE;
        }
        if (in->params_len + clen > lim->max_params) {
            in->msg = "FCGI_PARAMS larger than the limit";
            return FCGI_EV_ERROR;
        }
        if (reserve(&in->params, &in->params_cap, in->params_len + clen)) {
            in->msg = "out of memory";
            return FCGI_EV_ERROR;
        }
        memcpy(in->params + in->params_len, c, clen);
        in->params_len += clen;
        return FCGI_EV_NONE;
    case FCGI_STDIN:
        if (!open || in->state != FCGI_STDIN_IN)
            break;
        if (clen == 0) {
            in->stdin_done = true;
            in->state = FCGI_HANDLING;
            if (in->too_large)
                return FCGI_EV_EARLY;
            in->short_body = (long)in->body_len != in->content_length;
            if (reserve((uint8_t **)&in->body, &in->body_cap, in->body_len + 1)) {
                in->msg = "out of memory";
                return FCGI_EV_ERROR;
            }
            in->body[in->body_len] = '\0';
            return FCGI_EV_REQUEST;
        }
        if (!in->too_large && in->body_len + clen > lim->max_body) {
            in->too_large = true; /* more than CONTENT_LENGTH said */
            in->body_len = 0;
        }
        if (in->too_large) {
            in->discarded += clen;
            if (in->discarded > lim->max_discard) {
                in->msg = "an over-long body beyond the limit of bytes read and dropped";
                return FCGI_EV_ERROR;
            }
            return FCGI_EV_NONE;
        }
        if (reserve((uint8_t **)&in->body, &in->body_cap, in->body_len + clen + 1)) {
            in->msg = "out of memory";
            return FCGI_EV_ERROR;
        }
        memcpy(in->body + in->body_len, c, clen);
        in->body_len += clen;
        return FCGI_EV_NONE;
    default:
        break;
    }
    /* records for requests that are not open (or no longer read), and types a web server
     * does not send: dropped, up to a bound */
    in->discarded += clen;
    if (in->discarded > lim->max_discard) {
        in->msg = "too many bytes for no open request";
        return FCGI_EV_ERROR;
    }
    return FCGI_EV_NONE;
}

enum fcgi_event fcgi_in_next(struct fcgi_in *in, const struct fcgi_limits *lim)
{
    for (;;) {
        const uint8_t *h = in->buf;
        size_t clen, total;
        enum fcgi_event ev;
        if (in->len < FCGI_HEADER_LEN)
            return FCGI_EV_NONE;
        if (h[0] != 1) {
            in->msg = "not a FastCGI version 1 record";
            return FCGI_EV_ERROR;
        }
        clen = (size_t)h[4] << 8 | h[5];
        total = FCGI_HEADER_LEN + clen + h[6];
        if (in->len < total)
            return FCGI_EV_NONE;
        /* while the application answers, later records wait in the buffer (a pipelined
         * request is taken after this one), except an abort of this request */
        if (in->state == FCGI_HANDLING &&
            !(h[1] == FCGI_ABORT_REQUEST && (uint16_t)(h[2] << 8 | h[3]) == in->id))
            return FCGI_EV_NONE;
        ev = record(in, lim, h[1], (uint16_t)(h[2] << 8 | h[3]), h + FCGI_HEADER_LEN, clen);
        memmove(in->buf, in->buf + total, in->len - total);
        in->len -= total;
        if (ev != FCGI_EV_NONE)
            return ev;
    }
}

uint8_t *fcgi_encode_response(uint16_t id, const char *head, size_t head_len, const char *body,
                              size_t body_len, size_t *out_len)
{
    return fcgi_encode_stdout(id, head, head_len, body, body_len, true, out_len);
}

uint8_t *fcgi_encode_stdout(uint16_t id, const char *head, size_t head_len, const char *body,
                            size_t body_len, bool end, size_t *out_len)
{
    size_t data = head_len + body_len, chunk = 65528;
    size_t n_rec = (data + chunk - 1) / chunk;
    size_t size = data + n_rec * FCGI_HEADER_LEN + FCGI_HEADER_LEN + 16;
    uint8_t *out = malloc(size), *p;
    size_t done = 0;
    if (out == NULL)
        return NULL;
    p = out;
    while (done < data) {
        size_t k = data - done < chunk ? data - done : chunk, from_head = 0;
        put_header(p, FCGI_STDOUT, id, k, 0);
        p += FCGI_HEADER_LEN;
        if (done < head_len) {
            from_head = head_len - done < k ? head_len - done : k;
            memcpy(p, head + done, from_head);
        }
        if (k > from_head)
            memcpy(p + from_head, body + (done + from_head - head_len), k - from_head);
        p += k;
        done += k;
    }
    if (end) {
        put_header(p, FCGI_STDOUT, id, 0, 0);
        p += FCGI_HEADER_LEN;
        put_header(p, FCGI_END_REQUEST, id, 8, 0);
        memset(p + 8, 0, 8);
        p += 16;
    }
    *out_len = (size_t)(p - out);
    return out;
}
