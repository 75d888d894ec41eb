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
#include "../core/imgw.h"
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

/* ---- compatible field readers ------------------------------------------------------------ */

/*
 * What the seed's FastAPI (pydantic) service accepted, accepted here with the same meaning:
 * an integer written as a number with no fraction (4.0, 1e3) or as a string holding one
 * ("4"); a number written as a string ("3.5").  A fraction for an integer (4.5), a bool, an
 * object or an array stay errors.  Returns 0 and sets *out, 1 when v is not a number in any
 * of those forms, FX_ERANGE-free: range is the caller's.
 */
static int number_of(json_object *v, double *out, bool *is_int, int64_t *iv)
{
    *is_int = false;
    if (json_object_is_type(v, json_type_int)) {
        *iv = json_object_get_int64(v);
        *out = (double)*iv;
        /* json-c saturates: tell 2^63 and above apart from INT64_MAX itself */
        if (*iv == INT64_MAX && json_object_get_uint64(v) > INT64_MAX)
            *out = 1e300;
        *is_int = *out < 9.3e18;
        return 0;
    }
    if (json_object_is_type(v, json_type_double)) {
        *out = json_object_get_double(v);
        return 0;
    }
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v), *p = s;
        char *end;
        /* decimal notation only: strtod would also take "inf", "nan" and hex */
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || strspn(p, "0123456789+-.eE \t") != strlen(p))
            return 1;
        *out = strtod(p, &end);
        while (*end == ' ' || *end == '\t')
            end++;
        return *end == '\0' && end != p ? 0 : 1;
    }
    return 1;
}

int api_get_int(json_object *v, const char *name, int64_t lo, int64_t hi, int64_t *out,
                const char **field, char *msg, size_t msg_len)
{
    struct perr pe = {field, msg, msg_len};
    double d = 0;
    bool is_int;
    int64_t iv = 0;
    if (number_of(v, &d, &is_int, &iv))
        return field_error(&pe, name, FX_EINVAL, "%s: must be an integer, got %s", name,
                           json_object_is_type(v, json_type_string)
                               ? "a string that is not a number"
                               : json_type_to_name(json_object_get_type(v)));
    if (!is_int) {
        if (!isfinite(d) || d != floor(d)) {
            if (!isfinite(d))
                return field_error(&pe, name, FX_ERANGE, "%s: must be a finite integer", name);
            return field_error(&pe, name, FX_EINVAL, "%s: must be an integer, not a fraction",
                               name);
        }
        if (d < -9.2e18 || d > 9.2e18)
            return field_error(&pe, name, FX_ERANGE, "%s: %g is out of range", name, d);
        iv = (int64_t)d;
    }
    if (d > 9.2e18 || iv < lo || iv > hi)
        return field_error(&pe, name, FX_ERANGE, "%s: must be from %lld to %lld", name,
                           (long long)lo, (long long)hi);
    *out = iv;
    return 0;
}

int api_get_number(json_object *v, const char *name, double *out, const char **field, char *msg,
                   size_t msg_len)
{
    struct perr pe = {field, msg, msg_len};
    bool is_int;
    int64_t iv;
    if (number_of(v, out, &is_int, &iv))
        return field_error(&pe, name, FX_EINVAL, "%s: must be a number, got %s", name,
                           json_object_is_type(v, json_type_string)
                               ? "a string that is not a number"
                               : json_type_to_name(json_object_get_type(v)));
    if (!isfinite(*out))
        return field_error(&pe, name, FX_ERANGE, "%s: must be a finite number", name);
    return 0;
}

int api_get_seed(json_object *v, const char *name, uint64_t *seed, bool *has, const char **field,
                 char *msg, size_t msg_len)
{
    int64_t n = 0;
    int rc;
    if (v == NULL || json_object_is_type(v, json_type_null)) {
        *has = false; /* random */
        return 0;
    }
    rc = api_get_int(v, name, -1, (int64_t)FX_SEED_MAX, &n, field, msg, msg_len);
    if (rc == FX_ERANGE && msg && msg_len)
        snprintf(msg, msg_len, "%s: must be from 0 to %llu, or -1 or null for a random one", name,
                 (unsigned long long)FX_SEED_MAX);
    if (rc)
        return rc;
    *has = n >= 0; /* -1: random, as the seed's clients ask for one */
    *seed = n >= 0 ? (uint64_t)n : 0;
    return 0;
}

