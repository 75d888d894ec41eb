/*
 * tok_clip.c - CLIP byte-level BPE.  Symbols are vocabulary ids from the start: every merge
 * "A B" is stored as (id(A), id(B)) -> (rank, id(AB)), so the BPE loop compares integers and
 * never builds strings.
 */
#include "tok_clip.h"

#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "text.h"

#define BOS_TEXT "<|startoftext|>"
#define EOS_TEXT "<|endoftext|>"
#define CACHE_WORD_MAX 64
#define TOK_CLIP_MAX_ID ((1 << 24) - 1) /* bounds the id table built while loading */
#define CACHE_CAP (1u << 17)            /* slots; at most half are used */
#define CACHE_MAX_ENTRIES (CACHE_CAP / 2)

struct merge_slot {
    uint64_t key; /* (left << 32) | right; 0 marks an empty slot (ids are offset by one) */
    uint32_t rank;
    int32_t id;
};

struct cache_entry {
    uint32_t hash;
    uint16_t klen;
    uint16_t nids;
    int32_t *ids; /* points into the same allocation, after the key */
    char key[];
};

struct tok_clip {
    int32_t byte_id[256];     /* bytes_to_unicode(b) */
    int32_t byte_end_id[256]; /* bytes_to_unicode(b) + "</w>" */
    int32_t bos, eos;
    struct merge_slot *merges;
    size_t merge_mask;
    size_t n_merges;

    pthread_mutex_t lock; /* guards the cache */
    struct cache_entry **cache;
    size_t cache_used;
};

static void set_msg(char *msg, size_t msg_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_msg(char *msg, size_t msg_len, const char *fmt, ...)
{
    va_list ap;

    if (!msg || msg_len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, msg_len, fmt, ap);
    va_end(ap);
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t pair_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
}

static const struct merge_slot *merge_find(const struct tok_clip *tok, int32_t a, int32_t b)
{
    uint64_t key = pair_key(a, b);
    size_t i = (size_t)mix64(key) & tok->merge_mask;

    while (tok->merges[i].key) {
        if (tok->merges[i].key == key)
            return &tok->merges[i];
        i = (i + 1) & tok->merge_mask;
    }
    return NULL;
}

/* Inserts or, for a repeated pair, overwrites (Python's dict(zip(merges, ranks)) keeps the
 * last rank). */
static void merge_put(struct tok_clip *tok, int32_t a, int32_t b, uint32_t rank, int32_t id)
{
    uint64_t key = pair_key(a, b);
    size_t i = (size_t)mix64(key) & tok->merge_mask;

    while (tok->merges[i].key && tok->merges[i].key != key)
        i = (i + 1) & tok->merge_mask;
    tok->merges[i].key = key;
    tok->merges[i].rank = rank;
    tok->merges[i].id = id;
}

/* ---- loading ---------------------------------------------------------------------------- */

/* The 256 printable stand-ins for bytes (CLIP's bytes_to_unicode). */
static uint32_t byte_to_unicode(unsigned b)
{
    unsigned extra = 0;

    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return b;
    /* The others take 256, 257, ... in byte order. */
    for (unsigned c = 0; c < b; c++) {
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)))
            extra++;
    }
    return 256 + extra;
}

static int vocab_id(struct json_object *vocab, const char *key, int32_t *id)
{
    struct json_object *v = NULL;

    if (!json_object_object_get_ex(vocab, key, &v) || !json_object_is_type(v, json_type_int))
        return FX_EFORMAT;
    *id = json_object_get_int(v);
    return 0;
}

