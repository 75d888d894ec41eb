/* The shim.h API, forwarded to libfluxshim.so (see core/plugin.h for why it is a plugin). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "../core/plugin.h"
#include "shim.h"

/* X(return type, name, parameters, arguments) for every entry point of the library. */
#define SHIM_CALLS(X)                                                                              \
    X(shim_status, shim_release_cache, (shim_model * m, char *msg, size_t msg_len),                \
      (m, msg, msg_len))                                                                           \
    X(shim_status, shim_tensor_from_host,                                                          \
      (shim_model * m, const void *data, shim_dtype src_dtype, const int64_t *shape, int ndim,     \
       shim_dtype dtype, shim_tensor **out, char *msg, size_t msg_len),                            \
      (m, data, src_dtype, shape, ndim, dtype, out, msg, msg_len))                                 \
    X(shim_status, shim_tensor_full,                                                               \
      (shim_model * m, double v, int64_t n, shim_dtype dtype, shim_tensor **out, char *msg,        \
       size_t msg_len),                                                                            \
      (m, v, n, dtype, out, msg, msg_len))                                                         \
    X(shim_status, shim_tensor_to_host,                                                            \
      (const shim_tensor *t, float *dst, size_t n, char *msg, size_t msg_len),                     \
      (t, dst, n, msg, msg_len))                                                                   \
    X(shim_status, shim_tensor_cast,                                                               \
      (const shim_tensor *t, shim_dtype dtype, shim_tensor **out, char *msg, size_t msg_len),      \
      (t, dtype, out, msg, msg_len))                                                               \
    X(shim_status, shim_randn,                                                                     \
      (shim_model * m, uint64_t seed, const int64_t *shape, int ndim, shim_dtype dtype,            \
       shim_tensor **out, char *msg, size_t msg_len),                                              \
      (m, seed, shape, ndim, dtype, out, msg, msg_len))                                            \
    X(shim_status, shim_pack,                                                                      \
      (const shim_tensor *z, shim_tensor **out, char *msg, size_t msg_len),                        \
      (z, out, msg, msg_len))                                                                      \
    X(shim_status, shim_unpack,                                                                    \
      (const shim_tensor *x, int64_t h, int64_t w, shim_tensor **out, char *msg, size_t msg_len),  \
      (x, h, w, out, msg, msg_len))                                                                \
    X(shim_status, shim_euler_step,                                                                \
      (shim_tensor * x, const shim_tensor *v, float dt, char *msg, size_t msg_len),                \
      (x, v, dt, msg, msg_len))                                                                    \
    X(shim_status, shim_run_clip,                                                                  \
      (shim_model * m, const shim_tensor *ids, shim_tensor **out, char *msg, size_t msg_len),      \
      (m, ids, out, msg, msg_len))                                                                 \
    X(shim_status, shim_run_t5,                                                                    \
      (shim_model * m, const shim_tensor *ids, shim_tensor **out, char *msg, size_t msg_len),      \
      (m, ids, out, msg, msg_len))                                                                 \
    X(shim_status, shim_run_transformer,                                                           \
      (shim_model * m, const shim_tensor *img, const shim_tensor *img_ids, const shim_tensor *txt, \
       const shim_tensor *txt_ids, const shim_tensor *timesteps, const shim_tensor *y,             \
       const shim_tensor *guidance, shim_tensor **out, char *msg, size_t msg_len),                 \
      (m, img, img_ids, txt, txt_ids, timesteps, y, guidance, out, msg, msg_len))                  \
    X(shim_status, shim_run_ae,                                                                    \
      (shim_model * m, const shim_tensor *z, shim_tensor **out, char *msg, size_t msg_len),        \
      (m, z, out, msg, msg_len))                                                                   \
    X(shim_status, shim_memory_stats,                                                              \
      (shim_model * m, int64_t * allocated, int64_t * peak, bool reset_peak, char *msg,            \
       size_t msg_len),                                                                            \
      (m, allocated, peak, reset_peak, msg, msg_len))                                              \
    X(shim_status, shim_sync, (shim_model * m, char *msg, size_t msg_len), (m, msg, msg_len))      \
    X(shim_status, shim_use_device, (shim_model * m, char *msg, size_t msg_len),                   \
      (m, msg, msg_len))                                                                           \
    X(shim_status, shim_lora_stage,                                                                \
      (shim_model * m, const struct shim_lora_delta *d, char *msg, size_t msg_len),                \
      (m, d, msg, msg_len))                                                                        \
    X(shim_status, shim_lora_commit, (shim_model * m, char *msg, size_t msg_len),                  \
      (m, msg, msg_len))                                                                           \
    X(shim_status, shim_lora_restore, (shim_model * m, char *msg, size_t msg_len),                 \
      (m, msg, msg_len))

