/* test_fcgi_proto.c - the FastCGI record parser and encoder (fcgi/fcgi_proto.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../fcgi/fcgi_proto.h"
#include "unit.h"

static const struct fcgi_limits LIM = {4096, 1000, 1 << 20, 64};

struct bytes {
    uint8_t b[1 << 17];
    size_t n;
};

static void rec(struct bytes *o, int type, uint16_t id, const void *c, size_t clen, int pad)
{
    uint8_t h[8] = {1,
                    (uint8_t)type,
                    (uint8_t)(id >> 8),
                    (uint8_t)id,
                    (uint8_t)(clen >> 8),
                    (uint8_t)clen,
                    (uint8_t)pad,
                    0};
    memcpy(o->b + o->n, h, 8);
    memcpy(o->b + o->n + 8, c, clen);
    memset(o->b + o->n + 8 + clen, 0x55, (size_t)pad);
    o->n += 8 + clen + (size_t)pad;
}

static size_t nv(uint8_t *p, const char *name, const char *val, int long_len)
{
    size_t nl = strlen(name), vl = strlen(val), k = 0;
    if (long_len) {
        p[k++] = 0x80;
        p[k++] = 0;
        p[k++] = (uint8_t)(nl >> 8);
        p[k++] = (uint8_t)nl;
    } else {
        p[k++] = (uint8_t)nl;
    }
    if (vl > 127) {
        p[k++] = (uint8_t)(0x80 | (vl >> 24));
        p[k++] = (uint8_t)(vl >> 16);
        p[k++] = (uint8_t)(vl >> 8);
        p[k++] = (uint8_t)vl;
    } else {
        p[k++] = (uint8_t)vl;
    }
    memcpy(p + k, name, nl);
    memcpy(p + k + nl, val, vl);
    return k + nl + vl;
}

static void request(struct bytes *o, uint16_t id, int keep, const char *cl, const char *body,
                    size_t body_len)
{
    uint8_t begin[8] = {0, 1, (uint8_t)keep, 0, 0, 0, 0, 0}, p[1024];
    size_t n = 0;
    char longval[300];
    memset(longval, 'q', sizeof(longval) - 1);
    longval[sizeof(longval) - 1] = '\0';
    rec(o, 1, id, begin, 8, 0);
    n += nv(p + n, "REQUEST_METHOD", "POST", 0);
    n += nv(p + n, "REQUEST_URI", "/generate/queue", 1);
    n += nv(p + n, "HTTP_X_LONG", longval, 0);
    if (cl)
        n += nv(p + n, "CONTENT_LENGTH", cl, 0);
    /* params split over two records, with padding */
    rec(o, 4, id, p, n / 2, 3);
    rec(o, 4, id, p + n / 2, n - n / 2, 0);
    rec(o, 4, id, "", 0, 0);
    if (body_len) {
        rec(o, 5, id, body, body_len / 2, 7);
        rec(o, 5, id, body + body_len / 2, body_len - body_len / 2, 0);
    }
    rec(o, 5, id, "", 0, 0);
}

/* Feeds o in pieces of `step` bytes; returns the events seen (up to max). */
static int feed(struct fcgi_in *in, const struct bytes *o, size_t step, enum fcgi_event *evs,
                int max)
{
    int k = 0;
    for (size_t at = 0; at < o->n; at += step) {
        size_t n = o->n - at < step ? o->n - at : step;
        CHECK_INT(fcgi_in_append(in, o->b + at, n), 0);
        for (;;) {
            enum fcgi_event ev = fcgi_in_next(in, &LIM);
            if (ev == FCGI_EV_NONE)
                break;
            if (k < max)
                evs[k++] = ev;
            if (ev == FCGI_EV_ERROR)
                return k;
        }
    }
    return k;
}

static void test_request(void)
{
    static const size_t steps[] = {1, 3, 8, 9, 100, 1 << 17};
    const char body[] = "{\"prompt\":\"a cat\"}";
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        struct bytes *o = calloc(1, sizeof(*o));
        struct fcgi_in in;
        enum fcgi_event evs[8];
        char v[64];
        int k;
        fcgi_in_init(&in);
        request(o, 258, 1, "18", body, strlen(body));
        k = feed(&in, o, steps[i], evs, 8);
        CHECK_INT(k, 1);
        CHECK_INT(evs[0], FCGI_EV_REQUEST);
        CHECK_INT(in.id, 258);
        CHECK(in.keep_conn);
        CHECK_STR(fcgi_in_param(&in, "REQUEST_METHOD", v, sizeof(v)), "POST");
        CHECK_STR(fcgi_in_param(&in, "REQUEST_URI", v, sizeof(v)), "/generate/queue");
        CHECK_INT(strlen(fcgi_in_param(&in, "HTTP_X_LONG", v, sizeof(v))), 63); /* cut */
        CHECK(fcgi_in_param(&in, "NOPE", v, sizeof(v)) == NULL);
        CHECK_INT(in.body_len, strlen(body));
        CHECK(memcmp(in.body, body, in.body_len) == 0);
        CHECK(!in.short_body && !in.too_large);
        /* the next request on the same connection */
        fcgi_in_done(&in);
        o->n = 0;
        request(o, 2, 0, NULL, "", 0);
        k = feed(&in, o, steps[i], evs, 8);
        CHECK_INT(k, 1);
        CHECK_INT(evs[0], FCGI_EV_REQUEST);
        CHECK(!in.keep_conn);
        CHECK_INT(in.body_len, 0);
        fcgi_in_release(&in);
        free(o);
    }
}

