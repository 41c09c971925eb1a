"""Read a legacy (pre-zip) PyTorch checkpoint into numpy arrays, without torch.

The file is a sequence of pickles (magic number, protocol, system info, the state dict
with storages as persistent ids, the storage keys) followed by each storage's raw bytes.
The unpickler refuses every class but the few a state dict of tensors uses, so a
checkpoint cannot run code when it is read.
"""
from __future__ import annotations

import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a legacy PyTorch state dict this reader accepts."""


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: type


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, name: str):
        self.dtype = STORAGE_DTYPES[name]


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        return _StorageRef(str(key), storage_type.dtype)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a legacy PyTorch ``state_dict`` file, as numpy arrays by name."""
    with open(path, "rb") as f:
        # every pickle of the file, the header's too, goes through the class-refusing reader
        try:
            magic = _SafeUnpickler(f).load()
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
        except Exception as err:
            raise CheckpointError(f"{path}: not a legacy PyTorch checkpoint ({err})") from None
        if magic != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a legacy PyTorch checkpoint (bad magic number)")
        _SafeUnpickler(f).load()  # protocol version
        _SafeUnpickler(f).load()  # system info (endianness, type sizes)
        state = _SafeUnpickler(f).load()
        keys = _SafeUnpickler(f).load()
        buffers = {}
        dtypes = {ref.storage.key: ref.storage.dtype for ref in state.values()}
        for key in keys:
            count = int.from_bytes(f.read(8), "little")
            dtype = np.dtype(dtypes.get(str(key), np.uint8))
            buffers[str(key)] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    arrays = {}
    for name, ref in state.items():
        flat = buffers[ref.storage.key]
        itemsize = flat.dtype.itemsize
        arrays[name] = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.size, strides=[s * itemsize for s in ref.stride]).copy()
    return arrays