int api_get_prompt(json_object *v, const char *name, char **prompt, size_t *len, const char **field,
                   char *msg, size_t msg_len)
{
    struct perr pe = {field, msg, msg_len};
    const char *s;
    size_t n;
    if (!json_object_is_type(v, json_type_string))
        return field_error(&pe, name, FX_EINVAL, "%s: must be a string, got %s", name,
                           json_type_to_name(json_object_get_type(v)));
    s = json_object_get_string(v);
    n = (size_t)json_object_get_string_len(v);
    if (!utf8_valid((const unsigned char *)s, n))
        return field_error(&pe, name, FX_EUTF8, "%s: invalid UTF-8", name);
    if (memchr(s, '\0', n))
        return field_error(&pe, name, FX_EINVAL, "%s: must not contain NUL characters", name);
    free(*prompt);
    *prompt = strdup(s);
    if (*prompt == NULL)
        return FX_ENOMEM;
    *len = n;
    return 0;
}

int api_get_enum(json_object *v, const char *name, const char *const *allowed, int *out,
                 const char **field, char *msg, size_t msg_len)
{
    struct perr pe = {field, msg, msg_len};
    char list[160] = "";
    const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    for (int i = 0; allowed[i]; i++) {
        if (s && strcmp(s, allowed[i]) == 0) {
            *out = i;
            return 0;
        }
        size_t k = strlen(list);
        snprintf(list + k, sizeof(list) - k, "%s%s", i ? ", " : "", allowed[i]);
    }
    return field_error(&pe, name, FX_EINVAL, "%s: must be one of %s", name, list);
}

int api_get_format(json_object *v, const char *name, int *format, const char **field, char *msg,
                   size_t msg_len)
{
    static const char *const formats[] = {"png", "jpeg", "webp", "jpg", NULL};
    int i = 0, rc = api_get_enum(v, name, formats, &i, field, msg, msg_len);
    if (rc == 0)
        *format = i == 3 ? IMGW_JPEG : i;
    return rc;
}

void api_ignored_add(struct api_ignored *ig, const char *key)
{
    size_t k = strlen(ig->list), room = sizeof(ig->list) - k;
    char shown[48];
    size_t i, n = strlen(key);
    /* at most 40 bytes of a hostile key, printable ASCII without ',' (the list separator) */
    for (i = 0; i < n && i < 40; i++)
        shown[i] = key[i] > 0x20 && key[i] < 0x7f && key[i] != ',' ? key[i] : '?';
    shown[i] = '\0';
    ig->n++;
    if (ig->cut)
        return;
    if (strlen(shown) + (k ? 1 : 0) + 4 >= room) {
        snprintf(ig->list + k, room, "%s...", k ? "," : "");
        ig->cut = true;
        return;
    }
    snprintf(ig->list + k, room, "%s%s%s", k ? "," : "", shown, n > 40 ? "..." : "");
}

int api_parse_object(const char *body, size_t len, json_object **out, const char **field, char *msg,
                     size_t msg_len)
{
    const char *dummy;
    struct perr pe = {field ? field : &dummy, msg, msg_len};
    json_tokener *tok = NULL;
    json_object *o = NULL;
    size_t end;
    int rc = 0;

    *pe.field = NULL;
    *out = NULL;
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
out:
    json_tokener_free(tok);
    if (rc)
        json_object_put(o);
    else
        *out = o;
    return rc;
}

/* ---- the native generation request ------------------------------------------------------- */

/* The fields of POST /generate and /generate/queue; the order is enum native_field's. */
enum native_field {
    NF_PROMPT,
    NF_GUIDANCE,
    NF_STEPS,
    NF_WIDTH,
    NF_HEIGHT,
    NF_SEED,
    NF_N,
    NF_FORMAT,
    NF_QUALITY,
    NF_WEBHOOK,
    NF_WEBHOOK_PROGRESS,
    NF_LORAS,
    NF_COUNT
};
const char *const api_native_fields[NF_COUNT + 1] = {
    "prompt", "guidance_scale", "num_inference_steps", "width",   "height",           "seed",
    "n",      "output_format",  "output_quality",      "webhook", "webhook_progress", "loras",
    NULL};

/* The webhook field (an http(s) URL whose host webhook_hosts allows) into extra. */
static int get_webhook(const struct api_ctx *ctx, struct perr *pe, json_object *v,
                       struct api_job_extra *extra)
{
    char why[200];
    int rc;
    if (!json_object_is_type(v, json_type_string))
        return field_error(pe, "webhook", FX_EINVAL, "webhook: must be a URL or null, got %s",
                           json_type_to_name(json_object_get_type(v)));
    if (strlen(json_object_get_string(v)) != (size_t)json_object_get_string_len(v))
        return field_error(pe, "webhook", FX_EINVAL, "webhook: must not contain NUL");
    if (json_object_get_string_len(v) == 0) /* "" is null's default: the key's, if any */
        return 0;
    rc = auth_webhook_check(json_object_get_string(v), ctx->cfg->webhook_hosts, why, sizeof(why));
    if (rc)
        return field_error(pe, "webhook", rc == FX_ENOMEM ? FX_ENOMEM : FX_EINVAL, "webhook: %s",
                           why);
    snprintf(extra->webhook, sizeof(extra->webhook), "%s", json_object_get_string(v));
    return 0;
}