static void test_bodies(void)
{
    struct bytes *o = calloc(1, sizeof(*o));
    struct fcgi_in in;
    enum fcgi_event evs[8];
    char big[3000];
    memset(big, 'b', sizeof(big));

    /* shorter than CONTENT_LENGTH */
    fcgi_in_init(&in);
    request(o, 1, 0, "50", "{}", 2);
    CHECK_INT(feed(&in, o, 5, evs, 8), 1);
    CHECK_INT(evs[0], FCGI_EV_REQUEST);
    CHECK(in.short_body);
    fcgi_in_release(&in);

    /* CONTENT_LENGTH over max_body: read to its end, then EARLY with too_large */
    o->n = 0;
    fcgi_in_init(&in);
    request(o, 1, 0, "3000", big, sizeof(big));
    CHECK_INT(feed(&in, o, 7, evs, 8), 1);
    CHECK_INT(evs[0], FCGI_EV_EARLY);
    CHECK(in.too_large);
    fcgi_in_release(&in);

    /* a body longer than its (small) CONTENT_LENGTH and the limit */
    o->n = 0;
    fcgi_in_init(&in);
    request(o, 1, 0, "5", big, sizeof(big));
    CHECK_INT(feed(&in, o, 64, evs, 8), 1);
    CHECK_INT(evs[0], FCGI_EV_EARLY);
    CHECK(in.too_large);
    fcgi_in_release(&in);

    /* CONTENT_LENGTH that is not a number */
    o->n = 0;
    fcgi_in_init(&in);
    request(o, 1, 0, "12x", "{}", 2);
    CHECK_INT(feed(&in, o, 64, evs, 8), 1);
    CHECK_INT(evs[0], FCGI_EV_EARLY);
    CHECK_INT(in.content_length, -1);
    fcgi_in_release(&in);
    free(o);
}

static void test_management_and_refusals(void)
{
    struct bytes *o = calloc(1, sizeof(*o));
    struct fcgi_in in;
    uint8_t p[64], role2[8] = {0, 2, 0, 0, 0, 0, 0, 0}, keep[8] = {0, 1, 1, 0, 0, 0, 0, 0};
    size_t n = 0;

    fcgi_in_init(&in);
    n += nv(p, "FCGI_MPXS_CONNS", "", 0);
    n += nv(p + n, "FCGI_MAX_CONNS", "", 0);
    n += nv(p + n, "SOMETHING_ELSE", "", 0);
    rec(o, 9, 0, p, n, 0);
    CHECK_INT(fcgi_in_append(&in, o->b, o->n), 0);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_REPLY);
    CHECK_INT(in.reply[1], FCGI_GET_VALUES_RESULT);
    CHECK(memmem(in.reply, in.reply_len, "FCGI_MPXS_CONNS0", 16) != NULL);
    CHECK(memmem(in.reply, in.reply_len, "FCGI_MAX_CONNS64", 16) != NULL);
    CHECK(memmem(in.reply, in.reply_len, "SOMETHING", 9) == NULL);

    /* an unknown management type */
    o->n = 0;
    rec(o, 77, 0, "", 0, 0);
    fcgi_in_append(&in, o->b, o->n);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_REPLY);
    CHECK_INT(in.reply[1], FCGI_UNKNOWN_TYPE);
    CHECK_INT(in.reply[8], 77);

    /* the authorizer role */
    o->n = 0;
    rec(o, 1, 5, role2, 8, 0);
    fcgi_in_append(&in, o->b, o->n);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_REPLY);
    CHECK_INT(in.reply[1], FCGI_END_REQUEST);
    CHECK_INT(in.reply[12], FCGI_UNKNOWN_ROLE);

    /* a second request while one is being read; then an abort of the first */
    o->n = 0;
    rec(o, 1, 1, keep, 8, 0);
    rec(o, 1, 2, keep, 8, 0);
    fcgi_in_append(&in, o->b, o->n);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_REPLY);
    CHECK_INT(in.reply[3], 2);
    CHECK_INT(in.reply[12], FCGI_CANT_MPX_CONN);
    o->n = 0;
    rec(o, 2, 1, "", 0, 0);
    fcgi_in_append(&in, o->b, o->n);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_REPLY); /* answered by the parser */
    CHECK_INT(in.reply[1], FCGI_END_REQUEST);
    CHECK_INT(in.state, FCGI_IDLE);

    /* while a request is answered, a pipelined one waits; an abort of it does not */
    o->n = 0;
    request(o, 3, 1, NULL, "", 0);
    request(o, 4, 1, NULL, "", 0);
    rec(o, 2, 3, "", 0, 0);
    fcgi_in_append(&in, o->b, o->n);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_REQUEST);
    CHECK_INT(in.id, 3);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_NONE);
    fcgi_in_done(&in);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_REQUEST);
    CHECK_INT(in.id, 4);
    fcgi_in_done(&in);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_NONE); /* the abort of 3 is stale: dropped */
    CHECK_INT(in.len, 0);
    fcgi_in_release(&in);
    free(o);
}

