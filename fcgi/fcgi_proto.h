/*
 * fcgi_proto.h - the FastCGI protocol (version 1), as a pure state machine over bytes.
 *
 * Written here rather than taken from libfcgi because libfcgi reads records with blocking
 * calls on one connection per thread: an idle or slow peer holds a thread, a kept-alive
 * connection from the web server holds one forever, and a request that waits for its image
 * holds one for the whole generation.  fluxcgi instead multiplexes every connection in one
 * event loop (fcgi/server.h), which needs a parser that takes whatever bytes have arrived and
 * says what they complete.  No Debian package offers that.
 *
 * One struct fcgi_in is the incoming side of one connection.  The caller appends the bytes
 * it read (fcgi_in_append) and calls fcgi_in_next until it returns FCGI_EV_NONE; each event
 * says what the records so far completed.  One request at a time per connection (the web
 * servers fluxcgi sits behind never multiplex; a second BEGIN_REQUEST while one is being
 * read is refused with FCGI_CANT_MPX_CONN; one that comes while the first is answered waits
 * its turn), role RESPONDER only.  Everything is bounded by struct
 * fcgi_limits: a peer that breaks the protocol gets FCGI_EV_ERROR and the caller closes the
 * connection.
 *
 * Record layout (all integers big-endian): version(1) type(1) requestId(2) contentLength(2)
 * paddingLength(1) reserved(1), then content and padding.  Name-value pairs: a length of
 * one byte (< 128) or four bytes (high bit set, 31 bits), for the name and then the value,
 * then the bytes.
 *
 * Thread-safety: none; one struct per connection, used by one thread at a time.
 */
#ifndef FX_FCGI_PROTO_H
#define FX_FCGI_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* record types */
enum {
    FCGI_BEGIN_REQUEST = 1,
    FCGI_ABORT_REQUEST = 2,
    FCGI_END_REQUEST = 3,
    FCGI_PARAMS = 4,
    FCGI_STDIN = 5,
    FCGI_STDOUT = 6,
    FCGI_STDERR = 7,
    FCGI_DATA = 8,
    FCGI_GET_VALUES = 9,
    FCGI_GET_VALUES_RESULT = 10,
    FCGI_UNKNOWN_TYPE = 11
};

/* END_REQUEST protocol statuses */
enum {
    FCGI_REQUEST_COMPLETE = 0,
    FCGI_CANT_MPX_CONN = 1,
    FCGI_OVERLOADED = 2,
    FCGI_UNKNOWN_ROLE = 3
};

#define FCGI_HEADER_LEN 8
#define FCGI_RESPONDER 1
#define FCGI_KEEP_CONN 1

struct fcgi_limits {
    size_t max_params;  /* total bytes of the PARAMS stream of one request */
    size_t max_body;    /* bodies longer than this are not kept (too_large is set) */
    size_t max_discard; /* bytes of an over-long body read and dropped before the peer is
                           cut off */
    int max_conns;      /* answered to FCGI_GET_VALUES */
};

enum fcgi_event {
    FCGI_EV_NONE,    /* need more bytes */
    FCGI_EV_REQUEST, /* a request is complete: fcgi_in_param, body, body_len, too_large */
    FCGI_EV_EARLY,   /* the params are complete and CONTENT_LENGTH is over max_body: the
                        request may be answered now; its body is dropped as it comes */
    FCGI_EV_ABORT,   /* the peer aborted the open request (FCGI_ABORT_REQUEST) */
    FCGI_EV_REPLY,   /* send reply[0..reply_len) (management answers, refusals) */
    FCGI_EV_ERROR    /* a protocol violation: msg says which; close the connection */
};

enum fcgi_req_state {
    FCGI_IDLE,      /* no request open */
    FCGI_PARAMS_IN, /* reading PARAMS */
    FCGI_STDIN_IN,  /* reading STDIN */
    FCGI_HANDLING   /* complete, handed to the application; records for it are dropped until
                       fcgi_in_done */
};

struct fcgi_in {
    uint8_t *buf; /* unparsed bytes */
    size_t len, cap;

    enum fcgi_req_state state;
    uint16_t id;     /* the open request */
    bool keep_conn;  /* the web server keeps the connection after this request */
    bool stdin_done; /* the empty STDIN record arrived */
    uint8_t *params; /* raw name-value pairs of the open request */
    size_t params_len, params_cap;
    char *body; /* the request body (NUL-terminated for convenience) */
    size_t body_len, body_cap;
    long content_length; /* -1: absent or malformed */
    bool too_large;      /* CONTENT_LENGTH or the body is over max_body */
    bool short_body;     /* STDIN ended before CONTENT_LENGTH bytes */
    size_t discarded;

    uint8_t reply[128]; /* FCGI_EV_REPLY bytes */
    size_t reply_len;
    uint16_t aborted_id; /* FCGI_EV_ABORT */
    const char *msg;     /* FCGI_EV_ERROR */
};

void fcgi_in_init(struct fcgi_in *in);
void fcgi_in_release(struct fcgi_in *in);

/* Appends n bytes read from the peer.  Returns 0 or FX_ENOMEM. */
int fcgi_in_append(struct fcgi_in *in, const void *data, size_t n);

/* Parses what has arrived; returns the next event (see enum fcgi_event). */
enum fcgi_event fcgi_in_next(struct fcgi_in *in, const struct fcgi_limits *lim);

/* The application answered the open request: the connection takes the next one. */
void fcgi_in_done(struct fcgi_in *in);

/* The value of a param of the open request (NUL-terminated copy into out, at most out_len
 * bytes with the NUL; longer values are cut), or NULL when absent. */
const char *fcgi_in_param(const struct fcgi_in *in, const char *name, char *out, size_t out_len);

/*
 * Encodes a response to request id: `head` (CGI-style header lines, ending with the blank
 * line) and `body` as STDOUT records, the empty STDOUT record and END_REQUEST (app status 0,
 * FCGI_REQUEST_COMPLETE).  Returns a malloc'd buffer and its length in *out_len, or NULL
 * when out of memory.
 */
uint8_t *fcgi_encode_response(uint16_t id, const char *head, size_t head_len, const char *body,
                              size_t body_len, size_t *out_len);

/* The same, but the end of the answer (the empty STDOUT record and END_REQUEST) only when
 * end is true: a streamed answer is sent in parts.  With no data and end false, returns an
 * empty malloc'd buffer (*out_len 0). */
uint8_t *fcgi_encode_stdout(uint16_t id, const char *head, size_t head_len, const char *body,
                            size_t body_len, bool end, size_t *out_len);

#endif
