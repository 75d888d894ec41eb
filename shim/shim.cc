// The libtorch side of shim.h.  Every extern "C" entry point runs its body through guard(),
// which turns any exception into a status and a message; nothing C++ escapes.

#include "shim.h"

#include <torch/cuda.h>
#include <torch/script.h>

// Only c10/torch functions, never the CUDA runtime's own (cudaSetDevice...): a pip torch
// ships libcudart.so.N without the unversioned name that -lcudart would need, and its headers
// only where the Makefile looks for them.  Inline c10 code that calls the runtime
// (c10::cuda::CUDAGuard) is avoided for the same reason; make check-cuda-compile checks it.
#ifdef SHIM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>

#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <sys/stat.h>

struct shim_model {
    torch::jit::Module clip, t5, transformer, ae;
    c10::Device device{c10::kCPU};
    std::string device_name;
};

struct shim_tensor {
    at::Tensor t;
};

namespace
{

void set_msg(char *msg, size_t len, const std::string &s)
{
    if (msg == nullptr || len == 0)
        return;
    // One line: libtorch messages carry backtraces after the first newline.
    size_t n = s.find('\n');
    std::string line = s.substr(0, n == std::string::npos ? s.size() : n);
    std::snprintf(msg, len, "%s", line.c_str());
}

// TorchScript interpreter errors say "The following operation failed..." first, then the
// TorchScript traceback, and the actual error on the last line: keep the first and last.
void set_script_msg(char *msg, size_t len, const std::string &s)
{
    size_t end = s.find_last_not_of(" \n");
    if (end == std::string::npos) {
        set_msg(msg, len, s);
        return;
    }
    size_t start = s.rfind('\n', end);
    std::string last = s.substr(start == std::string::npos ? 0 : start + 1,
                                end + 1 - (start == std::string::npos ? 0 : start + 1));
    size_t first_end = s.find('\n');
    std::string first = s.substr(0, first_end);
    set_msg(msg, len, first == last ? first : first + " " + last);
}

template <typename F> shim_status guard(char *msg, size_t len, F &&body)
{
    try {
        c10::InferenceMode mode;
        return body();
    } catch (const c10::OutOfMemoryError &e) {
        set_msg(msg, len, std::string("out of device memory: ") + e.what());
        return SHIM_ENOMEM;
    } catch (const c10::Error &e) {
        set_msg(msg, len, e.what_without_backtrace());
        return SHIM_ERUNTIME;
    } catch (const std::bad_alloc &) {
        set_msg(msg, len, "out of memory");
        return SHIM_ENOMEM;
    } catch (const std::runtime_error &e) {
        // torch::jit::JITException and friends: the model failed while running
        set_script_msg(msg, len, e.what());
        return SHIM_ERUNTIME;
    } catch (const std::exception &e) {
        set_msg(msg, len, e.what());
        return SHIM_EINTERNAL;
    } catch (...) {
        set_msg(msg, len, "unknown exception");
        return SHIM_EINTERNAL;
    }
}

at::ScalarType scalar_type(shim_dtype d)
{
    switch (d) {
    case SHIM_BF16:
        return at::kBFloat16;
    case SHIM_I64:
        return at::kLong;
    case SHIM_F32:
    default:
        return at::kFloat;
    }
}

bool valid_dtype(shim_dtype d)
{
    return d == SHIM_F32 || d == SHIM_BF16 || d == SHIM_I64;
}

shim_status wrap(at::Tensor t, shim_tensor **out)
{
    *out = new shim_tensor{std::move(t)};
    return SHIM_OK;
}

shim_status invalid(char *msg, size_t len, const std::string &s)
{
    set_msg(msg, len, s);
    return SHIM_EINVAL;
}

shim_status load_module(const char *what, const char *path, const c10::Device &dev,
                        torch::jit::Module &out, char *msg, size_t len)
{
    if (path == nullptr)
        return invalid(msg, len, std::string("no path for the ") + what + " module");
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_msg(msg, len, std::string("module file '") + path + "' not found");
        return SHIM_ENOENT;
    }
    try {
        out = torch::jit::load(path, dev);
    } catch (const c10::Error &e) {
        set_msg(msg, len, std::string("cannot load '") + path + "': " + e.what_without_backtrace());
        return SHIM_EFORMAT;
    }
    out.eval();
    return SHIM_OK;
}

// CUDA's current device is per thread; the model's device becomes the caller's.
void use_device(const c10::Device &dev)
{
#ifdef SHIM_WITH_CUDA
    if (dev.is_cuda())
        c10::cuda::set_device(dev.index());
#else
    (void)dev; // a libtorch without CUDA has no CUDA model (shim_model_load refuses it)
#endif
}