int api_field_index(const char *const *table, const char *key)
{
    for (int i = 0; table[i]; i++)
        if (strcmp(table[i], key) == 0)
            return i;
    return -1;
}

void api_gen_release(struct api_gen *g)
{
    if (g) {
        free(g->prompt);
        g->prompt = NULL;
        g->req.prompt = NULL;
    }
}

void api_gen_init(const struct api_ctx *ctx, struct api_gen *g)
{
    memset(g, 0, sizeof(*g));
    g->req = ctx->defaults;
    g->req.prompt = NULL;
    g->req.prompt_len = 0;
    g->req.has_seed = false;
    g->req.loras = g->loras;
    g->req.n_loras = 0;
    g->n = 1;
}

/* ---- LoRAs ------------------------------------------------------------------------------- */

int api_gen_add_lora(struct api_gen *g, const char *name, size_t len, double scale,
                     const char *where, char *msg, size_t msg_len)
{
    char canon[LORA_NAME_MAX + 1];
    size_t n = g->req.n_loras;
    if (!lora_name_canon(name, len, canon))
        return fx_fail(msg, msg_len, FX_EINVAL,
                       "%s: '%.*s%s' is not a LoRA name (1 to %d of [A-Za-z0-9._-], starting "
                       "with a letter or digit, optionally ending in .safetensors; no paths)",
                       where, (int)(len > 60 ? 60 : len), name, len > 60 ? "..." : "",
                       LORA_NAME_MAX);
    if (!isfinite(scale) || fabs(scale) > FX_LORA_SCALE_MAX)
        return fx_fail(msg, msg_len, FX_ERANGE, "%s: scale must be from %g to %g, got %g", where,
                       -FX_LORA_SCALE_MAX, FX_LORA_SCALE_MAX, scale);
    for (size_t i = 0; i < n; i++)
        if (strcmp(g->lora_names[i], canon) == 0)
            return fx_fail(msg, msg_len, FX_EINVAL, "%s: LoRA '%s' is asked for twice", where,
                           canon);
    if (n >= FX_LORA_MAX)
        return fx_fail(msg, msg_len, FX_ERANGE, "%s: at most %d LoRAs per request", where,
                       FX_LORA_MAX);
    memcpy(g->lora_names[n], canon, strlen(canon) + 1);
    g->loras[n] = (struct fx_lora){g->lora_names[n], NULL, scale};
    g->req.loras = g->loras;
    g->req.n_loras = n + 1;
    return 0;
}

int api_get_loras(json_object *v, const char *name, struct api_gen *g, const char **field,
                  char *msg, size_t msg_len)
{
    struct perr pe = {field, msg, msg_len};
    size_t n;
    if (v == NULL || json_object_is_type(v, json_type_null))
        return 0;
    if (!json_object_is_type(v, json_type_array))
        return field_error(&pe, name, FX_EINVAL,
                           "%s: must be an array of {\"name\", \"scale\"}, got %s", name,
                           json_type_to_name(json_object_get_type(v)));
    n = json_object_array_length(v);
    if (n > FX_LORA_MAX)
        return field_error(&pe, name, FX_ERANGE, "%s: at most %d LoRAs per request, got %zu", name,
                           FX_LORA_MAX, n);
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(v, i), *nv = NULL, *sv = NULL;
        char where[48], sname[64];
        double scale = 1.0;
        const char *sfield;
        int rc;
        snprintf(where, sizeof(where), "%s[%zu]", name, i);
        if (!json_object_is_type(e, json_type_object))
            return field_error(&pe, name, FX_EINVAL,
                               "%s: must be an object {\"name\", \"scale\"}, got %s", where,
                               json_type_to_name(json_object_get_type(e)));
        json_object_object_foreach(e, k, kv)
        {
            if (strcmp(k, "name") == 0)
                nv = kv;
            else if (strcmp(k, "scale") == 0)
                sv = kv;
            else
                return field_error(&pe, name, FX_EINVAL,
                                   "%s: unknown key '%.40s' (an entry has name and scale)", where,
                                   k);
        }
        if (nv == NULL || !json_object_is_type(nv, json_type_string))
            return field_error(&pe, name, FX_EINVAL, "%s: name must be a string%s", where,
                               nv == NULL ? " and is required" : "");
        if (sv && !json_object_is_type(sv, json_type_null)) {
            snprintf(sname, sizeof(sname), "%s.scale", where);
            if ((rc = api_get_number(sv, sname, &scale, &sfield, msg, msg_len)) != 0) {
                *field = name;
                return rc;
            }
        }
        rc = api_gen_add_lora(g, json_object_get_string(nv), (size_t)json_object_get_string_len(nv),
                              scale, where, msg, msg_len);
        if (rc) {
            *field = name;
            return rc;
        }
    }
    return 0;
}

