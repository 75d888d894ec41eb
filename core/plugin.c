#include "plugin.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *try_open(const char *dir, const char *file, char *tried, size_t cap)
{
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
        return NULL;
    if (access(path, R_OK) != 0) {
        size_t n = strlen(tried);
        snprintf(tried + n, cap - n, "%s%s", n ? ", " : "", dir);
        return NULL;
    }
    return dlopen(path, RTLD_NOW | RTLD_LOCAL);
}

void *plugin_open(const char *file, const char *const *names, void **syms, size_t n, char *msg,
                  size_t msg_len)
{
    char exe[PATH_MAX], dir[PATH_MAX], tried[2048] = "";
    void *h = NULL;
    const char *env = getenv("FLUXCGI_LIBDIR");
    if (env && *env)
        h = try_open(env, file, tried, sizeof(tried));
    ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (h == NULL && k > 0) {
        exe[k] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
        static const char *const rel[] = {"lib", "../lib", "../lib/fluxcgi"};
        for (size_t i = 0; h == NULL && i < sizeof(rel) / sizeof(rel[0]); i++) {
            if ((size_t)snprintf(dir, sizeof(dir), "%s/%s", exe, rel[i]) < sizeof(dir))
                h = try_open(dir, file, tried, sizeof(tried));
        }
    }
#ifdef FX_LIBDIR
    if (h == NULL)
        h = try_open(FX_LIBDIR, file, tried, sizeof(tried));
#endif
    if (h == NULL) {
        const char *e = dlerror();
        if (msg && msg_len)
            snprintf(msg, msg_len, "cannot load %s: %s", file,
                     e ? e : (tried[0] ? "not found in" : "not found"));
        if (msg && msg_len && !e && tried[0]) {
            size_t m = strlen(msg);
            snprintf(msg + m, msg_len - m, " %s (set FLUXCGI_LIBDIR)", tried);
        }
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        syms[i] = dlsym(h, names[i]);
        if (syms[i] == NULL) {
            if (msg && msg_len)
                snprintf(msg, msg_len, "%s: no symbol '%s'", file, names[i]);
            return NULL;
        }
    }
    return h;
}
