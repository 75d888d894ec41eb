/* parse.c - reading a generation request: strict JSON, strict UTF-8, the fields and their bounds.
 */
#include "api.h"

#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/err.h"
#include "api_int.h"
#include "auth.h"

#define JSON_MAX_DEPTH 16

/* ---- request parsing ---------------------------------------------------------------------- */

/* Where a parse error goes. */
struct perr {
    const char **field;
    char *msg;
    size_t len;
};

__attribute__((format(printf, 4, 5))) static int field_error(struct perr *pe, const char *name,
                                                             int rc, const char *fmt, ...)
{
    va_list ap;
    *pe->field = name;
    if (pe->msg && pe->len) {
        va_start(ap, fmt);
        vsnprintf(pe->msg, pe->len, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
 * json-c's own check lets those through. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            k = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            return false;
        }
        if (i + k >= n)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF)
                return false;
        i += k + 1;
    }
    return true;
}

static int hex4(const char *s, size_t left)
{
    int v = 0;
    if (left < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/*
 * What json-c lets through but a strict reader must not: raw control characters inside
 * strings (RFC 8259 section 7 wants them escaped), escaped lone surrogates ("\ud800": json-c
 * turns them into U+FFFD without a word), and - counted here, compared by the caller -
 * duplicate keys in the top-level object (json-c keeps the last one; another reader of the
 * same body may keep the first).  Runs on text json-c has accepted, so it only follows
 * strings and nesting.  Returns NULL, or why with *at set to the byte; sets *members to the
 * number of members of a top-level object.
 */
static const char *json_strict_text(const char *s, size_t n, size_t *members, size_t *at)
{
    int depth = 0;
    size_t commas = 0;
    bool top_object = false, any = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            any = any || (top_object && depth == 1);
            for (i++; i < n && s[i] != '"'; i++) {
                *at = i;
                if ((unsigned char)s[i] < 0x20)
                    return "a control character inside a string must be escaped";
                if (s[i] != '\\')
                    continue;
                if (++i < n && s[i] == 'u') {
                    int u = hex4(s + i + 1, n - i - 1), lo;
                    i += 4;
                    if (u >= 0xDC00 && u <= 0xDFFF)
                        return "a lone surrogate escape (\\udc00-\\udfff without a high one)";
                    if (u >= 0xD800 && u <= 0xDBFF) {
                        lo = i + 2 < n && s[i + 1] == '\\' && s[i + 2] == 'u'
                                 ? hex4(s + i + 3, n - i - 3)
                                 : -1;
                        if (lo < 0xDC00 || lo > 0xDFFF)
                            return "a lone surrogate escape (\\ud800-\\udbff without a low one)";
                        i += 6;
                    }
                }
            }
        } else if (c == '{' || c == '[') {
            top_object = top_object || (depth == 0 && c == '{');
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',' && depth == 1) {
            commas++;
        }
    }
    *members = top_object && any ? commas + 1 : 0;
    return NULL;
}

/* An integer field that must fit an int. */
static int get_int_field(struct perr *pe, json_object *v, const char *name, int *out)
{
    int64_t n;
    if (json_object_is_type(v, json_type_double))
        return field_error(pe, name, FX_EINVAL, "%s: must be an integer, not a fraction", name);
    if (!json_object_is_type(v, json_type_int))
        return field_error(pe, name, FX_EINVAL, "%s: must be an integer, got %s", name,
                           json_type_to_name(json_object_get_type(v)));
    n = json_object_get_int64(v);
    if (n < INT_MIN || n > INT_MAX || (n == INT64_MAX && json_object_get_uint64(v) > INT64_MAX))
        return field_error(pe, name, FX_ERANGE, "%s: %s is out of range", name,
                           json_object_to_json_string(v));
    *out = (int)n;
    return 0;
}

int api_parse_generate(const struct api_ctx *ctx, const char *body, size_t len,
                       struct fx_request *out, char **prompt, const char **field, char *msg,
                       size_t msg_len)
{
    return api_parse_generate_ex(ctx, body, len, out, prompt, NULL, field, msg, msg_len);
}

