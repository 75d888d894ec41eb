/*
 * fuzz_fcgi_proto.c - libFuzzer target for the FastCGI record parser and encoder
 * (fcgi/fcgi_proto.h), the first code that sees the bytes of every peer.
 *
 * Input layout: byte 0 sets the size of the pieces the rest is fed in (1 to 64 bytes, or
 * all at once when 0), as reads from a socket would cut it; the rest is what a peer sends.
 * The target acts as fluxcgi's event loop does: takes every complete request (reading a
 * few params), answers it (fcgi_in_done), answers aborts, and stops at a protocol error.
 *
 * Checked beyond memory safety: every reply is one well-formed record of the length it
 * claims; a complete request's body is no longer than max_body and, unless flagged short,
 * exactly its CONTENT_LENGTH; and the encoder's output, decoded again, gives back exactly
 * the head and body it was given.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../fcgi/fcgi_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct fcgi_limits LIM = {8192, 4096, 1 << 16, 16};

static void check_reply(const struct fcgi_in *in)
{
    size_t clen;
    if (in->reply_len < FCGI_HEADER_LEN || in->reply_len > sizeof(in->reply))
        abort();
    clen = (size_t)in->reply[4] << 8 | in->reply[5];
    if (in->reply[0] != 1 || FCGI_HEADER_LEN + clen + in->reply[6] != in->reply_len)
        abort();
}

/* Decodes an encoded answer and compares it with what went in. */
static void check_encode(const uint8_t *data, size_t size)
{
    size_t head_len = size / 3, len = 0, at = 0, got = 0;
    uint8_t *out = fcgi_encode_response(7, (const char *)data, head_len,
                                        (const char *)data + head_len, size - head_len, &len);
    int ends = 0;
    if (out == NULL)
        return;
    while (at + FCGI_HEADER_LEN <= len) {
        size_t clen = (size_t)out[at + 4] << 8 | out[at + 5];
        if (out[at] != 1 || (out[at + 2] << 8 | out[at + 3]) != 7)
            abort();
        if (out[at + 1] == FCGI_STDOUT) {
            if (got + clen > size || memcmp(out + at + FCGI_HEADER_LEN, data + got, clen) != 0)
                abort();
            got += clen;
        } else if (out[at + 1] == FCGI_END_REQUEST) {
            ends++;
        } else {
            abort();
        }
        at += FCGI_HEADER_LEN + clen + out[at + 6];
    }
    if (at != len || got != size || ends != 1)
        abort();
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fcgi_in in;
    size_t step;
    char v[64];

    if (size == 0)
        return 0;
    step = data[0] % 65;
    data++, size--;
    if (step == 0)
        step = size ? size : 1;
    check_encode(data, size);
    fcgi_in_init(&in);
    for (size_t at = 0; at < size; at += step) {
        size_t n = size - at < step ? size - at : step;
        if (fcgi_in_append(&in, data + at, n) != 0)
            break;
        for (;;) {
            enum fcgi_event ev = fcgi_in_next(&in, &LIM);
            if (ev == FCGI_EV_NONE)
                break;
            if (ev == FCGI_EV_ERROR) {
                if (in.msg == NULL)
                    abort();
                goto out;
            }
            if (ev == FCGI_EV_REPLY)
                check_reply(&in);
            if (ev == FCGI_EV_REQUEST) {
                if (in.body_len > LIM.max_body)
                    abort();
                if (!in.short_body && (long)in.body_len != in.content_length)
                    abort();
            }
            if (ev == FCGI_EV_REQUEST || ev == FCGI_EV_EARLY) {
                fcgi_in_param(&in, "REQUEST_METHOD", v, sizeof(v));
                fcgi_in_param(&in, "REQUEST_URI", v, sizeof(v));
                fcgi_in_param(&in, "", v, 1);
                fcgi_in_done(&in);
            }
            if (ev == FCGI_EV_ABORT)
                fcgi_in_done(&in);
        }
    }
out:
    fcgi_in_release(&in);
    return 0;
}
