// The libtorch side of shim.h.  Every extern "C" entry point runs its body through guard(),
// which turns any exception into a status and a message; nothing C++ escapes.

#include "shim.h"

#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

// Only c10/torch functions, never the CUDA runtime's own (cudaSetDevice...): a pip torch
// ships libcudart.so.N without the unversioned name that -lcudart would need, and its headers
// only where the Makefile looks for them.  Inline c10 code that calls the runtime
// (c10::cuda::CUDAGuard) is avoided for the same reason; make check-cuda-compile checks it.
#ifdef SHIM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
// c10::Event dispatches to the CUDA guard implementation inside libc10_cuda (no inline
// runtime calls, unlike at::cuda::CUDAEvent).
#include <c10/core/Event.h>
#endif

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <sys/stat.h>

// One tensor attribute of a streamed block: the object holding it, its slot, and the host
// copy (pinned on CUDA) that the slot points to while the block is not on the device.
struct shim_slot {
    c10::intrusive_ptr<c10::ivalue::Object> obj;
    size_t slot;
    at::Tensor host;
};

// A transformer block under SHIM_PLACE_STREAM.
struct shim_block {
    torch::jit::Module mod;
    bool single;                  // a single-stream block (else double-stream)
    std::vector<shim_slot> slots; // every tensor attribute, recursively
    bool on_device = false;
#ifdef SHIM_WITH_CUDA
    std::unique_ptr<c10::Event> ready; // recorded on the side stream after its copy
#endif
};

// LoRA: one adapted linear layer, its staged deltas and its saved originals.
enum class lora_kind { plain, int8, fp8, int4 };

struct shim_lora_layer {
    c10::intrusive_ptr<c10::ivalue::Object> obj; // the linear layer's module object
    lora_kind kind = lora_kind::plain;
    std::vector<std::string> names; // its tensors: weight | qweight, scale | packed, scale
    int64_t out = 0, in = 0;
    std::vector<shim_lora_delta> staged; // the pointers are the caller's (shim.h)
    std::vector<at::Tensor> saved;       // host copies of the originals; empty: not patched
};