static int read_file(const char *path, char **data, size_t *len)
{
    FILE *f = NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    int rc = 0;

    f = fopen(path, "rb");
    if (!f) {
        rc = errno == ENOENT ? FX_ENOENT : FX_EIO;
        goto out;
    }
    for (;;) {
        if (cap - n < 65536) {
            size_t ncap = cap ? cap * 2 : 1 << 20;
            char *p = realloc(buf, ncap + 1);
            if (!p) {
                rc = FX_ENOMEM;
                goto out;
            }
            buf = p;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                rc = FX_EIO;
            break;
        }
    }
    if (rc == 0) {
        buf[n] = '\0';
        *data = buf;
        *len = n;
        buf = NULL;
    }
out:
    if (f)
        fclose(f);
    free(buf);
    return rc;
}

static int load_vocab(struct tok_clip *tok, struct json_object *vocab, const char *path, char *msg,
                      size_t msg_len)
{
    char sym[16];
    int rc = 0;
    int32_t max_id = -1;
    unsigned char *seen = NULL;

    json_object_object_foreach(vocab, key, val)
    {
        if (!json_object_is_type(val, json_type_int) || json_object_get_int64(val) < 0) {
            set_msg(msg, msg_len, "'%s': id of '%s' is not a non-negative integer", path, key);
            return FX_EFORMAT;
        }
        if (json_object_get_int64(val) > TOK_CLIP_MAX_ID) {
            set_msg(msg, msg_len, "'%s': id of '%s' above %d", path, key, TOK_CLIP_MAX_ID);
            return FX_EFORMAT;
        }
        if (json_object_get_int(val) > max_id)
            max_id = json_object_get_int(val);
    }
    /* Ids stand for strings in the merge table, so they must be unique. */
    seen = calloc((size_t)max_id + 2, 1);
    if (!seen)
        return FX_ENOMEM;
    json_object_object_foreach(vocab, key2, val2)
    {
        int32_t id = json_object_get_int(val2);
        if (seen[id]) {
            set_msg(msg, msg_len, "'%s': id %d is used twice (again by '%s')", path, id, key2);
            rc = FX_EFORMAT;
            goto out;
        }
        seen[id] = 1;
    }
    for (unsigned b = 0; b < 256; b++) {
        size_t k = text_utf8_put(byte_to_unicode(b), sym);
        sym[k] = '\0';
        if (vocab_id(vocab, sym, &tok->byte_id[b]) < 0) {
            set_msg(msg, msg_len, "'%s': byte symbol '%s' missing", path, sym);
            rc = FX_EFORMAT;
            goto out;
        }
        memcpy(sym + k, "</w>", 5);
        if (vocab_id(vocab, sym, &tok->byte_end_id[b]) < 0) {
            set_msg(msg, msg_len, "'%s': byte symbol '%s' missing", path, sym);
            rc = FX_EFORMAT;
            goto out;
        }
    }
    if (vocab_id(vocab, BOS_TEXT, &tok->bos) < 0 || vocab_id(vocab, EOS_TEXT, &tok->eos) < 0) {
        set_msg(msg, msg_len, "'%s': no '%s' or '%s' entry", path, BOS_TEXT, EOS_TEXT);
        rc = FX_EFORMAT;
        goto out;
    }
out:
    free(seen);
    return rc;
}

