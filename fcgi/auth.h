/*
 * auth.h - the building blocks of access control: API keys, their hashes, webhook signatures,
 * origins and webhook destinations (docs/operations.md, "Access control").
 *
 * A key is "fxk_" + 16 hex digits (its id, the row it names in the api_keys table) + "_" +
 * 64 hex digits (256 random bits from getrandom(2)).  The store keeps only SHA-256 of the
 * whole key; a presented key is found by its id and accepted when the SHA-256 of what was
 * presented equals the stored one, compared in constant time (CRYPTO_memcmp).  A plain
 * SHA-256 suffices: the secret is 256 random bits, not a password, so nothing can be guessed
 * faster by trying hashes than by trying keys.  The id alone grants nothing.
 *
 * Webhooks are signed with HMAC-SHA256 under a per-key secret ("whsec_" + 64 hex digits,
 * shown once with the key): the X-Fluxcgi-Signature header is "sha256=" + hex of
 * HMAC(secret, TIMESTAMP + "." + BODY), TIMESTAMP being the X-Fluxcgi-Timestamp header.
 *
 * OpenSSL's libcrypto does the hashing, the HMAC and the comparison; libcurl's URL parser
 * reads webhook URLs.  Every function is pure or uses only its arguments: thread-safe.
 */
#ifndef FX_AUTH_H
#define FX_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../sql/store.h"

#define AUTH_KEY_PREFIX "fxk_"
#define AUTH_KEY_LEN (4 + STORE_KEY_ID_LEN + 1 + 64) /* fxk_ID_SECRET */
#define AUTH_SECRET_LEN (6 + 64)                     /* whsec_ + 64 hex digits */
#define AUTH_URL_MAX 2048                            /* longest webhook URL */

/*
 * Draws a new key: writes it to key (NUL-terminated; shown once, never stored) and sets
 * k->id and k->hash.  Returns 0, or FX_EIO when no random bytes could be had.
 */
int auth_key_new(char key[AUTH_KEY_LEN + 1], struct store_key *k);

/* Draws a webhook signing secret ("whsec_" + 64 hex digits).  Returns 0 or FX_EIO. */
int auth_secret_new(char secret[AUTH_SECRET_LEN + 1]);

/*
 * Reads the id out of a presented key of len bytes: 0 with id set when it has a key's shape,
 * FX_EAUTH otherwise (then it cannot be any key).
 */
int auth_key_id(const char *key, size_t len, char id[STORE_KEY_ID_LEN + 1]);

/* SHA-256 of len bytes of key. */
void auth_key_hash(const char *key, size_t len, uint8_t out[STORE_KEY_HASH_LEN]);

/* Whether two hashes are equal, in time independent of where they differ. */
bool auth_hash_equal(const uint8_t a[STORE_KEY_HASH_LEN], const uint8_t b[STORE_KEY_HASH_LEN]);

/*
 * The key a request presents, from the values of its Authorization and X-API-Key headers
 * (NULL: absent).  "Bearer KEY" (the scheme in any case, one or more blanks) or X-API-Key:
 * KEY; both may be given only with the same key.  Returns 0 with *key and *len pointing
 * into the header value, FX_ENOENT when neither header is present, FX_EFORMAT with msg set
 * when a header is malformed (another scheme, no key, blanks or control characters in it,
 * two different keys).  msg never repeats the key.
 */
int auth_presented(const char *authorization, const char *api_key, const char **key, size_t *len,
                   char *msg, size_t msg_len);

/*
 * The webhook signature: "sha256=" + hex HMAC-SHA256(secret, timestamp "." body) into out
 * (at least 72 bytes).
 */
void auth_sign(const char *secret, const char *timestamp, const char *body, size_t body_len,
               char out[72]);

/*
 * Whether origin (a browser's Origin header) is in the allowed list ("a, b, ..." as the
 * config stores cors_origins; "*" allows any).  Sets *index (may be NULL) to the item's
 * 1-based place.  An empty list or origin allows nothing.
 */
bool auth_origin_allowed(const char *list, const char *origin, int *index);

/* The index-th (1-based) item of the list into out; "" when there is none. */
void auth_list_item(const char *list, int index, char *out, size_t out_len);

/*
 * Checks a webhook URL: http or https, no user or password, a host (and port) the hosts
 * list allows ("name" allows any port of that host, "name:port" that port only; names
 * compare without case), at most AUTH_URL_MAX bytes, no blanks or control characters.
 * Returns 0, FX_EINVAL (malformed) or FX_EFORBIDDEN (not allowed), with msg saying why.
 */
int auth_webhook_check(const char *url, const char *hosts, char *msg, size_t msg_len);

#endif
