/* auth.c - keys, hashes, signatures, origins and webhook destinations (auth.h). */
#include "auth.h"

#include <ctype.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "../core/err.h"

static void hex(const uint8_t *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

static int random_bytes(uint8_t *b, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(b + got, n - got, 0);
        if (r <= 0)
            return FX_EIO;
        got += (size_t)r;
    }
    return 0;
}

int auth_key_new(char key[AUTH_KEY_LEN + 1], struct store_key *k)
{
    uint8_t b[8 + 32];
    char id_hex[17], secret_hex[65];
    if (random_bytes(b, sizeof(b)))
        return FX_EIO;
    hex(b, 8, id_hex);
    hex(b + 8, 32, secret_hex);
    snprintf(key, AUTH_KEY_LEN + 1, "%s%s_%s", AUTH_KEY_PREFIX, id_hex, secret_hex);
    memcpy(k->id, id_hex, sizeof(k->id));
    auth_key_hash(key, AUTH_KEY_LEN, k->hash);
    OPENSSL_cleanse(b, sizeof(b));
    OPENSSL_cleanse(secret_hex, sizeof(secret_hex));
    return 0;
}

int auth_secret_new(char secret[AUTH_SECRET_LEN + 1])
{
    uint8_t b[32];
    char h[65];
    if (random_bytes(b, sizeof(b)))
        return FX_EIO;
    hex(b, sizeof(b), h);
    snprintf(secret, AUTH_SECRET_LEN + 1, "whsec_%s", h);
    OPENSSL_cleanse(b, sizeof(b));
    return 0;
}

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

int auth_key_id(const char *key, size_t len, char id[STORE_KEY_ID_LEN + 1])
{
    const size_t p = sizeof(AUTH_KEY_PREFIX) - 1;
    if (len != AUTH_KEY_LEN || memcmp(key, AUTH_KEY_PREFIX, p) != 0 ||
        key[p + STORE_KEY_ID_LEN] != '_' || !lower_hex(key + p, STORE_KEY_ID_LEN) ||
        !lower_hex(key + p + STORE_KEY_ID_LEN + 1, 64))
        return FX_EAUTH;
    memcpy(id, key + p, STORE_KEY_ID_LEN);
    id[STORE_KEY_ID_LEN] = '\0';
    return 0;
}

void auth_key_hash(const char *key, size_t len, uint8_t out[STORE_KEY_HASH_LEN])
{
    unsigned int n = 0;
    if (EVP_Digest(key, len, out, &n, EVP_sha256(), NULL) != 1 || n != STORE_KEY_HASH_LEN)
        memset(out, 0, STORE_KEY_HASH_LEN); /* never equal to a stored hash of a real key */
}

bool auth_hash_equal(const uint8_t a[STORE_KEY_HASH_LEN], const uint8_t b[STORE_KEY_HASH_LEN])
{
    return CRYPTO_memcmp(a, b, STORE_KEY_HASH_LEN) == 0;
}

/* A token: visible ASCII without blanks, 1 to 512 bytes. */
static bool token_ok(const char *s, size_t n)
{
    if (n == 0 || n > 512)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

int auth_presented(const char *authorization, const char *api_key, const char **key, size_t *len,
                   char *msg, size_t msg_len)
{
    const char *bearer = NULL, *x = NULL;
    size_t bearer_len = 0, x_len = 0;
    *key = NULL;
    *len = 0;
    if (authorization == NULL && api_key == NULL)
        return FX_ENOENT;
    if (authorization) {
        const char *p = authorization;
        size_t n;
        if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "the Authorization header must be 'Bearer <API key>'");
        p += 6;
        p += strspn(p, " \t");
        n = strlen(p);
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (!token_ok(p, n))
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "the Authorization header must be 'Bearer <API key>' with one key of "
                           "visible characters");
        bearer = p;
        bearer_len = n;
    }
    if (api_key) {
        size_t n = strlen(api_key);
        x = api_key + strspn(api_key, " \t");
        n -= (size_t)(x - api_key);
        while (n > 0 && (x[n - 1] == ' ' || x[n - 1] == '\t'))
            n--;
        if (!token_ok(x, n))
            return fx_fail(msg, msg_len, FX_EFORMAT,
                           "the X-API-Key header must hold one key of visible characters");
        x_len = n;
    }
    if (bearer && x && (bearer_len != x_len || memcmp(bearer, x, x_len) != 0))
        return fx_fail(msg, msg_len, FX_EFORMAT,
                       "the Authorization and X-API-Key headers hold different keys");
    *key = bearer ? bearer : x;
    *len = bearer ? bearer_len : x_len;
    return 0;
}