int api_parse_generate_ex(const struct api_ctx *ctx, const char *body, size_t len,
                          struct fx_request *out, char **prompt, struct api_job_extra *extra,
                          const char **field, char *msg, size_t msg_len)
{
    struct api_job_extra ignored;
    const char *dummy;
    struct perr pe = {field ? field : &dummy, msg, msg_len};
    json_tokener *tok = NULL;
    json_object *o = NULL;
    size_t end;
    int rc;

    field = pe.field;
    *field = NULL;
    if (extra == NULL)
        extra = &ignored;
    memset(extra, 0, sizeof(*extra));
    *prompt = NULL;
    *out = ctx->defaults;
    out->prompt = NULL;
    out->prompt_len = 0;
    out->has_seed = false;

    if (len == 0)
        return field_error(&pe, NULL, FX_EFORMAT, "malformed JSON: the body is empty");
    if (len > INT_MAX)
        return field_error(&pe, NULL, FX_ETOOBIG, "the body is too large");
    tok = json_tokener_new_ex(JSON_MAX_DEPTH);
    if (tok == NULL)
        return FX_ENOMEM;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    o = json_tokener_parse_ex(tok, body, (int)len);
    end = json_tokener_get_parse_end(tok);
    if (o == NULL && json_tokener_get_error(tok) == json_tokener_continue) {
        /* a number or literal at the very end needs a delimiter to be complete */
        o = json_tokener_parse_ex(tok, " ", 1);
        end = len;
    }
    if (o == NULL && json_tokener_get_error(tok) == json_tokener_success) {
        rc = field_error(&pe, NULL, FX_EINVAL, "the body must be a JSON object, got null");
        goto out;
    }
    if (o == NULL) {
        enum json_tokener_error e = json_tokener_get_error(tok);
        if (e == json_tokener_continue)
            rc = field_error(&pe, NULL, FX_EFORMAT, "malformed JSON: the body ends too early");
        else
            rc = field_error(&pe, NULL, FX_EFORMAT, "malformed JSON at byte %zu: %s", end,
                             json_tokener_error_desc(e));
        goto out;
    }
    while (end < len && strchr(" \t\r\n", body[end]) && body[end] != '\0')
        end++;
    if (end != len) {
        rc = field_error(&pe, NULL, FX_EFORMAT,
                         "malformed JSON: unexpected bytes after the value at byte %zu", end);
        goto out;
    }
    size_t members = 0, at = 0;
    const char *why = json_strict_text(body, len, &members, &at);
    if (why) {
        rc = field_error(&pe, NULL, FX_EFORMAT, "malformed JSON at byte %zu: %s", at, why);
        goto out;
    }
    if (json_object_is_type(o, json_type_object) &&
        members != (size_t)json_object_object_length(o)) {
        rc =
            field_error(&pe, NULL, FX_EFORMAT, "malformed JSON: a key appears twice in the object");
        goto out;
    }
    if (!json_object_is_type(o, json_type_object)) {
        rc = field_error(&pe, NULL, FX_EINVAL, "the body must be a JSON object, got %s",
                         json_type_to_name(json_object_get_type(o)));
        goto out;
    }
    json_object_object_foreach(o, key, v)
    {
        if (strcmp(key, "prompt") == 0) {
            const char *s;
            size_t n;
            if (!json_object_is_type(v, json_type_string)) {
                rc = field_error(&pe, "prompt", FX_EINVAL, "prompt: must be a string, got %s",
                                 json_type_to_name(json_object_get_type(v)));
                goto out;
            }
            s = json_object_get_string(v);
            n = (size_t)json_object_get_string_len(v);
            if (!utf8_valid((const unsigned char *)s, n)) {
                rc = field_error(&pe, "prompt", FX_EUTF8, "prompt: invalid UTF-8");
                goto out;
            }
            if (memchr(s, '\0', n)) {
                rc = field_error(&pe, "prompt", FX_EINVAL,
                                 "prompt: must not contain NUL characters");
                goto out;
            }
            free(*prompt);
            *prompt = strdup(s);
            if (*prompt == NULL) {
                rc = FX_ENOMEM;
                goto out;
            }
            out->prompt = *prompt;
            out->prompt_len = n;
        } else if (strcmp(key, "guidance_scale") == 0) {
            if (!json_object_is_type(v, json_type_double) &&
                !json_object_is_type(v, json_type_int)) {
                rc = field_error(&pe, "guidance_scale", FX_EINVAL,
                                 "guidance_scale: must be a number, got %s",
                                 json_type_to_name(json_object_get_type(v)));
                goto out;
            }
            out->guidance = json_object_get_double(v);
            if (!isfinite(out->guidance)) {
                rc = field_error(&pe, "guidance_scale", FX_ERANGE,
                                 "guidance_scale: must be a finite number");
                goto out;
            }
        } else if (strcmp(key, "num_inference_steps") == 0) {
            if ((rc = get_int_field(&pe, v, "num_inference_steps", &out->steps)))
                goto out;
        } else if (strcmp(key, "width") == 0) {
            if ((rc = get_int_field(&pe, v, "width", &out->width)))
                goto out;
        } else if (strcmp(key, "height") == 0) {
            if ((rc = get_int_field(&pe, v, "height", &out->height)))
                goto out;
        } else if (strcmp(key, "seed") == 0) {
            int64_t n;
            if (json_object_is_type(v, json_type_null))
                continue;
            if (json_object_is_type(v, json_type_double)) {
                rc = field_error(&pe, "seed", FX_EINVAL,
                                 "seed: must be an integer, not a "
                                 "fraction");
                goto out;
            }
            if (!json_object_is_type(v, json_type_int)) {
                rc = field_error(&pe, "seed", FX_EINVAL, "seed: must be an integer or null, got %s",
                                 json_type_to_name(json_object_get_type(v)));
                goto out;
            }
            n = json_object_get_int64(v);
            if (n < 0 || (uint64_t)n > FX_SEED_MAX) {
                rc = field_error(&pe, "seed", FX_ERANGE, "seed: must be from 0 to %llu",
                                 (unsigned long long)FX_SEED_MAX);
                goto out;
            }
            out->seed = (uint64_t)n;
            out->has_seed = true;
        } else if (strcmp(key, "webhook") == 0) {
            char why[200];
            if (json_object_is_type(v, json_type_null))
                continue;
            if (!json_object_is_type(v, json_type_string)) {
                rc =
                    field_error(&pe, "webhook", FX_EINVAL, "webhook: must be a URL or null, got %s",
                                json_type_to_name(json_object_get_type(v)));
                goto out;
            }
            if (strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v)) {
                rc = field_error(&pe, "webhook", FX_EINVAL, "webhook: must not contain NUL");
                goto out;
            }
            rc = auth_webhook_check(json_object_get_string(v), ctx->cfg->webhook_hosts, why,
                                    sizeof(why));
            if (rc) {
                rc = field_error(&pe, "webhook", rc == FX_ENOMEM ? FX_ENOMEM : FX_EINVAL,
                                 "webhook: %s", why);
                goto out;
            }
            snprintf(extra->webhook, sizeof(extra->webhook), "%s", json_object_get_string(v));
        } else if (strcmp(key, "webhook_progress") == 0) {
            if (!json_object_is_type(v, json_type_boolean)) {
                rc = field_error(&pe, "webhook_progress", FX_EINVAL,
                                 "webhook_progress: must be true or false, got %s",
                                 json_type_to_name(json_object_get_type(v)));
                goto out;
            }
            extra->webhook_progress = json_object_get_boolean(v);
        } else {
            char shown[64];
            size_t i, k = strlen(key);
            /* echo at most 40 printable ASCII bytes of a hostile key */
            for (i = 0; i < k && i < 40; i++)
                shown[i] = key[i] >= 0x20 && key[i] < 0x7f ? key[i] : '?';
            shown[i] = '\0';
            rc = field_error(&pe, key, FX_EINVAL,
                             "%s%s: unknown field (known: prompt, "
                             "guidance_scale, num_inference_steps, width, height, seed, webhook, "
                             "webhook_progress)",
                             shown, k > 40 ? "..." : "");
            *field = "body";
            goto out;
        }
    }
    if (out->prompt == NULL) {
        rc = field_error(&pe, "prompt", FX_EINVAL, "prompt: required");
        goto out;
    }
    rc = fx_request_validate(out, &ctx->limits, field, msg, msg_len);
out:
    json_object_put(o);
    json_tokener_free(tok);
    if (rc) {
        free(*prompt);
        *prompt = NULL;
    }
    return rc;
}
