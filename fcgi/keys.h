/*
 * keys.h - `fluxcgi keys add|list|revoke`: API keys managed in the store (fcgi/auth.h).
 *
 *   fluxcgi keys add NAME --config FILE [--admin] [--expires DURATION] [--max-queued N]
 *                                       [--daily-images N] [--daily-budget N] [--webhook URL]
 *   fluxcgi keys list --config FILE
 *   fluxcgi keys revoke NAME|ID --config FILE
 *
 * `add` prints the key and its webhook signing secret once; the store keeps only the key's
 * SHA-256 (and the secret, which it needs to sign).  Keys are read by the running service at
 * each request, so adding or revoking one needs no restart.
 */
#ifndef FX_KEYS_H
#define FX_KEYS_H

#include "config.h"

/* Runs `fluxcgi keys ...` (argv[0] is "keys").  Returns the exit status: 0, 1 (the store
 * failed, no such key), 2 (a bad command line or config). */
int keys_main(int argc, char **argv);

/*
 * At start: when auth is on and the store has no key in use, logs how to add one (the
 * service starts anyway and answers 401 until a key exists: it needs no restart to pick up
 * new keys).  Returns the number of keys in use, or -1 when the store could not be read.
 */
long keys_check_store(const struct fx_config *cfg, const char *config_path);

#endif