/* Entry points that cannot fail; without the library they do nothing. */
#define SHIM_PLAIN(X)                                                                              \
    X(void, shim_model_free, (shim_model * m), (m), )                                              \
    X(void, shim_tensor_free, (shim_tensor * t), (t), )                                            \
    X(const char *, shim_model_device, (const shim_model *m), (m), "")                             \
    X(void, shim_tensor_shape, (const shim_tensor *t, int64_t shape[8], int *ndim),                \
      (t, shape, ndim), (void)(*ndim = 0))                                                         \
    X(int64_t, shim_tensor_numel, (const shim_tensor *t), (t), 0)                                  \
    X(shim_dtype, shim_tensor_dtype, (const shim_tensor *t), (t), SHIM_F32)                        \
    X(int, shim_model_placement, (const shim_model *m), (m), 0)                                    \
    X(size_t, shim_stream_log, (const shim_model *m, char *buf, size_t len), (m, buf, len),        \
      (buf && len ? (void)(buf[0] = '\0') : (void)0, (size_t)0))                                   \
    X(void, shim_lora_discard, (shim_model * m), (m), )                                            \
    X(void, shim_lora_stats, (const shim_model *m, struct shim_lora_stats *s), (m, s),             \
      (s ? (void)memset(s, 0, sizeof(*s)) : (void)0))

static struct {
    shim_status (*shim_model_load)(const struct shim_params *, shim_model **, char *, size_t);
#define SHIM_PTR(ret, name, params, args) ret(*name) params;
#define SHIM_PTR_PLAIN(ret, name, params, args, none) ret(*name) params;
    SHIM_CALLS(SHIM_PTR)
    SHIM_PLAIN(SHIM_PTR_PLAIN)
#undef SHIM_PTR
#undef SHIM_PTR_PLAIN
} fn;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[1024];
static int loaded;

static void load(void)
{
    static const char *const names[] = {"shim_model_load",
#define SHIM_NAME(ret, name, params, args) #name,
#define SHIM_NAME_PLAIN(ret, name, params, args, none) #name,
                                        SHIM_CALLS(SHIM_NAME) SHIM_PLAIN(SHIM_NAME_PLAIN)
#undef SHIM_NAME
#undef SHIM_NAME_PLAIN
    };
    loaded = plugin_open("libfluxshim.so", names, (void **)&fn, sizeof(names) / sizeof(names[0]),
                         load_error, sizeof(load_error)) != NULL;
}

static int ready(char *msg, size_t msg_len)
{
    pthread_once(&once, load);
    if (!loaded && msg && msg_len)
        snprintf(msg, msg_len, "%s", load_error);
    return loaded;
}

#define SHIM_FORWARD(ret, name, params, args)                                                      \
    ret name params                                                                                \
    {                                                                                              \
        if (!ready(msg, msg_len))                                                                  \
            return SHIM_ENOLIB;                                                                    \
        return fn.name args;                                                                       \
    }
#define SHIM_FORWARD_PLAIN(ret, name, params, args, none)                                          \
    ret name params                                                                                \
    {                                                                                              \
        if (!ready(NULL, 0))                                                                       \
            return none;                                                                           \
        return fn.name args;                                                                       \
    }
SHIM_CALLS(SHIM_FORWARD)
SHIM_PLAIN(SHIM_FORWARD_PLAIN)

shim_status shim_model_load(const struct shim_params *p, shim_model **out, char *msg,
                            size_t msg_len)
{
    if (out)
        *out = NULL;
    if (!ready(msg, msg_len))
        return SHIM_ENOLIB;
    return fn.shim_model_load(p, out, msg, msg_len);
}

const char *shim_status_name(shim_status st)
{
    switch (st) {
    case SHIM_OK:
        return "SHIM_OK";
    case SHIM_EINVAL:
        return "SHIM_EINVAL";
    case SHIM_ENOENT:
        return "SHIM_ENOENT";
    case SHIM_EFORMAT:
        return "SHIM_EFORMAT";
    case SHIM_EDEVICE:
        return "SHIM_EDEVICE";
    case SHIM_ENOMEM:
        return "SHIM_ENOMEM";
    case SHIM_ERUNTIME:
        return "SHIM_ERUNTIME";
    case SHIM_EINTERNAL:
        return "SHIM_EINTERNAL";
    case SHIM_ENOLIB:
        return "SHIM_ENOLIB";
    case SHIM_ENOTSUP:
        return "SHIM_ENOTSUP";
    }
    return "SHIM_EUNKNOWN";
}

void shim_params_default(struct shim_params *p)
{
    memset(p, 0, sizeof(*p));
    p->device = "cpu";
    p->dtype = SHIM_F32;
}