/* The end of a <lora:...> tag that starts at s ("<lora:" or "<lyco:"), or NULL. */
static const char *lora_tag_end(const char *s)
{
    if (strncmp(s, "<lora:", 6) != 0 && strncmp(s, "<lyco:", 6) != 0)
        return NULL;
    for (const char *p = s + 6; *p; p++) {
        if (*p == '>')
            return p;
        if (*p == '<')
            return NULL;
    }
    return NULL;
}

int api_prompt_loras(struct api_gen *g, char *msg, size_t msg_len)
{
    char *p = g->prompt, *w;
    const char *end;
    if (p == NULL)
        return 0;
    w = p;
    for (char *s = p; *s;) {
        if (*s != '<' || (end = lora_tag_end(s)) == NULL) {
            *w++ = *s++;
            continue;
        }
        /* <lora:NAME> or <lora:NAME:SCALE>; A1111's separate text encoder / unet strengths
         * (<lora:NAME:TE:UNET>) have no counterpart here */
        const char *name = s + 6, *colon = memchr(name, ':', (size_t)(end - name));
        double scale = 1.0;
        if (colon) {
            char num[32], *stop;
            size_t k = (size_t)(end - colon - 1);
            if (k == 0 || k >= sizeof(num) || memchr(colon + 1, ':', k) ||
                strspn(colon + 1, "0123456789+-.eE") < k)
                return fx_fail(msg, msg_len, FX_EINVAL,
                               "prompt: '%.*s' is not <lora:NAME> or <lora:NAME:SCALE> with a "
                               "number as SCALE",
                               (int)(end - s + 1 > 80 ? 80 : end - s + 1), s);
            memcpy(num, colon + 1, k);
            num[k] = '\0';
            scale = strtod(num, &stop);
            if (*stop != '\0')
                return fx_fail(msg, msg_len, FX_EINVAL,
                               "prompt: '%s' in a <lora:...> tag is not a number", num);
        }
        int rc = api_gen_add_lora(g, name, (size_t)((colon ? colon : end) - name), scale, "prompt",
                                  msg, msg_len);
        if (rc)
            return rc;
        /* the tag goes, and one blank with it so that "a <lora:x:1> cat" reads "a cat" */
        s = (char *)end + 1;
        if (w > p && (w[-1] == ' ' || w[-1] == ',') && *s == ' ')
            s++;
        else if (w == p)
            s += strspn(s, " ");
    }
    *w = '\0';
    while (w > p && w[-1] == ' ')
        *--w = '\0';
    g->req.prompt = g->prompt;
    g->req.prompt_len = (size_t)(w - p);
    return 0;
}

int api_validate(const struct api_ctx *ctx, const struct api_gen *g, const char **field, char *msg,
                 size_t msg_len)
{
    struct fx_request r = g->req;
    r.loras = NULL;
    r.n_loras = 0;
    return fx_request_validate(&r, &ctx->limits, field, msg, msg_len);
}

static int check_loras(const struct api_ctx *ctx, const struct api_gen *g, char *msg,
                       size_t msg_len)
{
    if (g->req.n_loras == 0)
        return 0;
    if (ctx->cfg == NULL || ctx->cfg->lora_dir[0] == '\0')
        return fx_fail(msg, msg_len, FX_ELORA_OFF,
                       "loras: this service has no LoRA directory (config key lora_dir)");
    if (ctx->lora_map == NULL)
        return fx_fail(msg, msg_len, FX_ELORA_OFF, "loras: %s",
                       ctx->lora_map_error ? ctx->lora_map_error : "the model has no LoRA map");
    for (size_t i = 0; i < g->req.n_loras; i++) {
        char why[400];
        int rc = lora_dir_check(ctx->cfg->lora_dir, ctx->lora_map, g->lora_names[i], NULL, NULL,
                                why, sizeof(why));
        if (rc)
            return fx_fail(msg, msg_len, rc, "loras[%zu]: %s", i, why);
    }
    return 0;
}

