"""safetensors read/write with struct + json + numpy only (Debian has no
`safetensors` package): u64 little-endian header length n, n bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
then the raw little-endian tensor bytes. Independent of m6train's C++ reader,
so the reference test also checks the file format from the other side."""

import json
import struct
from collections import OrderedDict

import numpy as np

# dtype name -> numpy dtype (BF16 has no numpy type: it is read as uint16 and
# widened to float32 by shifting into the high half).
_NP = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
}
_FROM_NP = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
            np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint16): "U16",
            np.dtype(np.uint8): "U8"}


class SafetensorsError(Exception):
    pass


def read_safetensors(path):
    """Returns (OrderedDict name -> numpy array in data order, metadata dict).
    BF16 tensors come back as float32. Validates the layout like the C++ reader:
    offsets inside the data, matching shape x dtype size, tiling it exactly."""
    with open(path, "rb") as f:
        raw = f.read()

    def fail(msg):
        raise SafetensorsError(f"{path}: {msg}")

    if len(raw) < 8:
        fail(f"file size {len(raw)} is smaller than the 8-byte header length")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        fail(f"header length {n} exceeds file size {len(raw)}")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as e:
        fail(f"header is not valid JSON: {e}")
    if not isinstance(header, dict):
        fail("header is not a JSON object")
    data = raw[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        fail("__metadata__ must map strings to strings")
    spans = []
    for name, e in header.items():
        dt = e.get("dtype")
        if dt not in _NP:
            fail(f"tensor '{name}' has unknown dtype '{dt}'")
        shape = e["shape"]
        if any((not isinstance(d, int)) or d < 0 for d in shape):
            fail(f"tensor '{name}' shape {shape} must hold non-negative integers")
        b, end = e["data_offsets"]
        want = int(np.prod(shape, dtype=np.int64)) * _NP[dt].itemsize
        if not 0 <= b <= end <= len(data):
            fail(f"tensor '{name}' data_offsets [{b},{end}] outside the data size {len(data)}")
        if end - b != want:
            fail(f"tensor '{name}' data_offsets [{b},{end}] do not match shape {shape} x {dt} = {want} bytes")
        spans.append((b, end, name))
    spans.sort(key=lambda s: s[0])
    covered = 0
    for b, end, name in spans:
        if b != covered:
            fail(f"tensor '{name}' starts at {b} but the previous tensor ends at {covered}")
        covered = end
    if covered != len(data):
        fail(f"tensors cover {covered} bytes but the data area holds {len(data)} bytes")

    out = OrderedDict()
    for b, end, name in spans:
        e = header[name]
        arr = np.frombuffer(data, dtype=_NP[e["dtype"]], count=(end - b) // _NP[e["dtype"]].itemsize, offset=b)
        if e["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.reshape(e["shape"]).copy()
    return out, dict(metadata)


def _no_duplicates(pairs):
    d = OrderedDict()
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key '{k}'")
        d[k] = v
    return d


def write_safetensors(path, tensors, metadata=None):
    """tensors: iterable of (name, numpy array) or a mapping; written in order,
    header padded with spaces to a multiple of 8 bytes."""
    items = list(tensors.items()) if hasattr(tensors, "items") else list(tensors)
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name, arr in items:
        if name in header:
            raise SafetensorsError(f"{path}: duplicate tensor name '{name}'")
        arr = np.asarray(arr)  # (np.ascontiguousarray would turn a 0-d array into shape [1])
        dt = _FROM_NP.get(arr.dtype)
        if dt is None:
            raise SafetensorsError(f"{path}: tensor '{name}' has unsupported numpy dtype {arr.dtype}")
        blob = arr.astype(_NP[dt], copy=False).tobytes(order="C")
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
