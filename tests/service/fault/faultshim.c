/*
 * faultshim.c - a libfluxshim.so for tests that fails on demand, like a device that breaks
 * after the model loaded (a CUDA fault): while the file named by FLUX_FAULT_FILE exists,
 * every transformer call fails with SHIM_EDEVICE; otherwise it forwards to the real library.
 *
 * Built by tests/service/test_robustness.py against the real library by its absolute path
 * (it has no soname, so that path is what this one needs): the loader's dlsym on this file
 * then finds every other entry point in the real library, a dependency of this one.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../../../shim/shim.h"

typedef shim_status (*transformer_fn)(shim_model *, const shim_tensor *, const shim_tensor *,
                                      const shim_tensor *, const shim_tensor *, const shim_tensor *,
                                      const shim_tensor *, const shim_tensor *, shim_tensor **,
                                      char *, size_t);

shim_status shim_run_transformer(shim_model *m, const shim_tensor *img, const shim_tensor *img_ids,
                                 const shim_tensor *txt, const shim_tensor *txt_ids,
                                 const shim_tensor *timesteps, const shim_tensor *y,
                                 const shim_tensor *guidance, shim_tensor **out, char *msg,
                                 size_t msg_len)
{
    static transformer_fn real;
    const char *fault = getenv("FLUX_FAULT_FILE");
    if (fault && access(fault, F_OK) == 0) {
        if (msg && msg_len)
            snprintf(msg, msg_len, "injected device fault");
        return SHIM_EDEVICE;
    }
    if (real == NULL) {
        void *h = dlopen(getenv("FLUX_REAL_SHIM"), RTLD_NOW | RTLD_NOLOAD);
        real = h ? (transformer_fn)dlsym(h, "shim_run_transformer") : NULL;
    }
    if (real == NULL) {
        if (msg && msg_len)
            snprintf(msg, msg_len, "faultshim: the real library is not loaded");
        return SHIM_ERUNTIME;
    }
    return real(m, img, img_ids, txt, txt_ids, timesteps, y, guidance, out, msg, msg_len);
}