static int load_merges(struct tok_clip *tok, struct json_object *vocab, const char *path, char *msg,
                       size_t msg_len)
{
    char *data = NULL, *joined = NULL;
    size_t len = 0, line_no = 0, cap = 16;
    int rc;

    rc = read_file(path, &data, &len);
    if (rc < 0) {
        set_msg(msg, msg_len, "cannot read '%s': %s", path, fx_strerror(rc));
        goto out;
    }
    if (memchr(data, '\0', len)) {
        set_msg(msg, msg_len, "'%s': NUL byte", path);
        rc = FX_EFORMAT;
        goto out;
    }
    /* Table size: a power of two at least twice the number of lines. */
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += data[i] == '\n';
    if (lines > TOK_CLIP_MAX_MERGES + 1)
        lines = TOK_CLIP_MAX_MERGES + 1;
    while (cap < 2 * lines)
        cap *= 2;
    tok->merges = calloc(cap, sizeof(*tok->merges));
    joined = malloc(len + 1);
    if (!tok->merges || !joined) {
        rc = FX_ENOMEM;
        goto out;
    }
    tok->merge_mask = cap - 1;

    char *p = data, *end = data + len;
    while (p < end && tok->n_merges < TOK_CLIP_MAX_MERGES) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *eol = nl ? nl : end;
        line_no++;
        if (eol > p && eol[-1] == '\r')
            eol[-1] = '\0';
        *eol = '\0';
        char *line = p;
        p = nl ? nl + 1 : end;
        /* The first line is the "#version: 0.2" header (OpenAI and HF skip it). */
        if (line_no == 1 && line[0] == '#')
            continue;
        if (line[0] == '\0') {
            /* Blank lines are allowed only at the end of the file. */
            while (p < end && (*p == '\n' || *p == '\r'))
                p++;
            if (p < end) {
                set_msg(msg, msg_len, "'%s' line %zu: empty line", path, line_no);
                rc = FX_EFORMAT;
                goto out;
            }
            break;
        }
        char *sp = strchr(line, ' ');
        if (!sp || sp == line || sp[1] == '\0' || strchr(sp + 1, ' ')) {
            set_msg(msg, msg_len, "'%s' line %zu: not two symbols separated by one space", path,
                    line_no);
            rc = FX_EFORMAT;
            goto out;
        }
        *sp = '\0';
        size_t la = (size_t)(sp - line), lb = strlen(sp + 1);
        memcpy(joined, line, la);
        memcpy(joined + la, sp + 1, lb + 1);
        int32_t a, b, ab;
        if (vocab_id(vocab, line, &a) < 0 || vocab_id(vocab, sp + 1, &b) < 0 ||
            vocab_id(vocab, joined, &ab) < 0) {
            set_msg(msg, msg_len, "'%s' line %zu: '%s %s' or its result is not in the vocabulary",
                    path, line_no, line, sp + 1);
            rc = FX_EFORMAT;
            goto out;
        }
        merge_put(tok, a, b, (uint32_t)tok->n_merges, ab);
        tok->n_merges++;
    }
out:
    free(data);
    free(joined);
    return rc;
}

/* Parses data[0..len) as one JSON object (white space may follow).  Sets *obj. */
static int parse_json_object(const char *data, size_t len, struct json_object **obj)
{
    struct json_tokener *jt = NULL;
    struct json_object *o = NULL;
    int rc = FX_EFORMAT;

    *obj = NULL;
    if (len > INT32_MAX)
        return FX_ETOOBIG;
    jt = json_tokener_new();
    if (!jt)
        return FX_ENOMEM;
    o = json_tokener_parse_ex(jt, data, (int)len);
    if (!o || json_tokener_get_error(jt) != json_tokener_success ||
        !json_object_is_type(o, json_type_object))
        goto out;
    for (size_t i = json_tokener_get_parse_end(jt); i < len; i++) {
        if (!strchr(" \t\r\n", data[i]) || data[i] == '\0')
            goto out;
    }
    *obj = o;
    o = NULL;
    rc = 0;
out:
    json_object_put(o);
    json_tokener_free(jt);
    return rc;
}