static void test_errors(void)
{
    struct bytes *o = calloc(1, sizeof(*o));
    struct fcgi_in in;
    uint8_t begin[8] = {0, 1, 0, 0, 0, 0, 0, 0}, bad[4] = {5, 200, 'a', 'b'}, big[4096];

    /* version 2 */
    fcgi_in_init(&in);
    fcgi_in_append(&in, "\x02\x01\x00\x01\x00\x08\x00\x00", 8);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_ERROR);
    fcgi_in_release(&in);
    /* HTTP instead of FastCGI */
    fcgi_in_init(&in);
    fcgi_in_append(&in, "GET / HTTP/1.1\r\n", 16);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_ERROR);
    fcgi_in_release(&in);
    /* a BEGIN_REQUEST body of the wrong size */
    fcgi_in_init(&in);
    rec(o, 1, 1, begin, 4, 0);
    fcgi_in_append(&in, o->b, o->n);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_ERROR);
    fcgi_in_release(&in);
    /* name-value lengths past the end */
    o->n = 0;
    fcgi_in_init(&in);
    rec(o, 1, 1, begin, 8, 0);
    rec(o, 4, 1, bad, 4, 0);
    rec(o, 4, 1, "", 0, 0);
    fcgi_in_append(&in, o->b, o->n);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_ERROR);
    fcgi_in_release(&in);
    /* params over the limit */
    o->n = 0;
    memset(big, 1, sizeof(big));
    fcgi_in_init(&in);
    rec(o, 1, 1, begin, 8, 0);
    rec(o, 4, 1, big, sizeof(big), 0);
    rec(o, 4, 1, big, 8, 0);
    fcgi_in_append(&in, o->b, o->n);
    CHECK_INT(fcgi_in_next(&in, &LIM), FCGI_EV_ERROR);
    fcgi_in_release(&in);
    /* endless records for no open request */
    o->n = 0;
    fcgi_in_init(&in);
    {
        struct fcgi_limits small = LIM;
        small.max_discard = 10000;
        for (int i = 0; i < 4; i++)
            rec(o, 5, 9, big, sizeof(big), 0);
        fcgi_in_append(&in, o->b, o->n);
        CHECK_INT(fcgi_in_next(&in, &small), FCGI_EV_ERROR);
    }
    fcgi_in_release(&in);
    free(o);
}

static void test_encode(void)
{
    size_t body_len = 200000, len = 0, at = 0, got = 0;
    char *body = malloc(body_len), head[] = "Status: 200 OK\r\n\r\n";
    uint8_t *out;
    int end = 0;
    for (size_t i = 0; i < body_len; i++)
        body[i] = (char)(i * 7);
    out = fcgi_encode_response(300, head, strlen(head), body, body_len, &len);
    CHECK(out != NULL);
    while (out && at + 8 <= len) {
        size_t clen = (size_t)out[at + 4] << 8 | out[at + 5];
        CHECK_INT(out[at], 1);
        CHECK_INT(out[at + 2] << 8 | out[at + 3], 300);
        if (out[at + 1] == FCGI_STDOUT && clen) {
            for (size_t i = 0; i < clen; i++, got++) {
                char want = got < strlen(head) ? head[got] : body[got - strlen(head)];
                if ((char)out[at + 8 + i] != want) {
                    CHECK_INT(got, -1);
                    at = len;
                    break;
                }
            }
        } else if (out[at + 1] == FCGI_END_REQUEST) {
            end++;
            CHECK_INT(out[at + 12], FCGI_REQUEST_COMPLETE);
        }
        at += 8 + clen + out[at + 6];
    }
    CHECK_INT(got, strlen(head) + body_len);
    CHECK_INT(end, 1);
    CHECK_INT(at, len);
    free(out);
    free(body);
}

int main(int argc, char **argv)
{
    unit_parse_args(argc, argv);
    test_request();
    test_bodies();
    test_management_and_refusals();
    test_errors();
    test_encode();
    return unit_done();
}
