"""safetensors files without the safetensors package.

Format: 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then the
data region; offsets are relative to the start of the data region.

Reading maps the file (copy-on-write, so tensors can be views without a second copy in memory)
and validates every header entry before any tensor is used: known dtype, non-negative shape,
offsets inside the file, size = numel * itemsize, no overlapping tensors.
"""

import json
import mmap
import os
import struct

import torch

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("F32", "F16", "BF16")
MAX_HEADER = 100 << 20


class CheckpointError(Exception):
    """A checkpoint file or folder is unreadable, inconsistent or not what was expected."""


def _itemsize(dtype):
    return torch.empty((), dtype=dtype).element_size()


class SafeTensorsFile:
    """One validated safetensors file. keys() lists tensor names; get(name) returns a CPU
    tensor that views the mapped file (read it, do not write it). Keep the object alive
    while its tensors are used (they keep the mapping alive too)."""

    def __init__(self, path):
        self.path = path
        try:
            size = os.path.getsize(path)
            f = open(path, "rb")
        except OSError as e:
            raise CheckpointError(f"cannot open '{path}': {e.strerror}") from None
        with f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"'{path}': truncated: {size} bytes, no safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n + 8 > size:
                raise CheckpointError(f"'{path}': header length {n} does not fit a file of "
                                      f"{size} bytes (truncated or not safetensors)")
            raw = f.read(n)
            try:
                header = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"'{path}': header is not valid JSON: {e}") from None
            if not isinstance(header, dict):
                raise CheckpointError(f"'{path}': header is not a JSON object")
            self.metadata = header.pop("__metadata__", None) or {}
            self.data_start = 8 + n
            data_len = size - self.data_start
            self.entries = {}
            spans = []
            for name, e in header.items():
                self.entries[name] = self._check_entry(name, e, data_len)
                b, end = self.entries[name][2]
                if end > b:
                    spans.append((b, end, name))
            spans.sort()
            for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
                if b1 < e0:
                    raise CheckpointError(f"'{path}': tensors '{n0}' and '{n1}' overlap")
            self._map = None
            if size > self.data_start:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def _check_entry(self, name, e, data_len):
        where = f"'{self.path}': tensor '{name}'"
        if not isinstance(e, dict):
            raise CheckpointError(f"{where}: header entry is not an object")
        dt = e.get("dtype")
        if dt not in DTYPES:
            raise CheckpointError(f"{where}: unsupported dtype {dt!r}")
        shape = e.get("shape")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise CheckpointError(f"{where}: bad shape {shape!r}")
        offs = e.get("data_offsets")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise CheckpointError(f"{where}: bad data_offsets {offs!r}")
        begin, end = offs
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * _itemsize(DTYPES[dt])
        if not 0 <= begin <= end:
            raise CheckpointError(f"{where}: bad data_offsets {offs!r}")
        if end - begin != nbytes:
            raise CheckpointError(f"{where}: header says {end - begin} bytes but {dt} {shape} "
                                  f"needs {nbytes}")
        if end > data_len:
            raise CheckpointError(f"{where}: data ends at byte {end} but the file holds "
                                  f"{data_len} data bytes (truncated?)")
        return dt, tuple(shape), (begin, end)

    def keys(self):
        return list(self.entries)

    def dtype_name(self, name):
        return self.entries[name][0]

    def shape(self, name):
        return self.entries[name][1]

    def get(self, name):
        dt, shape, (begin, end) = self.entries[name]
        dtype = DTYPES[dt]
        numel = (end - begin) // _itemsize(dtype)
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        off = self.data_start + begin
        if off % _itemsize(dtype) == 0:
            t = torch.frombuffer(self._map, dtype=dtype, count=numel, offset=off)
        else:  # unaligned: copy this one tensor
            t = torch.frombuffer(bytearray(self._map[off:off + end - begin]), dtype=dtype)
        return t.reshape(shape)


def _tensor_bytes(t):
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write(path, tensors, metadata=None):
    """Writes a dict name -> tensor as a safetensors file (names sorted, header padded to 8)."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor '{name}': dtype {t.dtype} cannot be stored")
        b = _tensor_bytes(t)
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