int tok_clip_load_files(const char *vocab_json, const char *merges_txt, struct tok_clip **out,
                        char *msg, size_t msg_len)
{
    struct tok_clip *tok = NULL;
    struct json_object *vocab = NULL;
    char *data = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    set_msg(msg, msg_len, "%s", "");
    tok = calloc(1, sizeof(*tok));
    if (!tok) {
        rc = FX_ENOMEM;
        goto out;
    }
    if (pthread_mutex_init(&tok->lock, NULL) != 0) {
        free(tok);
        tok = NULL;
        rc = FX_ENOMEM;
        goto out;
    }
    tok->cache = calloc(CACHE_CAP, sizeof(*tok->cache));
    if (!tok->cache) {
        rc = FX_ENOMEM;
        goto out;
    }
    rc = read_file(vocab_json, &data, &len);
    if (rc < 0) {
        set_msg(msg, msg_len, "cannot read '%s': %s", vocab_json, fx_strerror(rc));
        goto out;
    }
    rc = parse_json_object(data, len, &vocab);
    if (rc < 0) {
        set_msg(msg, msg_len, "'%s': %s", vocab_json,
                rc == FX_ENOMEM ? fx_strerror(rc) : "not a JSON object");
        goto out;
    }
    rc = load_vocab(tok, vocab, vocab_json, msg, msg_len);
    if (rc < 0)
        goto out;
    rc = load_merges(tok, vocab, merges_txt, msg, msg_len);
    if (rc < 0)
        goto out;
    *out = tok;
    tok = NULL;
out:
    if (rc == FX_ENOMEM)
        set_msg(msg, msg_len, "%s", fx_strerror(rc));
    json_object_put(vocab);
    free(data);
    tok_clip_free(tok);
    return rc;
}

int tok_clip_load(const char *dir, struct tok_clip **out, char *msg, size_t msg_len)
{
    char *v = NULL, *m = NULL;
    size_t n;
    int rc = FX_ENOMEM;

    *out = NULL;
    if (!dir) {
        set_msg(msg, msg_len, "no tokenizer folder given");
        return FX_EINVAL;
    }
    n = strlen(dir) + sizeof("/vocab.json") + 1;
    v = malloc(n);
    m = malloc(n);
    if (!v || !m) {
        set_msg(msg, msg_len, "%s", fx_strerror(rc));
        goto out;
    }
    snprintf(v, n, "%s/vocab.json", dir);
    snprintf(m, n, "%s/merges.txt", dir);
    rc = tok_clip_load_files(v, m, out, msg, msg_len);
out:
    free(v);
    free(m);
    return rc;
}

static void cache_clear(struct tok_clip *tok)
{
    for (size_t i = 0; i < CACHE_CAP; i++) {
        free(tok->cache[i]);
        tok->cache[i] = NULL;
    }
    tok->cache_used = 0;
}

void tok_clip_free(struct tok_clip *tok)
{
    if (!tok)
        return;
    if (tok->cache) {
        cache_clear(tok);
        free(tok->cache);
    }
    free(tok->merges);
    pthread_mutex_destroy(&tok->lock);
    free(tok);
}

int32_t tok_clip_bos(const struct tok_clip *tok)
{
    return tok->bos;
}

int32_t tok_clip_eos(const struct tok_clip *tok)
{
    return tok->eos;
}

size_t tok_clip_n_merges(const struct tok_clip *tok)
{
    return tok->n_merges;
}

/* ---- id lists ---------------------------------------------------------------------------- */

struct idvec {
    int32_t *v;
    size_t n, cap;
};

static int idvec_push(struct idvec *iv, const int32_t *ids, size_t n)
{
    if (iv->cap - iv->n < n) {
        size_t ncap = iv->cap ? iv->cap : 64;
        while (ncap - iv->n < n)
            ncap *= 2;
        int32_t *p = realloc(iv->v, ncap * sizeof(*p));
        if (!p)
            return FX_ENOMEM;
        iv->v = p;
        iv->cap = ncap;
    }
    memcpy(iv->v + iv->n, ids, n * sizeof(*ids));
    iv->n += n;
    return 0;
}

/* ---- word cache -------------------------------------------------------------------------- */

static uint32_t hash_bytes(const unsigned char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 16777619u;
    return h;
}

/* Appends the cached ids of word to iv; returns 1 on a hit, 0 on a miss, or FX_ENOMEM. */
static int cache_get(struct tok_clip *tok, const unsigned char *w, size_t n, uint32_t h,
                     struct idvec *iv)
{
    int rc = 0;

