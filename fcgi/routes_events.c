/* routes_events.c - GET /queue/events/{id}: a job's progress as Server-Sent Events.
 *
 * Each event's data is the job's status JSON (the body of GET /queue/status/{id}, with
 * progress and eta_s), on one line:
 *   event: state      the job is in a new state (the first event is always one)
 *   event: progress   a denoising step was done
 *   event: end        the job ended (completed: result_url; failed/cancelled: error); the
 *                     stream closes
 * A comment line every 15 s without events keeps proxies from closing the stream.  The
 * handler answers the head and the first event; the front end keeps the request open and
 * calls api_events_poll as the job moves (fcgi/server.h). */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/err.h"
#include "api_int.h"

#define KEEPALIVE_MS 15000

/* Appends "event: NAME\ndata: JSON\n\n" to the buffer. */
static int append_event(char **buf, size_t *len, const char *name, json_object *o)
{
    const char *js =
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t add = strlen(name) + strlen(js) + 20;
    char *b = realloc(*buf, *len + add + 1);
    if (b == NULL)
        return FX_ENOMEM;
    *buf = b;
    *len += (size_t)snprintf(b + *len, add + 1, "event: %s\ndata: %s\n\n", name, js);
    return 0;
}

/* The events for what changed in j since *ev; true when j has ended (the `end` event). */
static bool events_for(const struct api_ctx *ctx, const struct store_job *j, struct api_events *ev,
                       int64_t now, char **buf, size_t *len)
{
    enum store_state s = api_visible_state(ctx, j);
    bool end = api_terminal(s);
    json_object *o = NULL;
    if (end || (int)s != ev->state || j->step != ev->step) {
        o = api_job_status(ctx, j);
        if (o == NULL || append_event(buf, len,
                                      end                   ? "end"
                                      : (int)s != ev->state ? "state"
                                                            : "progress",
                                      o) != 0) {
            json_object_put(o);
            return false; /* out of memory: the next poll tries again */
        }
        json_object_put(o);
        ev->state = (int)s;
        ev->step = j->step;
        ev->last_sent_ms = now;
    }
    return end;
}

void route_events(const struct api_ctx *ctx, struct store *st, const struct api_caller *who,
                  const char *id, size_t id_len, struct api_response *rs)
{
    struct store_job j;
    char *buf = NULL;
    size_t len = 0;
    bool end;

    if (api_load_job(st, who, id, id_len, rs, &j))
        return;
    memset(&rs->events, 0, sizeof(rs->events));
    rs->events.state = -1;
    rs->events.step = -1;
    end = events_for(ctx, &j, &rs->events, api_mono_ms(), &buf, &len);
    if (buf == NULL) {
        store_job_release(&j);
        api_send_error(rs, FX_ENOMEM, "out of memory");
        return;
    }
    rs->status = 200;
    rs->content_type = "text/event-stream";
    rs->body = buf;
    rs->body_len = len;
    api_add_header(rs, "Cache-Control", "no-store");
    api_add_header(rs, "X-Accel-Buffering", "no"); /* nginx: pass each event on at once */
    if (!end) {
        rs->stream = true;
        snprintf(rs->park_id, sizeof(rs->park_id), "%s", j.id);
    }
    store_job_release(&j);
}

bool api_events_poll(const struct api_ctx *ctx, struct store *st, const char *id, enum api_poll why,
                     struct api_events *ev, int64_t now_ms, char **out, size_t *out_len)
{
    struct store_job j;
    int rc = store_get(st, id, &j);
    bool end = false;

    *out = NULL;
    *out_len = 0;
    if (rc == 0) {
        end = events_for(ctx, &j, ev, now_ms, out, out_len);
        store_job_release(&j);
    } else if (rc == FX_ENOENT) {
        /* deleted under the stream (audit retention): say so and end */
        json_object *o = json_object_new_object();
        json_object_object_add(o, "request_id", json_object_new_string(id));
        json_object_object_add(o, "status", json_object_new_string("deleted"));
        end = append_event(out, out_len, "end", o) == 0;
        json_object_put(o);
    }
    if (!end && why == API_POLL_STOPPING) {
        /* the stream ends; an EventSource reconnects by itself once the service is back */
        static const char bye[] = ": the service is stopping; reconnect to follow the job\n\n";
        char *b = realloc(*out, *out_len + sizeof(bye));
        if (b) {
            memcpy(b + *out_len, bye, sizeof(bye));
            *out = b;
            *out_len += sizeof(bye) - 1;
        }
        return true;
    }
    if (!end && *out == NULL && now_ms - ev->last_sent_ms >= KEEPALIVE_MS) {
        static const char ka[] = ": keep-alive\n\n";
        *out = malloc(sizeof(ka));
        if (*out) {
            memcpy(*out, ka, sizeof(ka));
            *out_len = sizeof(ka) - 1;
            ev->last_sent_ms = now_ms;
        }
    }
    return end;
}