void auth_sign(const char *secret, const char *timestamp, const char *body, size_t body_len,
               char out[72])
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    /* HMAC over "timestamp.body": a receiver that checks the timestamp refuses replays */
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = m ? EVP_MAC_CTX_new(m) : NULL;
    OSSL_PARAM params[2] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                            OSSL_PARAM_construct_end()};
    size_t outl = 0;
    strcpy(out, "sha256=");
    if (c && EVP_MAC_init(c, (const unsigned char *)secret, strlen(secret), params) == 1 &&
        EVP_MAC_update(c, (const unsigned char *)timestamp, strlen(timestamp)) == 1 &&
        EVP_MAC_update(c, (const unsigned char *)".", 1) == 1 &&
        EVP_MAC_update(c, (const unsigned char *)body, body_len) == 1 &&
        EVP_MAC_final(c, mac, &outl, sizeof(mac)) == 1 && outl == 32)
        n = (unsigned int)outl;
    if (n == 32)
        hex(mac, 32, out + 7);
    else
        out[7] = '\0';
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(m);
}

/* Calls fn for each item of a ", "-separated list until it returns true; returns the
 * item's 1-based index, or 0. */
static int list_find(const char *list, bool (*fn)(const char *item, size_t n, const void *ud),
                     const void *ud)
{
    int i = 0;
    for (const char *p = list ? list : ""; *p;) {
        p += strspn(p, ", \t");
        size_t k = strcspn(p, ", \t");
        if (k == 0)
            break;
        i++;
        if (fn(p, k, ud))
            return i;
        p += k;
    }
    return 0;
}

static bool origin_is(const char *item, size_t n, const void *ud)
{
    const char *origin = ud;
    return (n == 1 && item[0] == '*') || (strlen(origin) == n && memcmp(item, origin, n) == 0);
}

bool auth_origin_allowed(const char *list, const char *origin, int *index)
{
    int i = 0;
    if (origin && origin[0])
        i = list_find(list, origin_is, origin);
    if (index)
        *index = i;
    return i > 0;
}

void auth_list_item(const char *list, int index, char *out, size_t out_len)
{
    int i = 0;
    out[0] = '\0';
    for (const char *p = list ? list : ""; *p;) {
        p += strspn(p, ", \t");
        size_t k = strcspn(p, ", \t");
        if (k == 0)
            break;
        if (++i == index) {
            snprintf(out, out_len, "%.*s", (int)k, p);
            return;
        }
        p += k;
    }
}

struct host_port {
    const char *host;
    const char *port;
};

static bool host_is(const char *item, size_t n, const void *ud)
{
    const struct host_port *hp = ud;
    const char *colon = memchr(item, ':', n);
    size_t hn = colon ? (size_t)(colon - item) : n;
    if (strlen(hp->host) != hn || strncasecmp(item, hp->host, hn) != 0)
        return false;
    if (colon == NULL)
        return true;
    return strlen(hp->port) == n - hn - 1 && memcmp(colon + 1, hp->port, n - hn - 1) == 0;
}

int auth_webhook_check(const char *url, const char *hosts, char *msg, size_t msg_len)
{
    CURLU *u = NULL;
    char *scheme = NULL, *host = NULL, *port = NULL, *user = NULL;
    size_t n = url ? strlen(url) : 0;
    int rc = 0;

    if (n == 0 || n > AUTH_URL_MAX)
        return fx_fail(msg, msg_len, FX_EINVAL, "must be an http or https URL of 1 to %d bytes",
                       AUTH_URL_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
            return fx_fail(msg, msg_len, FX_EINVAL,
                           "must be a URL of visible ASCII characters (percent-encode others)");
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return fx_fail(msg, msg_len, FX_EINVAL, "must be an http:// or https:// URL");
    if (hosts == NULL || hosts[0] == '\0')
        return fx_fail(msg, msg_len, FX_EFORBIDDEN,
                       "webhooks are not enabled on this service (no webhook_hosts)");
    u = curl_url();
    if (u == NULL)
        return fx_fail(msg, msg_len, FX_ENOMEM, "out of memory");
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
        rc = fx_fail(msg, msg_len, FX_EINVAL, "not a valid URL");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK) {
        rc = fx_fail(msg, msg_len, FX_EINVAL, "must not carry a user name or password");
        goto out;
    }
    struct host_port hp = {host, port};
    if (list_find(hosts, host_is, &hp) == 0)
        rc = fx_fail(msg, msg_len, FX_EFORBIDDEN, "host '%.100s' port %s is not in webhook_hosts",
                     host, port);
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(user);
    curl_url_cleanup(u);
    return rc;
}