int api_check_loras(const struct api_ctx *ctx, const struct api_gen *g, char *msg, size_t msg_len)
{
    int rc = check_loras(ctx, g, msg, msg_len);
    /* counted here: a refusal of any route */
    if (rc == FX_ELORA_UNKNOWN || rc == FX_ELORA_BAD || rc == FX_ELORA_OFF)
        metrics_lora(ctx->metrics,
                     rc == FX_ELORA_UNKNOWN ? METRICS_LORA_UNKNOWN
                     : rc == FX_ELORA_BAD   ? METRICS_LORA_BAD
                                            : METRICS_LORA_OFF,
                     0);
    return rc;
}

int api_parse_native(const struct api_ctx *ctx, const char *body, size_t len, struct api_gen *g,
                     const char **field, char *msg, size_t msg_len)
{
    const char *dummy;
    struct perr pe = {field ? field : &dummy, msg, msg_len};
    json_object *o = NULL;
    int64_t iv = 0;
    int rc;

    field = pe.field;
    api_gen_init(ctx, g);
    rc = api_parse_object(body, len, &o, field, msg, msg_len);
    if (rc)
        return rc;
    json_object_object_foreach(o, key, v)
    {
        int f = api_field_index(api_native_fields, key);
        if (f < 0) {
            api_ignored_add(&g->ignored, key);
            continue;
        }
        /* null is the default of every field; the prompt has none */
        if (json_object_is_type(v, json_type_null) && f != NF_PROMPT)
            continue;
        switch ((enum native_field)f) {
        case NF_PROMPT:
            rc = api_get_prompt(v, key, &g->prompt, &g->req.prompt_len, field, msg, msg_len);
            g->req.prompt = g->prompt;
            break;
        case NF_GUIDANCE:
            rc = api_get_number(v, key, &g->req.guidance, field, msg, msg_len);
            break;
        case NF_STEPS:
        case NF_WIDTH:
        case NF_HEIGHT:
            rc = api_get_int(v, key, INT_MIN, INT_MAX, &iv, field, msg, msg_len);
            if (rc == 0)
                *(f == NF_STEPS   ? &g->req.steps
                  : f == NF_WIDTH ? &g->req.width
                                  : &g->req.height) = (int)iv;
            break;
        case NF_SEED:
            rc = api_get_seed(v, key, &g->req.seed, &g->req.has_seed, field, msg, msg_len);
            break;
        case NF_N:
            rc = api_get_int(v, key, 1, API_MAX_IMAGES, &iv, field, msg, msg_len);
            g->n = (int)iv;
            break;
        case NF_FORMAT:
            rc = api_get_format(v, key, &g->req.format, field, msg, msg_len);
            break;
        case NF_QUALITY:
            rc = api_get_int(v, key, 1, 100, &iv, field, msg, msg_len);
            g->req.quality = (int)iv;
            break;
        case NF_WEBHOOK:
            rc = get_webhook(ctx, &pe, v, &g->extra);
            break;
        case NF_WEBHOOK_PROGRESS:
            if (!json_object_is_type(v, json_type_boolean))
                rc = field_error(&pe, "webhook_progress", FX_EINVAL,
                                 "webhook_progress: must be true or false, got %s",
                                 json_type_to_name(json_object_get_type(v)));
            else
                g->extra.webhook_progress = json_object_get_boolean(v);
            break;
        case NF_LORAS:
            rc = api_get_loras(v, key, g, field, msg, msg_len);
            break;
        case NF_COUNT:
            break;
        }
        if (rc) {
            *field = key == NULL ? NULL : api_native_fields[f];
            goto out;
        }
    }
    if (g->req.prompt == NULL) {
        rc = field_error(&pe, "prompt", FX_EINVAL, "prompt: required");
        goto out;
    }
    rc = api_validate(ctx, g, field, msg, msg_len);
    if (rc == 0 && (rc = api_check_loras(ctx, g, msg, msg_len)) != 0)
        *field = "loras";
out:
    json_object_put(o);
    if (rc)
        api_gen_release(g);
    return rc;
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
    struct api_gen g;
    int rc = api_parse_native(ctx, body, len, &g, field, msg, msg_len);
    *prompt = rc ? NULL : g.prompt;
    *out = g.req;
    if (rc)
        out->prompt = NULL;
    /* the names live in g, which ends here */
    out->loras = NULL;
    out->n_loras = 0;
    if (extra)
        *extra = rc ? (struct api_job_extra){{0}, false} : g.extra;
    return rc;
}