    pthread_mutex_lock(&tok->lock);
    for (size_t i = h & (CACHE_CAP - 1); tok->cache[i]; i = (i + 1) & (CACHE_CAP - 1)) {
        struct cache_entry *e = tok->cache[i];
        if (e->hash == h && e->klen == n && memcmp(e->key, w, n) == 0) {
            rc = idvec_push(iv, e->ids, e->nids);
            if (rc == 0)
                rc = 1;
            break;
        }
    }
    pthread_mutex_unlock(&tok->lock);
    return rc;
}

/* Best effort: a failed allocation just means no caching. */
static void cache_put(struct tok_clip *tok, const unsigned char *w, size_t n, uint32_t h,
                      const int32_t *ids, size_t nids)
{
    size_t off =
        (sizeof(struct cache_entry) + n + sizeof(int32_t) - 1) / sizeof(int32_t) * sizeof(int32_t);
    struct cache_entry *e = malloc(off + nids * sizeof(int32_t));

    if (!e)
        return;
    e->hash = h;
    e->klen = (uint16_t)n;
    e->nids = (uint16_t)nids;
    e->ids = (int32_t *)(void *)((char *)e + off);
    memcpy(e->key, w, n);
    memcpy(e->ids, ids, nids * sizeof(int32_t));

    pthread_mutex_lock(&tok->lock);
    if (tok->cache_used >= CACHE_MAX_ENTRIES)
        cache_clear(tok);
    size_t i = h & (CACHE_CAP - 1);
    for (; tok->cache[i]; i = (i + 1) & (CACHE_CAP - 1)) {
        struct cache_entry *o = tok->cache[i];
        if (o->hash == h && o->klen == n && memcmp(o->key, w, n) == 0)
            break; /* another thread was first */
    }
    if (tok->cache[i]) {
        free(e);
    } else {
        tok->cache[i] = e;
        tok->cache_used++;
    }
    pthread_mutex_unlock(&tok->lock);
}

/* ---- BPE --------------------------------------------------------------------------------- */

struct bpe_cand {
    uint32_t rank;
    uint32_t pos; /* left symbol; positions keep their order, so this orders by place */
    int32_t left; /* ids when pushed: a candidate is stale once either symbol changed */
    int32_t right;
};

struct bpe_work {
    int32_t *id;
    uint32_t *next, *prev; /* UINT32_MAX: none */
    struct bpe_cand *heap;
    size_t nheap;
    struct bpe_cand *batch;
};

static bool cand_less(const struct bpe_cand *a, const struct bpe_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct bpe_work *w, struct bpe_cand c)
{
    size_t i = w->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = c;
}