at::Tensor run(torch::jit::Module &mod, std::vector<c10::IValue> args)
{
    c10::IValue r = mod.forward(std::move(args));
    if (!r.isTensor())
        throw std::runtime_error("module did not return a tensor");
    return r.toTensor();
}

} // namespace

extern "C" {

shim_status shim_model_load(const struct shim_params *p, shim_model **out, char *msg,
                            size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (p == nullptr)
        return invalid(msg, msg_len, "no parameters");
    return guard(msg, msg_len, [&]() -> shim_status {
        std::string dev_s = p->device ? p->device : "cpu";
        c10::Device dev(c10::kCPU);
        if (dev_s == "cpu") {
            dev = c10::Device(c10::kCPU);
        } else if (dev_s == "cuda" || dev_s.rfind("cuda:", 0) == 0) {
            if (dev_s.size() > 5 && dev_s.find_first_not_of("0123456789", 5) != std::string::npos)
                return invalid(msg, msg_len, "bad device '" + dev_s + "' (cpu, cuda or cuda:N)");
            if (!torch::cuda::is_available()) {
                set_msg(msg, msg_len,
                        "device '" + dev_s +
                            "' asked for, but this libtorch sees "
                            "no CUDA device");
                return SHIM_EDEVICE;
            }
            dev = c10::Device(dev_s == "cuda" ? std::string("cuda:0") : dev_s);
            if (dev.index() >= static_cast<int>(torch::cuda::device_count())) {
                set_msg(msg, msg_len, "device '" + dev_s + "' does not exist");
                return SHIM_EDEVICE;
            }
        } else {
            return invalid(msg, msg_len, "bad device '" + dev_s + "' (cpu, cuda or cuda:N)");
        }
        if (!valid_dtype(p->dtype) || p->dtype == SHIM_I64)
            return invalid(msg, msg_len, "model dtype must be SHIM_F32 or SHIM_BF16");
        if (p->cpu_threads < 0)
            return invalid(msg, msg_len, "cpu_threads must be >= 0");
        if (p->cpu_threads > 0)
            at::set_num_threads(p->cpu_threads);
        use_device(dev);
        auto *m = new shim_model();
        m->device = dev;
        m->device_name = dev.str();
        shim_status st = load_module("clip", p->clip_path, dev, m->clip, msg, msg_len);
        if (st == SHIM_OK)
            st = load_module("t5", p->t5_path, dev, m->t5, msg, msg_len);
        if (st == SHIM_OK)
            st = load_module("transformer", p->transformer_path, dev, m->transformer, msg, msg_len);
        if (st == SHIM_OK)
            st = load_module("ae", p->ae_path, dev, m->ae, msg, msg_len);
        if (st != SHIM_OK) {
            delete m;
            return st;
        }
        *out = m;
        return SHIM_OK;
    });
}

void shim_model_free(shim_model *m)
{
    try {
        delete m;
    } catch (...) {
    }
}

const char *shim_model_device(const shim_model *m)
{
    return m ? m->device_name.c_str() : "";
}

shim_status shim_release_cache(shim_model *m, char *msg, size_t msg_len)
{
    if (m == nullptr)
        return invalid(msg, msg_len, "no model");
    return guard(msg, msg_len, [&]() -> shim_status {
#ifdef SHIM_WITH_CUDA
        if (m->device.is_cuda())
            c10::cuda::CUDACachingAllocator::emptyCache();
#endif
        return SHIM_OK;
    });
}

void shim_tensor_free(shim_tensor *t)
{
    try {
        delete t;
    } catch (...) {
    }
}

shim_status shim_tensor_from_host(shim_model *m, const void *data, shim_dtype src_dtype,
                                  const int64_t *shape, int ndim, shim_dtype dtype,
                                  shim_tensor **out, char *msg, size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (m == nullptr || data == nullptr || shape == nullptr || ndim < 0 || ndim > 8)
        return invalid(msg, msg_len, "tensor_from_host: bad arguments");
    if ((src_dtype != SHIM_F32 && src_dtype != SHIM_I64) || !valid_dtype(dtype))
        return invalid(msg, msg_len, "tensor_from_host: unsupported dtype");
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return invalid(msg, msg_len, "tensor_from_host: negative size");
    return guard(msg, msg_len, [&]() -> shim_status {
        std::vector<int64_t> sizes(shape, shape + ndim);
        at::Tensor host = at::from_blob(const_cast<void *>(data), sizes,
                                        at::TensorOptions().dtype(scalar_type(src_dtype)));
        return wrap(host.to(m->device, scalar_type(dtype), /*non_blocking=*/false,
                            /*copy=*/true),
                    out);
    });
}

shim_status shim_tensor_full(shim_model *m, double v, int64_t n, shim_dtype dtype,
                             shim_tensor **out, char *msg, size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (m == nullptr || n < 0 || !valid_dtype(dtype))
        return invalid(msg, msg_len, "tensor_full: bad arguments");
    return guard(msg, msg_len, [&]() -> shim_status {
        return wrap(
            at::full({n}, v, at::TensorOptions().dtype(scalar_type(dtype)).device(m->device)), out);
    });
}

void shim_tensor_shape(const shim_tensor *t, int64_t shape[8], int *ndim)
{
    *ndim = 0;
    if (t == nullptr)
        return;
    int64_t d = t->t.dim();
    for (int64_t i = 0; i < d && i < 8; i++)
        shape[i] = t->t.size(i);
    *ndim = static_cast<int>(d < 8 ? d : 8);
}

int64_t shim_tensor_numel(const shim_tensor *t)
{
    return t ? t->t.numel() : 0;
}

shim_dtype shim_tensor_dtype(const shim_tensor *t)
{
    if (t == nullptr)
        return SHIM_F32;
    switch (t->t.scalar_type()) {
    case at::kBFloat16:
        return SHIM_BF16;
    case at::kLong:
        return SHIM_I64;
    default:
        return SHIM_F32;
    }
}

shim_status shim_tensor_to_host(const shim_tensor *t, float *dst, size_t n, char *msg,
                                size_t msg_len)
{
    if (t == nullptr || dst == nullptr)
        return invalid(msg, msg_len, "tensor_to_host: bad arguments");
    if (static_cast<int64_t>(n) != t->t.numel())
        return invalid(msg, msg_len,
                       "tensor_to_host: buffer holds " + std::to_string(n) +
                           " floats, tensor has " + std::to_string(t->t.numel()));
    return guard(msg, msg_len, [&]() -> shim_status {
        at::Tensor host = t->t.to(at::kCPU, at::kFloat).contiguous();
        std::memcpy(dst, host.data_ptr<float>(), n * sizeof(float));
        return SHIM_OK;
    });
}

shim_status shim_tensor_cast(const shim_tensor *t, shim_dtype dtype, shim_tensor **out, char *msg,
                             size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (t == nullptr || !valid_dtype(dtype))
        return invalid(msg, msg_len, "tensor_cast: bad arguments");
    return guard(msg, msg_len, [&]() -> shim_status {
        return wrap(t->t.to(scalar_type(dtype), false, /*copy=*/true), out);
    });
}

shim_status shim_randn(shim_model *m, uint64_t seed, const int64_t *shape, int ndim,
                       shim_dtype dtype, shim_tensor **out, char *msg, size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (m == nullptr || shape == nullptr || ndim < 1 || ndim > 8 ||
        (dtype != SHIM_F32 && dtype != SHIM_BF16))
        return invalid(msg, msg_len, "randn: bad arguments");
    return guard(msg, msg_len, [&]() -> shim_status {
        at::Generator gen = at::detail::createCPUGenerator(seed);
        std::vector<int64_t> sizes(shape, shape + ndim);
        at::Tensor n = at::randn(sizes, gen, at::TensorOptions().dtype(scalar_type(dtype)));
        return wrap(n.to(m->device), out);
    });
}

shim_status shim_pack(const shim_tensor *z, shim_tensor **out, char *msg, size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (z == nullptr || z->t.dim() != 4 || z->t.size(2) % 2 || z->t.size(3) % 2)
        return invalid(msg, msg_len, "pack: expected (B, C, 2h, 2w)");
    return guard(msg, msg_len, [&]() -> shim_status {
        const at::Tensor &t = z->t;
        int64_t b = t.size(0), c = t.size(1), h = t.size(2) / 2, w = t.size(3) / 2;
        return wrap(
            t.view({b, c, h, 2, w, 2}).permute({0, 2, 4, 1, 3, 5}).reshape({b, h * w, c * 4}), out);
    });
}

shim_status shim_unpack(const shim_tensor *x, int64_t h, int64_t w, shim_tensor **out, char *msg,
                        size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (x == nullptr || x->t.dim() != 3 || h <= 0 || w <= 0 || x->t.size(1) != h * w ||
        x->t.size(2) % 4)
        return invalid(msg, msg_len, "unpack: expected (B, h*w, 4C)");
    return guard(msg, msg_len, [&]() -> shim_status {
        const at::Tensor &t = x->t;
        int64_t b = t.size(0), c = t.size(2) / 4;
        return wrap(
            t.view({b, h, w, c, 2, 2}).permute({0, 3, 1, 4, 2, 5}).reshape({b, c, h * 2, w * 2}),
            out);
    });
}

shim_status shim_euler_step(shim_tensor *x, const shim_tensor *v, float dt, char *msg,
                            size_t msg_len)
{
    if (x == nullptr || v == nullptr || x->t.scalar_type() != at::kFloat ||
        !x->t.sizes().equals(v->t.sizes()))
        return invalid(msg, msg_len, "euler_step: x must be float32 and v the same shape");
    return guard(msg, msg_len, [&]() -> shim_status {
        // x + dt * v as two fp32 operations, the order the reference computes it in.
        at::Tensor step = v->t.to(at::kFloat) * dt;
        x->t.add_(step);
        return SHIM_OK;
    });
}

shim_status shim_run_clip(shim_model *m, const shim_tensor *ids, shim_tensor **out, char *msg,
                          size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (m == nullptr || ids == nullptr || ids->t.scalar_type() != at::kLong)
        return invalid(msg, msg_len, "run_clip: expected int64 ids");
    return guard(msg, msg_len, [&]() -> shim_status { return wrap(run(m->clip, {ids->t}), out); });
}

shim_status shim_run_t5(shim_model *m, const shim_tensor *ids, shim_tensor **out, char *msg,
                        size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (m == nullptr || ids == nullptr || ids->t.scalar_type() != at::kLong)
        return invalid(msg, msg_len, "run_t5: expected int64 ids");
    return guard(msg, msg_len, [&]() -> shim_status { return wrap(run(m->t5, {ids->t}), out); });
}

shim_status shim_run_transformer(shim_model *m, const shim_tensor *img, const shim_tensor *img_ids,
                                 const shim_tensor *txt, const shim_tensor *txt_ids,
                                 const shim_tensor *timesteps, const shim_tensor *y,
                                 const shim_tensor *guidance, shim_tensor **out, char *msg,
                                 size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (m == nullptr || !img || !img_ids || !txt || !txt_ids || !timesteps || !y || !guidance)
        return invalid(msg, msg_len, "run_transformer: missing argument");
    return guard(msg, msg_len, [&]() -> shim_status {
        return wrap(run(m->transformer,
                        {img->t, img_ids->t, txt->t, txt_ids->t, timesteps->t, y->t, guidance->t}),
                    out);
    });
}

shim_status shim_run_ae(shim_model *m, const shim_tensor *z, shim_tensor **out, char *msg,
                        size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (m == nullptr || z == nullptr || z->t.dim() != 4)
        return invalid(msg, msg_len, "run_ae: expected (B, C, h, w) latents");
    return guard(msg, msg_len, [&]() -> shim_status { return wrap(run(m->ae, {z->t}), out); });
}

shim_status shim_memory_stats(shim_model *m, int64_t *allocated, int64_t *peak, bool reset_peak,
                              char *msg, size_t msg_len)
{
    if (m == nullptr || allocated == nullptr || peak == nullptr)
        return invalid(msg, msg_len, "memory_stats: bad arguments");
    *allocated = 0;
    *peak = 0;
    return guard(msg, msg_len, [&]() -> shim_status {
#ifdef SHIM_WITH_CUDA
        if (m->device.is_cuda()) {
            auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(m->device.index());
            *allocated = stats.allocated_bytes[0].current; // StatType::AGGREGATE
            *peak = stats.allocated_bytes[0].peak;
            if (reset_peak)
                c10::cuda::CUDACachingAllocator::resetPeakStats(m->device.index());
        }
#else
        (void)reset_peak;
#endif
        return SHIM_OK;
    });
}

shim_status shim_sync(shim_model *m, char *msg, size_t msg_len)
{
    if (m == nullptr)
        return invalid(msg, msg_len, "no model");
    return guard(msg, msg_len, [&]() -> shim_status {
        // c10::cuda::device_synchronize() would wait for the thread's current device only
        if (m->device.is_cuda())
            torch::cuda::synchronize(m->device.index());
        return SHIM_OK;
    });
}

shim_status shim_use_device(shim_model *m, char *msg, size_t msg_len)
{
    if (m == nullptr)
        return invalid(msg, msg_len, "no model");
    return guard(msg, msg_len, [&]() -> shim_status {
        use_device(m->device);
        return SHIM_OK;
    });
}

} // extern "C"
