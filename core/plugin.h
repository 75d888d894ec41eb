/*
 * plugin.h - loading the two C++ libraries of fluxcgi as private plugins.
 *
 * Why: libtorch pulls in the system libprotobuf (3.21) while libsentencepiece carries its
 * own protobuf-lite (3.14) and exports those symbols.  Linked into one program, the two
 * copies interpose on each other and the process dies before main().  So the C++ code lives
 * in two shared objects, each opened with RTLD_LOCAL so that neither sees the other's
 * symbols:
 *   libfluxshim.so  shim/shim.cc over libtorch   (forwarders: shim/shim_dl.c)
 *   libfluxt5.so    core/tok_t5.cc over sentencepiece (forwarders: core/tok_t5_dl.c)
 * The programs themselves are plain C and link neither library.
 *
 * Search order for a plugin file: $FLUXCGI_LIBDIR, then beside the running program in
 * lib/, ../lib/ and ../lib/fluxcgi/ (the build tree and an installed PREFIX), then
 * FX_LIBDIR when it was given at build time.
 *
 * Thread-safe: callers open each plugin once (pthread_once in the forwarders).
 */
#ifndef FX_PLUGIN_H
#define FX_PLUGIN_H

#include <stddef.h>

/*
 * Opens the plugin file (e.g. "libfluxshim.so") and resolves n symbols into syms[].
 * Returns the dlopen handle (never closed: plugins stay for the process's life), or NULL
 * with a one-line reason in msg (the places searched, or the missing symbol).
 */
void *plugin_open(const char *file, const char *const *names, void **syms, size_t n, char *msg,
                  size_t msg_len);

#endif
