"""Read and write ``torch.save``d state dicts without torch.

A checkpoint written by ``torch.save(state_dict, path)`` is an uncompressed zip: ``<prefix>/data.pkl`` (a
pickle of the ``OrderedDict``), ``<prefix>/data/<key>`` (one raw little-endian buffer per storage),
``<prefix>/byteorder`` and ``<prefix>/version``. The pickle builds each tensor with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``, the storage
being a persistent id ``('storage', torch.<Dtype>Storage, key, location, numel)``.

`load_state_dict` unpickles with a restricted unpickler: only those rebuild functions, ``OrderedDict`` and the
storage/dtype names resolve (to local stand-ins); any other global is refused, so a checkpoint cannot run code.
`save_state_dict` writes the same layout, opcode by opcode, so that ``torch.load(path, weights_only=True)``
reads it back.
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle
import struct
import zipfile
import zlib

import ml_dtypes
import numpy as np

# torch storage class names <-> numpy dtypes (the storage's element type)
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_STORAGE_NAMES = {v: k for k, v in STORAGE_DTYPES.items()}
_TORCH_DTYPES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}


class _Storage:
    """A storage class named in a pickle (``torch.FloatStorage``): only its element type matters."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """A numpy view of ``storage`` (a flat array) with torch's offset/size/stride (in elements), copied."""
    size, stride = tuple(size), tuple(stride)
    itemsize = storage.dtype.itemsize
    need = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if need > storage.size:
        raise ValueError(f"tensor of size {size} at offset {offset} does not fit its storage of {storage.size}")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a state dict needs; storages come from the zip via ``persistent_load``."""

    def __init__(self, data: bytes, read_record, byteorder: str, source: str):
        super().__init__(io.BytesIO(data))
        self._read, self._byteorder, self._source, self._cache = read_record, byteorder, source, {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage, key, _location, numel = pid
        if key not in self._cache:
            raw = self._read(f"data/{key}")
            dtype = storage.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
            if len(raw) < numel * dtype.itemsize:
                raise ValueError(f"storage {key} holds {len(raw)} bytes, expected {numel * dtype.itemsize}")
            self._cache[key] = np.frombuffer(raw, dtype, count=numel).astype(storage.dtype)
        return self._cache[key]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save``d state dict as numpy arrays (name -> array), without torch.

    Raises OSError naming the file when it is not a readable torch zip checkpoint (missing, truncated, corrupt,
    or the pre-1.6 legacy format), and ValueError when the pickle holds anything but tensors.
    """
    path = pathlib.Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pkl:
                raise OSError(f"{str(path)!r} has no <prefix>/data.pkl: not a torch.save checkpoint")
            prefix = pkl[0][: -len("data.pkl")]
            byteorder = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names \
                else "little"
            obj = _RestrictedUnpickler(zf.read(pkl[0]), lambda rec: zf.read(prefix + rec), byteorder,
                                       str(path)).load()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, struct.error, zlib.error) as exc:
        raise OSError(f"cannot read torch checkpoint {str(path)!r}: truncated or corrupt, or not the zip format "
                      f"of torch.save ({type(exc).__name__}: {exc})") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"torch checkpoint {str(path)!r} is not a plain state dict of tensors: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray)
                                            for k, v in obj.items()):
        raise ValueError(f"torch checkpoint {str(path)!r} is not a state dict (name -> tensor)")
    return dict(obj)


# ---------------------------------------------------------------------------------------------------------------
# Writing: a protocol-2 pickle assembled from opcodes (no torch objects needed to name torch's functions).


class _Ops:
    """Pickle opcodes for the handful of value kinds a state dict uses."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def glob(self, module: str, name: str):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def str(self, s: str):
        b = s.encode()
        self.out += b"X" + struct.pack("<I", len(b)) + b

    def int(self, n: int):
        if 0 <= n < 256:
            self.out += b"K" + bytes([n])
        elif 0 <= n < 65536:
            self.out += b"M" + struct.pack("<H", n)
        elif -(2**31) <= n < 2**31:
            self.out += b"J" + struct.pack("<i", n)
        else:
            b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(b)]) + b

    def tuple(self, items, put):
        self.out += b"("
        for x in items:
            put(x)
        self.out += b"t"

    def empty_ordered_dict(self):
        self.glob("collections", "OrderedDict")
        self.out += b")R"


def _pickle_state_dict(entries: list[tuple[str, str, np.ndarray]]) -> bytes:
    """Pickle ``[(name, storage key, array)]`` as torch's OrderedDict of ``_rebuild_tensor_v2`` calls."""
    ops = _Ops()
    ops.empty_ordered_dict()
    ops.out += b"("  # MARK for SETITEMS
    for name, key, arr in entries:
        ops.str(name)
        ops.glob("torch._utils", "_rebuild_tensor_v2")
        ops.out += b"("  # args tuple
        ops.out += b"("  # persistent id tuple
        ops.str("storage")
        ops.glob("torch", _STORAGE_NAMES[arr.dtype])
        ops.str(key)
        ops.str("cpu")
        ops.int(arr.size)
        ops.out += b"tQ"  # TUPLE, BINPERSID
        ops.int(0)
        ops.tuple(arr.shape, ops.int)
        strides = [s // arr.itemsize for s in np.ascontiguousarray(arr).strides] if arr.ndim else []
        ops.tuple(strides, ops.int)
        ops.out += b"\x89"  # NEWFALSE: requires_grad
        ops.empty_ordered_dict()  # backward hooks
        ops.out += b"tR"  # TUPLE, REDUCE
    ops.out += b"u."  # SETITEMS, STOP
    return bytes(ops.out)


def save_state_dict(tensors: dict[str, np.ndarray], path: str | os.PathLike,
                    shared: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> array, C order) as a ``torch.save`` zip readable by ``torch.load``.

    ``shared`` maps a name to another name whose storage it reuses (tied weights, as torch saves them). The file
    is written to a temporary name beside ``path`` and renamed, so a failure leaves nothing half-written.
    """
    path = pathlib.Path(path)
    shared = shared or {}
    keys: dict[str, str] = {}
    entries, blobs = [], []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _STORAGE_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {arr.dtype}, which a torch storage cannot hold")
        if name in shared and shared[name] in keys:
            keys[name] = keys[shared[name]]
        else:
            keys[name] = str(len(blobs))
            blobs.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
        entries.append((name, keys[name], arr))
    prefix = path.stem or "archive"
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{prefix}/data.pkl", _pickle_state_dict(entries))
            zf.writestr(f"{prefix}/byteorder", "little")
            for i, blob in enumerate(blobs):
                zf.writestr(f"{prefix}/data/{i}", blob)
            zf.writestr(f"{prefix}/version", "3\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