static struct bpe_cand heap_pop(struct bpe_work *w)
{
    struct bpe_cand top = w->heap[0], last = w->heap[--w->nheap];
    size_t i = 0, n = w->nheap;

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && cand_less(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!cand_less(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n > 0)
        w->heap[i] = last;
    return top;
}

static void push_pair(const struct tok_clip *tok, struct bpe_work *w, uint32_t pos)
{
    if (pos == UINT32_MAX || w->next[pos] == UINT32_MAX)
        return;
    uint32_t r = w->next[pos];
    const struct merge_slot *m = merge_find(tok, w->id[pos], w->id[r]);
    if (m)
        heap_push(w, (struct bpe_cand){m->rank, pos, w->id[pos], w->id[r]});
}

static bool cand_valid(const struct bpe_work *w, const struct bpe_cand *c)
{
    /* A symbol's id only changes by growing, so it never returns to an old value; next[pos]
     * changes only when pos itself merges (and so changes its id). */
    uint32_t r = w->next[c->pos];
    return w->id[c->pos] == c->left && r != UINT32_MAX && w->id[r] == c->right;
}

/*
 * BPE of one pre-token (its bytes w[0..n), n >= 1), appending ids to out.  Equivalent to the
 * reference loop "merge every occurrence of the lowest-ranked pair, left to right; repeat",
 * in O(n log n): all candidates of the lowest rank are taken from the heap first and applied
 * left to right; the pairs they create cannot have that same rank (a merged symbol is
 * longer than either part), so they wait in the heap for a later round.
 */
static int bpe_word(const struct tok_clip *tok, const unsigned char *w, size_t n, struct idvec *out)
{
    struct bpe_work k = {0};
    int rc = FX_ENOMEM;

    k.id = malloc(n * sizeof(*k.id));
    k.next = malloc(n * sizeof(*k.next));
    k.prev = malloc(n * sizeof(*k.prev));
    /* Each merge pushes at most two candidates, and there are fewer than n merges. */
    k.heap = malloc(3 * n * sizeof(*k.heap));
    k.batch = malloc(n * sizeof(*k.batch)); /* one rank: at most one candidate per position */
    if (!k.id || !k.next || !k.prev || !k.heap || !k.batch)
        goto out;
    for (size_t i = 0; i < n; i++) {
        k.id[i] = i + 1 == n ? tok->byte_end_id[w[i]] : tok->byte_id[w[i]];
        k.next[i] = i + 1 == n ? UINT32_MAX : (uint32_t)(i + 1);
        k.prev[i] = i == 0 ? UINT32_MAX : (uint32_t)(i - 1);
    }
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(tok, &k, (uint32_t)i);

    while (k.nheap > 0) {
        struct bpe_cand c = heap_pop(&k);
        if (!cand_valid(&k, &c))
            continue;
        size_t nb = 0;
        k.batch[nb++] = c;
        while (k.nheap > 0 && k.heap[0].rank == c.rank)
            k.batch[nb++] = heap_pop(&k);
        const struct merge_slot *m = merge_find(tok, c.left, c.right);
        for (size_t b = 0; b < nb; b++) {
            struct bpe_cand *x = &k.batch[b];
            if (!cand_valid(&k, x))
                continue; /* overlapped by the merge just before it */
            uint32_t r = k.next[x->pos];
            k.id[x->pos] = m->id;
            k.id[r] = -1;
            k.next[x->pos] = k.next[r];
            if (k.next[r] != UINT32_MAX)
                k.prev[k.next[r]] = x->pos;
            push_pair(tok, &k, k.prev[x->pos]);
            push_pair(tok, &k, x->pos);
        }
    }
    rc = 0;
    for (uint32_t i = 0; i != UINT32_MAX && rc == 0; i = k.next[i])
        rc = idvec_push(out, &k.id[i], 1);
out:
    free(k.id);
    free(k.next);
    free(k.prev);
    free(k.heap);
    free(k.batch);
    return rc;
}

static int emit_word(struct tok_clip *tok, const unsigned char *w, size_t n, struct idvec *out)
{
    if (n == sizeof(BOS_TEXT) - 1 && memcmp(w, BOS_TEXT, n) == 0)
        return idvec_push(out, &tok->bos, 1);
    if (n == sizeof(EOS_TEXT) - 1 && memcmp(w, EOS_TEXT, n) == 0)
        return idvec_push(out, &tok->eos, 1);
    if (n > CACHE_WORD_MAX)
        return bpe_word(tok, w, n, out);

    uint32_t h = hash_bytes(w, n);
    int rc = cache_get(tok, w, n, h, out);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    size_t start = out->n;
    rc = bpe_word(tok, w, n, out);
    if (rc == 0)
        cache_put(tok, w, n, h, out->v + start, out->n - start);
    return rc;
}

/* ---- pre-tokens -------------------------------------------------------------------------- */

/* Case-insensitive as the pattern is: after lower-casing only U+017F (long s) still folds to
 * an ASCII letter of these strings. */
static bool fold_eq(uint32_t c, char want)
{
    return c == (uint32_t)want || (want == 's' && c == 0x17F);
}

static size_t match_lit(const uint32_t *s, size_t n, const char *lit)
{
    size_t k = 0;
    for (; lit[k]; k++) {
        if (k >= n || !fold_eq(s[k], lit[k]))
            return 0;
    }
    return k;
}

static size_t match_contraction(const uint32_t *s, size_t n)
{
    static const char *const forms[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t f = 0; f < sizeof(forms) / sizeof(forms[0]); f++) {
        size_t k = match_lit(s, n, forms[f]);
        if (k)
            return k;
    }
    return 0;
}

/* Length of the pre-token at s[0], 0 if s[0] starts none (white space, U+0345). */
static size_t pretoken_len(const uint32_t *s, size_t n)
{
    size_t k;

    if (s[0] == '<' && ((k = match_lit(s, n, BOS_TEXT)) || (k = match_lit(s, n, EOS_TEXT))))
        return k;
    if (s[0] == '\'' && (k = match_contraction(s, n)))
        return k;
    if (text_is_letter(s[0])) {
        for (k = 1; k < n && text_is_letter(s[k]);)
            k++;
        return k;
    }
    if (text_is_number(s[0]))
        return 1;
    if (text_is_space(s[0]) || s[0] == 0x345)
        return 0;
    for (k = 1; k < n && !text_is_space(s[k]) && !text_is_letter(s[k]) && !text_is_number(s[k]) &&
                s[k] != 0x345;)
        k++;
    return k;
}

int tok_clip_tokenize(struct tok_clip *tok, const char *text, size_t len, int32_t **ids, size_t *n)
{
    uint32_t *cps = NULL, *clean = NULL, *tmp = NULL;
    unsigned char *wbuf = NULL;
    struct idvec out = {0};
    int rc = FX_EINVAL;

    if (ids)
        *ids = NULL;
    if (n)
        *n = 0;
    if (!tok || !ids || !n || (!text && len > 0))
        goto out;
    rc = FX_ENOMEM;
    if (len > SIZE_MAX / 8 / sizeof(uint32_t))
        goto out;
    cps = malloc((len + 1) * sizeof(*cps));
    tmp = malloc((len + 1) * sizeof(*tmp));
    clean = malloc((2 * len + 1) * sizeof(*clean));
    if (!cps || !tmp || !clean)
        goto out;
    size_t ncp = text_utf8_decode(text, len, cps, NULL);
    size_t m = text_clip_clean(cps, ncp, clean, tmp);
    /* Worst case a pre-token is the whole cleaned text, 4 bytes per code point. */
    wbuf = malloc(4 * m + 1);
    if (!wbuf)
        goto out;

    rc = 0;
    for (size_t i = 0; i < m && rc == 0;) {
        size_t k = pretoken_len(clean + i, m - i);
        if (k == 0) {
            i++;
            continue;
        }
        size_t wn = 0;
        for (size_t j = i; j < i + k; j++)
            wn += text_utf8_put(clean[j], (char *)wbuf + wn);
        rc = emit_word(tok, wbuf, wn, &out);
        i += k;
    }
    if (rc == 0) {
        *ids = out.v;
        *n = out.n;
        out.v = NULL;
    }
out:
    free(out.v);
    free(cps);
    free(tmp);
    free(clean);
    free(wbuf);
    return rc;
}

int tok_clip_encode(struct tok_clip *tok, const char *text, size_t len, int32_t ids[TOK_CLIP_LEN],
                    size_t *n_tokens)
{
    int32_t *all = NULL;
    size_t n = 0, o = 0;
    int rc;

    if (n_tokens)
        *n_tokens = 0;
    if (!ids)
        return FX_EINVAL;
    rc = tok_clip_tokenize(tok, text, len, &all, &n);
    if (rc < 0)
        return rc;
    ids[o++] = tok->bos;
    for (size_t i = 0; i < n && o < TOK_CLIP_LEN - 1; i++)
        ids[o++] = all[i];
    while (o < TOK_CLIP_LEN)
        ids[o++] = tok->eos;
    if (n_tokens)
        *n_tokens = n + 2;
    free(all);
    return 0;
}