struct shim_model {
    torch::jit::Module clip, t5, transformer, ae;
    c10::Device device{c10::kCPU};
    std::string device_name;
    shim_placement placement = SHIM_PLACE_RESIDENT;
    c10::Device enc_device{c10::kCPU}; // where CLIP and T5 live
    std::vector<shim_block> blocks;    // stream: double blocks, then single blocks
    std::string stream_log;            // stream: the last transformer call's schedule
    // LoRA layers by (part, attribute path); ordered, so commits and restores run in a
    // fixed order
    std::map<std::pair<int, std::string>, shim_lora_layer> lora;
#ifdef SHIM_WITH_CUDA
    std::unique_ptr<c10::cuda::CUDAStream> side; // stream: the copies run here
    std::unique_ptr<c10::Event> done;            // stream: recorded after a block ran
#endif
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

// Records every tensor attribute under obj (parameters, buffers, the int8/int4 formats'
// weights and scales) with its current value as the host copy.
void collect_slots(const c10::intrusive_ptr<c10::ivalue::Object> &obj, std::vector<shim_slot> &out)
{
    for (size_t i = 0; i < obj->slots().size(); i++) {
        const c10::IValue &v = obj->getSlot(i);
        if (v.isTensor())
            out.push_back({obj, i, v.toTensor()});
        else if (v.isObject())
            collect_slots(v.toObject(), out);
    }
}

// Stream: transformer.pt is loaded on the CPU; its blocks stay there (pinned on CUDA) and
// everything else moves to the device.
shim_status setup_stream(shim_model *m, char *msg, size_t len)
{
    torch::jit::Module &tr = m->transformer;
    if (!tr.find_method("embed") || !tr.find_method("final")) {
        set_msg(msg, len,
                "placement 'stream': transformer.pt has no embed/final methods (export the "
                "model dir again with this fluxexport); placements 'resident' and "
                "'encoders-offload' run it as it is");
        return SHIM_ENOTSUP;
    }
    for (const auto &child : tr.named_children()) {
        if (child.name == "double_blocks" || child.name == "single_blocks") {
            for (const auto &b : child.value.named_children()) {
                shim_block blk;
                blk.mod = b.value;
                blk.single = child.name == "single_blocks";
                collect_slots(blk.mod._ivalue(), blk.slots);
                m->blocks.push_back(std::move(blk));
            }
        } else {
            torch::jit::Module sub = child.value;
            sub.to(m->device);
        }
    }
    // named_children lists double_blocks before single_blocks (definition order); keep the
    // forward's order regardless.
    std::stable_partition(m->blocks.begin(), m->blocks.end(),
                          [](const shim_block &b) { return !b.single; });
#ifdef SHIM_WITH_CUDA
    if (m->device.is_cuda()) {
        for (auto &b : m->blocks) {
            for (auto &sl : b.slots) {
                sl.host = sl.host.pin_memory();
                sl.obj->setSlot(sl.slot, sl.host);
            }
            b.ready = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
        }
        m->side = std::make_unique<c10::cuda::CUDAStream>(
            c10::cuda::getStreamFromPool(false, m->device.index()));
        m->done = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
    }
#endif
    return SHIM_OK;
}

// Stream: block i's weights to the device, on the side stream (a no-op move on the CPU).
void fetch_block(shim_model *m, size_t i)
{
    shim_block &b = m->blocks[i];
    if (b.on_device)
        return;
    m->stream_log += "F" + std::to_string(i) + " ";
#ifdef SHIM_WITH_CUDA
    if (m->device.is_cuda()) {
        c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(m->device.index());
        c10::cuda::setCurrentCUDAStream(*m->side); // the copies allocate and run there
        try {
            for (auto &sl : b.slots)
                sl.obj->setSlot(sl.slot, sl.host.to(m->device, /*non_blocking=*/true));
            b.ready->record(m->side->unwrap());
        } catch (...) {
            c10::cuda::setCurrentCUDAStream(compute);
            throw;
        }
        c10::cuda::setCurrentCUDAStream(compute);
    }
#endif
    b.on_device = true;
}

// Stream: makes the compute stream wait for block i's copy.
void await_block(shim_model *m, size_t i)
{
    m->stream_log += "R" + std::to_string(i) + " ";
#ifdef SHIM_WITH_CUDA
    if (m->device.is_cuda())
        m->blocks[i].ready->block(c10::cuda::getCurrentCUDAStream(m->device.index()).unwrap());
#else
    (void)i;
#endif
}

// Stream: drops block i's device copy once the work queued so far on the compute stream
// (block i's) is done: the side stream waits for it before it copies into that memory.
void evict_block(shim_model *m, size_t i)
{
    shim_block &b = m->blocks[i];
    if (!b.on_device)
        return;
    m->stream_log += "E" + std::to_string(i) + " ";
#ifdef SHIM_WITH_CUDA
    if (m->device.is_cuda()) {
        m->done->record(c10::cuda::getCurrentCUDAStream(m->device.index()).unwrap());
        m->done->block(m->side->unwrap());
    }
#endif
    for (auto &sl : b.slots)
        sl.obj->setSlot(sl.slot, sl.host);
    b.on_device = false;
}

void evict_all(shim_model *m)
{
    for (size_t i = 0; i < m->blocks.size(); i++)
        evict_block(m, i);
}

// Stream: forward's computation driven block by block (export/fluxexport/flux.py).
at::Tensor run_streamed(shim_model *m, std::vector<c10::IValue> args)
{
    m->stream_log.clear();
    try {
        // a std::vector copy: indexing the tuple's inline storage trips -Warray-bounds
        std::vector<c10::IValue> emb =
            m->transformer.get_method("embed")(std::move(args)).toTupleRef().elements().vec();
        if (emb.size() != 5)
            throw std::runtime_error("transformer.embed did not return 5 values");
        at::Tensor img = emb[0].toTensor(), txt = emb[1].toTensor();
        c10::IValue vec = emb[2], cos = emb[3], sin = emb[4];
        const size_t n = m->blocks.size();
        at::Tensor x;
        int64_t lt = txt.size(1);
        bool joined = false;
        if (n > 0)
            fetch_block(m, 0);
        for (size_t i = 0; i < n; i++) {
            if (n > 1)
                fetch_block(m, (i + 1) % n); // one ahead; the last prefetches the next step's first
            await_block(m, i);
            shim_block &b = m->blocks[i];
            if (!b.single) {
                std::vector<c10::IValue> r =
                    b.mod.forward({img, txt, vec, cos, sin}).toTupleRef().elements().vec();
                img = r.at(0).toTensor();
                txt = r.at(1).toTensor();
            } else {
                if (!joined) {
                    lt = txt.size(1);
                    x = at::cat({txt, img}, 1);
                    joined = true;
                }
                x = b.mod.forward({x, vec, cos, sin}).toTensor();
            }
            evict_block(m, i);
        }
        if (!joined) {
            lt = txt.size(1);
            x = at::cat({txt, img}, 1);
        }
        c10::IValue r = m->transformer.get_method("final")({x, vec, lt});
        return r.toTensor();
    } catch (...) {
        evict_all(m); // a failed step leaves no block half on the device
        throw;
    }
}

at::Tensor run(torch::jit::Module &mod, std::vector<c10::IValue> args)
{
    c10::IValue r = mod.forward(std::move(args));
    if (!r.isTensor())
        throw std::runtime_error("module did not return a tensor");
    return r.toTensor();
}

// ---- LoRA patches (shim.h) -------------------------------------------------------------------

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define SHIM_HAS_FP8 1 // torch's float8 dtypes (the exporter's fp8 format) exist from 2.1
#endif

torch::jit::Module &part_module(shim_model *m, int part)
{
    return part == SHIM_PART_CLIP ? m->clip : part == SHIM_PART_T5 ? m->t5 : m->transformer;
}

const char *part_file(int part)
{
    return part == SHIM_PART_CLIP ? "clip_text.pt"
           : part == SHIM_PART_T5 ? "t5_encoder.pt"
                                  : "transformer.pt";
}

bool tensor_attr(const c10::intrusive_ptr<c10::ivalue::Object> &o, const char *name,
                 at::Tensor &out)
{
    if (!o->type()->hasAttribute(name))
        return false;
    c10::IValue v = o->getAttr(name);
    if (!v.isTensor())
        return false;
    out = v.toTensor();
    return true;
}

// Finds the linear layer at the attribute path and what its tensors are (quant.py's
// Int8Linear / FP8Linear / Int4Linear, or a plain weight).  Returns "" or the reason.
std::string find_layer(torch::jit::Module &root, const std::string &path, shim_lora_layer &L)
{
    c10::intrusive_ptr<c10::ivalue::Object> o = root._ivalue();
    size_t start = 0;
    for (;;) {
        size_t dot = path.find('.', start);
        std::string name = path.substr(start, dot == std::string::npos ? dot : dot - start);
        if (name.empty() || !o->type()->hasAttribute(name))
            return "not found";
        c10::IValue v = o->getAttr(name);
        if (!v.isObject())
            return "not a module";
        o = v.toObject();
        if (dot == std::string::npos)
            break;
        start = dot + 1;
    }
    at::Tensor w, s;
    L.obj = o;
    if (tensor_attr(o, "qweight", w) && tensor_attr(o, "scale", s)) {
        if (w.dim() != 2 || s.dim() != 1 || s.size(0) != w.size(0) || !s.is_floating_point())
            return "qweight/scale of unexpected shapes";
        if (w.scalar_type() == at::kChar)
            L.kind = lora_kind::int8;
#ifdef SHIM_HAS_FP8
        else if (w.scalar_type() == at::kFloat8_e4m3fn)
            L.kind = lora_kind::fp8;
#endif
        else
            return std::string("qweight of dtype ") + c10::toString(w.scalar_type()) +
                   " (int8, or float8_e4m3fn on torch 2.1+)";
        L.names = {"qweight", "scale"};
        L.out = w.size(0);
        L.in = w.size(1);
    } else if (tensor_attr(o, "packed", w) && tensor_attr(o, "scale", s)) {
        if (w.dim() != 2 || w.scalar_type() != at::kByte || s.dim() != 2 ||
            s.size(0) != w.size(0) || s.size(1) < 1 || (w.size(1) * 2) % s.size(1) != 0 ||
            ((w.size(1) * 2) / s.size(1)) % 2 != 0 || !s.is_floating_point())
            return "packed/scale of unexpected shapes";
        L.kind = lora_kind::int4;
        L.names = {"packed", "scale"};
        L.out = w.size(0);
        L.in = w.size(1) * 2;
    } else if (tensor_attr(o, "weight", w) && w.dim() == 2 && w.is_floating_point()) {
        L.kind = lora_kind::plain;
        L.names = {"weight"};
        L.out = w.size(0);
        L.in = w.size(1);
    } else {
        return "not a linear layer (no weight, qweight or packed tensor)";
    }
    return "";
}

std::vector<at::Tensor> layer_tensors(const shim_lora_layer &L)
{
    std::vector<at::Tensor> t;
    for (const auto &n : L.names)
        t.push_back(L.obj->getAttr(n).toTensor());
    return t;
}

// The float32 weight that stored tensors t stand for, on dev (always a new tensor).
at::Tensor dequant(const shim_lora_layer &L, const std::vector<at::Tensor> &t,
                   const c10::Device &dev)
{
    if (L.kind == lora_kind::plain)
        return t[0].to(dev, at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    at::Tensor s = t[1].to(dev).to(at::kFloat);
    if (L.kind != lora_kind::int4)
        return t[0].to(dev).to(at::kFloat) * s.unsqueeze(1);
    at::Tensor p = t[0].to(dev);
    at::Tensor c = at::stack({at::bitwise_and(p, 15), at::bitwise_right_shift(p, 4)}, -1);
    c = c.view({L.out, s.size(1), -1}).to(at::kFloat) - 8.0;
    return (c * s.unsqueeze(2)).view({L.out, L.in});
}

// absmax / qmax rounded to the scale's dtype, 1 where a row (group) is all zero.
at::Tensor quant_scales(const at::Tensor &absmax, double qmax, at::ScalarType dtype)
{
    return at::where(absmax > 0, absmax / qmax, at::ones_like(absmax)).to(dtype);
}

// W (float32) stored as L's format with quant.py's quantise_weight rules; `like` gives the
// dtypes.
std::vector<at::Tensor> requant(const shim_lora_layer &L, const at::Tensor &w,
                                const std::vector<at::Tensor> &like)
{
    if (L.kind == lora_kind::plain)
        return {w.to(like[0].scalar_type())};
    const at::ScalarType sdt = like[1].scalar_type();
    if (L.kind == lora_kind::int8) {
        at::Tensor s = quant_scales(w.abs().amax({1}), 127.0, sdt);
        at::Tensor q = at::clamp(at::round(w / s.to(at::kFloat).unsqueeze(1)), -127, 127);
        return {q.to(at::kChar), s};
    }
    if (L.kind == lora_kind::fp8) {
#ifdef SHIM_HAS_FP8
        at::Tensor s = quant_scales(w.abs().amax({1}), 448.0, sdt);
        at::Tensor q = at::clamp(w / s.to(at::kFloat).unsqueeze(1), -448.0, 448.0);
        return {q.to(at::kFloat8_e4m3fn), s};
#else
        throw std::runtime_error("fp8 layer on a libtorch without float8");
#endif
    }
    const int64_t groups = like[1].size(1);
    at::Tensor wg = w.view({L.out, groups, L.in / groups});
    at::Tensor s = quant_scales(wg.abs().amax({2}), 7.0, sdt);
    at::Tensor c = at::clamp(at::round(wg / s.to(at::kFloat).unsqueeze(2)), -7, 7);
    c = (c.to(at::kShort) + 8).view({L.out, L.in}).to(at::kByte);
    at::Tensor lo = c.slice(1, 0, L.in, 2), hi = c.slice(1, 1, L.in, 2);
    return {at::bitwise_or(lo, at::bitwise_left_shift(hi, 4)), s};
}

// Before weights change under stream: no block copy may stay on the device (the next fetch
// must copy the patched host tensors) and no copy from the host blocks may be in flight.
void lora_quiesce(shim_model *m)
{
    if (m->placement == SHIM_PLACE_STREAM)
        evict_all(m);
    if (m->device.is_cuda())
        torch::cuda::synchronize(m->device.index());
}

// Writes dequant(original) + the staged deltas into L's tensors; saves the originals first.
void patch_layer(shim_model *m, shim_lora_layer &L)
{
    std::vector<at::Tensor> cur = layer_tensors(L);
    const bool fresh = L.saved.empty();
    if (fresh) {
        std::vector<at::Tensor> saved;
        for (const auto &t : cur)
            saved.push_back(t.to(at::kCPU, t.scalar_type(), false, /*copy=*/true));
        L.saved = std::move(saved);
    }
    const c10::Device dev = m->device;
    // the current tensors are the originals unless an earlier commit patched them (using
    // them spares a host -> device copy)
    at::Tensor w = dequant(L, fresh ? cur : L.saved, dev);
    for (const shim_lora_delta &d : L.staged) {
        auto f32 = at::TensorOptions().dtype(at::kFloat);
        at::Tensor up = at::from_blob(const_cast<float *>(d.up), {d.rows, d.rank}, f32).to(dev);
        at::Tensor down = at::from_blob(const_cast<float *>(d.down), {d.rank, d.in}, f32).to(dev);
        at::Tensor delta = at::mm(up, down).mul_(d.scale);
        if (d.swap) {
            const int64_t h = d.rows / 2;
            delta = at::cat({delta.slice(0, h, d.rows), delta.slice(0, 0, h)}, 0);
        }
        w.slice(0, d.row0, d.row0 + d.rows).add_(delta);
    }
    std::vector<at::Tensor> next = requant(L, w, cur);
    for (size_t i = 0; i < cur.size(); i++)
        cur[i].copy_(next[i]);
    L.staged.clear();
}

// Copies every saved original back and drops it; staged deltas stay.
void restore_all(shim_model *m)
{
    lora_quiesce(m);
    for (auto it = m->lora.begin(); it != m->lora.end();) {
        shim_lora_layer &L = it->second;
        if (!L.saved.empty()) {
            std::vector<at::Tensor> cur = layer_tensors(L);
            for (size_t i = 0; i < cur.size(); i++)
                cur[i].copy_(L.saved[i]);
            L.saved.clear();
        }
        it = L.staged.empty() ? m->lora.erase(it) : std::next(it);
    }
}

// Drops the staged deltas, and the layers that are then neither staged nor patched.
void discard_staged(shim_model *m)
{
    for (auto it = m->lora.begin(); it != m->lora.end();) {
        it->second.staged.clear();
        it = it->second.saved.empty() ? m->lora.erase(it) : std::next(it);
    }
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
        /* the value comes from C, where any int fits the enum: read it as an int first (in
         * C++ an out-of-range enum value is undefined) */
        int place_raw = 0;
        static_assert(sizeof(place_raw) == sizeof(p->placement), "shim_placement is an int");
        std::memcpy(&place_raw, &p->placement, sizeof(place_raw));
        if (place_raw != SHIM_PLACE_RESIDENT && place_raw != SHIM_PLACE_ENCODERS_OFFLOAD &&
            place_raw != SHIM_PLACE_STREAM)
            return invalid(msg, msg_len, "unknown placement");
        const shim_placement placement = static_cast<shim_placement>(place_raw);
        use_device(dev);
        auto *m = new shim_model();
        m->device = dev;
        m->device_name = dev.str();
        m->placement = placement;
        m->enc_device = placement == SHIM_PLACE_RESIDENT ? dev : c10::Device(c10::kCPU);
        const c10::Device tr_dev = placement == SHIM_PLACE_STREAM ? c10::Device(c10::kCPU) : dev;
        shim_status st = load_module("clip", p->clip_path, m->enc_device, m->clip, msg, msg_len);
        if (st == SHIM_OK)
            st = load_module("t5", p->t5_path, m->enc_device, m->t5, msg, msg_len);
        if (st == SHIM_OK)
            st = load_module("transformer", p->transformer_path, tr_dev, m->transformer, msg,
                             msg_len);
        if (st == SHIM_OK)
            st = load_module("ae", p->ae_path, dev, m->ae, msg, msg_len);
        if (st == SHIM_OK && placement == SHIM_PLACE_STREAM)
            st = setup_stream(m, msg, msg_len);
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

int shim_model_placement(const shim_model *m)
{
    return m ? static_cast<int>(m->placement) : 0;
}

size_t shim_stream_log(const shim_model *m, char *buf, size_t len)
{
    if (m == nullptr) {
        if (buf && len)
            buf[0] = '\0';
        return 0;
    }
    const std::string &s = m->stream_log;
    size_t n = s.empty() ? 0 : s.size() - 1; // without the trailing space
    if (buf && len) {
        size_t k = n < len - 1 ? n : len - 1;
        std::memcpy(buf, s.data(), k);
        buf[k] = '\0';
    }
    return n;
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
    return guard(msg, msg_len, [&]() -> shim_status {
        return wrap(run(m->clip, {ids->t.to(m->enc_device)}).to(m->device), out);
    });
}

shim_status shim_run_t5(shim_model *m, const shim_tensor *ids, shim_tensor **out, char *msg,
                        size_t msg_len)
{
    if (out == nullptr)
        return invalid(msg, msg_len, "no output handle");
    *out = nullptr;
    if (m == nullptr || ids == nullptr || ids->t.scalar_type() != at::kLong)
        return invalid(msg, msg_len, "run_t5: expected int64 ids");
    return guard(msg, msg_len, [&]() -> shim_status {
        return wrap(run(m->t5, {ids->t.to(m->enc_device)}).to(m->device), out);
    });
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
        std::vector<c10::IValue> args{img->t,       img_ids->t, txt->t,     txt_ids->t,
                                      timesteps->t, y->t,       guidance->t};
        if (m->placement == SHIM_PLACE_STREAM)
            return wrap(run_streamed(m, std::move(args)), out);
        return wrap(run(m->transformer, std::move(args)), out);
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

shim_status shim_lora_stage(shim_model *m, const struct shim_lora_delta *d, char *msg,
                            size_t msg_len)
{
    if (m == nullptr || d == nullptr || d->layer == nullptr || d->up == nullptr ||
        d->down == nullptr)
        return invalid(msg, msg_len, "lora_stage: bad arguments");
    int part = 0; // from C: read as an int before it is an enum (shim_model_load says why)
    static_assert(sizeof(part) == sizeof(d->part), "shim_part is an int");
    std::memcpy(&part, &d->part, sizeof(part));
    if (part != SHIM_PART_TRANSFORMER && part != SHIM_PART_CLIP && part != SHIM_PART_T5)
        return invalid(msg, msg_len, "lora_stage: unknown part");
    const std::string layer = d->layer;
    if (d->rank <= 0 || d->rows <= 0 || d->row0 < 0 || d->row0 > d->out - d->rows ||
        (d->swap && d->rows % 2 != 0))
        return invalid(msg, msg_len,
                       "lora_stage: '" + layer + "': bad rows or rank (row0 " +
                           std::to_string(d->row0) + ", rows " + std::to_string(d->rows) +
                           ", rank " + std::to_string(d->rank) + ")");
    return guard(msg, msg_len, [&]() -> shim_status {
        auto key = std::make_pair(part, layer);
        auto it = m->lora.find(key);
        if (it == m->lora.end()) {
            shim_lora_layer L;
            std::string why = find_layer(part_module(m, part), layer, L);
            if (!why.empty())
                return invalid(msg, msg_len,
                               std::string("layer '") + layer + "' of " + part_file(part) + ": " +
                                   why);
            it = m->lora.emplace(key, std::move(L)).first;
        }
        shim_lora_layer &L = it->second;
        if (L.out != d->out || L.in != d->in) {
            std::string got = std::to_string(L.out) + " x " + std::to_string(L.in);
            if (L.staged.empty() && L.saved.empty())
                m->lora.erase(it);
            return invalid(msg, msg_len,
                           std::string("layer '") + layer + "' of " + part_file(part) + " is " +
                               got + ", the delta is for " + std::to_string(d->out) + " x " +
                               std::to_string(d->in));
        }
        L.staged.push_back(*d);
        L.staged.back().layer = nullptr; // the map's key holds the name
        return SHIM_OK;
    });
}

shim_status shim_lora_commit(shim_model *m, char *msg, size_t msg_len)
{
    if (m == nullptr)
        return invalid(msg, msg_len, "no model");
    return guard(msg, msg_len, [&]() -> shim_status {
        bool any = false;
        for (const auto &kv : m->lora)
            any = any || !kv.second.staged.empty();
        if (!any)
            return SHIM_OK;
        try {
            lora_quiesce(m);
            for (auto &kv : m->lora)
                if (!kv.second.staged.empty())
                    patch_layer(m, kv.second);
        } catch (...) {
            // no half-patched model: everything back to the originals
            try {
                restore_all(m);
            } catch (...) {
            }
            discard_staged(m);
            throw;
        }
        return SHIM_OK;
    });
}

shim_status shim_lora_restore(shim_model *m, char *msg, size_t msg_len)
{
    if (m == nullptr)
        return invalid(msg, msg_len, "no model");
    return guard(msg, msg_len, [&]() -> shim_status {
        if (m->lora.empty())
            return SHIM_OK;
        restore_all(m);
        return SHIM_OK;
    });
}

void shim_lora_discard(shim_model *m)
{
    if (m != nullptr)
        discard_staged(m);
}

void shim_lora_stats(const shim_model *m, struct shim_lora_stats *s)
{
    if (s == nullptr)
        return;
    std::memset(s, 0, sizeof(*s));
    if (m == nullptr)
        return;
    for (const auto &kv : m->lora) {
        const shim_lora_layer &L = kv.second;
        s->staged_deltas += static_cast<int64_t>(L.staged.size());
        s->staged_layers += L.staged.empty() ? 0 : 1;
        s->patched_layers += L.saved.empty() ? 0 : 1;
        for (const auto &t : L.saved)
            s->saved_bytes += static_cast<int64_t>(t.numel() * t.element_size());
    }
}

} // extern "C"
