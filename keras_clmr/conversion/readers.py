"""Read PyTorch checkpoints without torch and without running pickled code.

The official CLMR/PEMR weights are ``torch.save`` files: the zip serialization (PyTorch >= 1.6:
``<root>/data.pkl`` + ``<root>/data/<key>`` storages), the older "legacy" stream (a magic number,
then pickles, then the raw storages) and Lightning ``.ckpt`` files (either of those, holding a
dict whose ``state_dict`` entry has the weights). Release zips (CLMR 2.0) wrap one such file.

A pickle can name any importable callable; this reader's unpickler resolves only the few
globals a state dict needs (OrderedDict, torch's tensor/parameter rebuild functions, storage
classes, dtypes, ``torch.Size``, argparse/Lightning hyper-parameter containers read as plain
dicts, numeric numpy scalars) to inert local stand-ins, and rebuilds every tensor as a numpy
array from its storage bytes (offset, size, stride, dtype, byte order). Anything else raises
:class:`UnsafeCheckpointError` before it could run. Sizes are capped before data is read.
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from keras_clmr.conversion.common import ConversionError, UnsafeCheckpointError

DEFAULT_MAX_BYTES = 2 * 1024**3  # refuse checkpoints (or archives) that unpack to more than 2 GiB
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")

# torch dtype name -> numpy dtype (little-endian). bfloat16 has no numpy type: read as uint16 bits
# and widened exactly to float32.
_DTYPES = {
    "float64": "<f8",
    "double": "<f8",
    "float32": "<f4",
    "float": "<f4",
    "float16": "<f2",
    "half": "<f2",
    "bfloat16": "bfloat16",
    "int64": "<i8",
    "long": "<i8",
    "int32": "<i4",
    "int": "<i4",
    "int16": "<i2",
    "short": "<i2",
    "int8": "|i1",
    "uint8": "|u1",
    "bool": "|b1",
    "complex64": "<c8",
    "cfloat": "<c8",
    "complex128": "<c16",
    "cdouble": "<c16",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
}
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
_HPARAM_CONTAINERS = {
    ("argparse", "Namespace"),
    ("pytorch_lightning.utilities.parsing", "AttributeDict"),
    ("lightning.pytorch.utilities.parsing", "AttributeDict"),
    ("lightning_fabric.utilities.data", "AttributeDict"),
    ("lightning.fabric.utilities.data", "AttributeDict"),
}


class CheckpointSizeError(ConversionError):
    """The checkpoint (or the archive holding it) unpacks to more than the configured limit."""


class NotACheckpointError(ConversionError):
    """The file is not a PyTorch checkpoint at all (a text/HTML page, a truncated download...)."""


# ---- inert stand-ins the unpickler hands out instead of torch objects ----


class TorchDtype:
    """A torch dtype named in a pickle (e.g. ``torch.float32``), with its numpy equivalent."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"torch.{self.name}"

    def __eq__(self, other):
        return isinstance(other, TorchDtype) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """Raw bytes of one storage plus the dtype it was saved with."""

    def __init__(self, data, dtype):
        self.data = data  # bytes-like
        self.dtype = dtype


class HyperParameters(dict):
    """argparse.Namespace / Lightning AttributeDict read as a plain dict (no code imported)."""

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if state:
            if not isinstance(state, dict):
                raise UnsafeCheckpointError(
                    f"Unexpected hyper-parameter state of type {type(state).__name__}."
                )
            self.update(state)


def _numpy_dtype(torch_dtype_name):
    spec = _DTYPES.get(torch_dtype_name)
    if spec is None:
        raise ConversionError(
            f"Tensor dtype torch.{torch_dtype_name} is not supported by the torch-free reader; "
            f"`pip install torch` and convert with it, or re-save the weights as float32."
        )
    return spec


def _as_int_tuple(values, what):
    if not isinstance(values, (tuple, list)) or not all(
        isinstance(v, int) and v >= 0 for v in values
    ):
        raise UnsafeCheckpointError(f"Malformed tensor {what}: {values!r}.")
    return tuple(values)


def _tensor_from_storage(storage, offset, size, stride, dtype_name=None, big_endian=False):
    """A numpy copy of the tensor view (offset, size, stride in elements) of ``storage``."""
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("A tensor rebuild received something other than a storage.")
    dtype_name = dtype_name or storage.dtype
    spec = _numpy_dtype(dtype_name)
    bfloat16 = spec == "bfloat16"
    element = np.dtype("<u2" if bfloat16 else spec)
    if big_endian:
        element = element.newbyteorder(">")
    if not isinstance(offset, int) or offset < 0:
        raise UnsafeCheckpointError(f"Malformed tensor storage offset: {offset!r}.")
    size = _as_int_tuple(size, "size")
    stride = _as_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise UnsafeCheckpointError(f"Tensor size {size} and stride {stride} differ in length.")
    count = len(storage.data) // element.itemsize
    flat = np.frombuffer(storage.data, dtype=element, count=count)
    if 0 in size:
        array = np.zeros(size, dtype=element)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= count:
            raise ConversionError(
                f"Tensor view (offset {offset}, size {list(size)}, stride {list(stride)}) "
                f"reaches past its storage of {count} elements: the checkpoint is truncated "
                "or corrupt; download it again."
            )
        array = np.lib.stride_tricks.as_strided(
            flat[offset:],
            shape=size,
            strides=tuple(s * element.itemsize for s in stride),
            writeable=False,
        )
    array = np.array(array, dtype=element.newbyteorder("="), copy=True)
    if bfloat16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _load_build(unpickler):
    """BUILD (set an object's state) only on the containers this reader creates itself."""
    state = unpickler.stack.pop()
    target = unpickler.stack[-1]
    if isinstance(target, HyperParameters):
        target.__setstate__(state)
    elif isinstance(target, collections.OrderedDict) and isinstance(state, dict):
        pass  # torch's state dicts carry ``_metadata`` (module versions) here: not needed
    elif isinstance(target, np.dtype) and isinstance(state, tuple) and len(state) > 1:
        # numpy pickles a dtype's byte order here; a native little-endian one changes nothing.
        if state[1] not in ("<", "|", "=") or np.dtype("=i2").byteorder not in ("=", "<"):
            raise ConversionError(f"Unsupported numpy dtype state {state[:2]!r} (big-endian).")
    else:
        raise UnsafeCheckpointError(
            f"Refused to set the state of a {type(target).__name__} (only "
            "plain containers are rebuilt)."
        )


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only a state dict's globals; storages come from ``load_storage(key, dtype, numel)``.

    The pure-Python unpickler is used so that BUILD can be limited to our own containers too.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(
        self, stream, load_storage, big_endian=False, source="checkpoint", build_tensors=True
    ):
        super().__init__(stream, encoding="utf-8")
        self._load_storage = load_storage
        self._build_tensors = build_tensors
        self._big_endian = big_endian
        self._source = source

    def _rebuild_tensor_v2(
        self, storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
    ):
        self._check_hooks(backward_hooks)
        return self._tensor(storage, offset, size, stride)

    def _rebuild_tensor_v3(
        self, storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
    ):
        self._check_hooks(backward_hooks)
        if not isinstance(dtype, TorchDtype):
            raise UnsafeCheckpointError(
                f"{self._source}: tensor dtype {dtype!r} is not a torch dtype."
            )
        return self._tensor(storage, offset, size, stride, dtype.name)

    def _rebuild_tensor(self, storage, offset, size, stride):
        return self._tensor(storage, offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad=False, backward_hooks=None, state=None):
        self._check_hooks(backward_hooks)
        if not isinstance(data, np.ndarray):
            raise UnsafeCheckpointError(
                f"{self._source}: a Parameter wraps a {type(data).__name__}, not a tensor."
            )
        return data

    def _rebuild_from_type_v2(self, func, new_type, args, state):
        if func not in self._rebuilders or new_type not in ("Tensor", "Parameter"):
            raise UnsafeCheckpointError(
                f"{self._source}: refused tensor subclass rebuild ({new_type!r})."
            )
        return func(*args)

    def _tensor(self, storage, offset, size, stride, dtype_name=None):
        if not self._build_tensors:  # first pass over a legacy file: storages not read yet
            return np.zeros(0)
        return _tensor_from_storage(
            storage, offset, size, stride, dtype_name, big_endian=self._big_endian
        )

    def _check_hooks(self, hooks):
        if hooks:
            raise UnsafeCheckpointError(
                f"{self._source}: a tensor carries backward hooks (code); refused."
            )

    @property
    def _rebuilders(self):
        return (
            self._rebuild_tensor_v2,
            self._rebuild_tensor_v3,
            self._rebuild_tensor,
            self._rebuild_parameter,
        )

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils":
            functions = {
                "_rebuild_tensor_v2": self._rebuild_tensor_v2,
                "_rebuild_tensor_v3": self._rebuild_tensor_v3,
                "_rebuild_tensor": self._rebuild_tensor,
                "_rebuild_parameter": self._rebuild_parameter,
                "_rebuild_parameter_with_state": self._rebuild_parameter,
            }
            if name in functions:
                return functions[name]
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return self._rebuild_from_type_v2
        if module == "torch" and name in ("Tensor",):
            return "Tensor"
        if module == "torch.nn.parameter" and name == "Parameter":
            return "Parameter"
        if module == "torch" and name == "Size":
            return _size
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _DTYPES:
            return TorchDtype(name)
        if (module, name) in _HPARAM_CONTAINERS:
            return HyperParameters
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _numpy_scalar
        if module == "numpy" and name == "dtype":
            return _numpy_dtype_from_pickle
        if module == "_codecs" and name == "encode":
            return _latin1_bytes
        raise UnsafeCheckpointError(
            f"Refused to load {self._source}: its pickle references {module}.{name}, which a "
            "state dict never needs; loading it could run arbitrary code. If you trust the file, "
            "re-save just its weights in an isolated environment "
            "(torch.save(ckpt['state_dict'], 'clean.pt')) and convert that."
        )

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id:
            raise UnsafeCheckpointError(f"{self._source}: malformed persistent id {saved_id!r}.")
        kind = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind != "storage":
            raise UnsafeCheckpointError(
                f"{self._source}: refused persistent object of kind {kind!r}."
            )
        if len(saved_id) == 5:  # zip format: (storage, type, key, location, numel)
            _, storage_type, key, _location, numel = saved_id
            view = None
        elif (
            len(saved_id) == 6
        ):  # legacy: (storage, type, root key, location, numel, view metadata)
            _, storage_type, key, _location, numel, view = saved_id
        else:
            raise UnsafeCheckpointError(f"{self._source}: malformed storage id {saved_id!r}.")
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise UnsafeCheckpointError(f"{self._source}: malformed storage id {saved_id!r}.")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        storage = self._load_storage(key, storage_type.dtype, numel)
        if view is not None and self._build_tensors:
            view_key, view_offset, view_numel = view
            item = _element_size(storage_type.dtype)
            start, stop = view_offset * item, (view_offset + view_numel) * item
            if start < 0 or stop > len(storage.data):
                raise ConversionError(
                    f"{self._source}: a storage view lies outside its storage (corrupt file)."
                )
            storage = _Storage(memoryview(storage.data)[start:stop], storage.dtype)
        return storage


def _size(items=()):
    return tuple(items)


def _numpy_dtype_from_pickle(spec, align=False, copy=True):
    dtype = np.dtype(spec)
    if dtype.kind not in "biufc":
        raise UnsafeCheckpointError(f"Refused numpy dtype {spec!r} (only plain numbers are read).")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise UnsafeCheckpointError("Refused a numpy scalar that is not a plain number.")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _latin1_bytes(text, encoding="latin1"):
    """Protocol-2 pickles write bytes as ``_codecs.encode(str, "latin1")``; nothing else passes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("Refused a _codecs.encode call that is not latin-1 bytes.")
    return text.encode("latin1")


def _element_size(dtype_name):
    spec = _numpy_dtype(dtype_name)
    return 2 if spec == "bfloat16" else np.dtype(spec).itemsize


def _check_size(total, limit, source, what="unpacks to"):
    if total > limit:
        raise CheckpointSizeError(
            f"{source} {what} {total:,} bytes, more than the limit of {limit:,} bytes; refused "
            "(a corrupt or hostile file, or a much larger model than expected). Raise max_bytes "
            "if you trust it."
        )


# ---- the two torch.save formats ----


def _read_member(archive, info, limit, source):
    _check_size(info.file_size, limit, f"{source}:{info.filename}", "declares")
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    _check_size(len(data), limit, f"{source}:{info.filename}")
    return data


def _load_zip_checkpoint(archive, source, limit):
    """The object of a torch zip checkpoint (``<root>/data.pkl`` + ``<root>/data/<key>``)."""
    infos = archive.infolist()
    _check_size(sum(i.file_size for i in infos), limit, source)
    pickles = [i for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") == 1]
    if len(pickles) != 1:
        raise NotACheckpointError(
            f"{source}: a torch zip checkpoint holds one <root>/data.pkl; found "
            f"{[i.filename for i in pickles] or 'none'}."
        )
    root = pickles[0].filename[: -len("data.pkl")]
    names = {i.filename: i for i in infos}
    big_endian = False
    if root + "byteorder" in names:
        order = (
            _read_member(archive, names[root + "byteorder"], 16, source)
            .decode("ascii", "replace")
            .strip()
        )
        if order not in ("little", "big"):
            raise ConversionError(f"{source}: unknown byte order {order!r}.")
        big_endian = order == "big"
    cache = {}

    def load_storage(key, dtype, numel):
        if key not in cache:
            name = f"{root}data/{key}"
            if name not in names:
                raise ConversionError(
                    f"{source}: storage {name} is missing (truncated or corrupt archive)."
                )
            data = _read_member(archive, names[name], limit, source)
            if len(data) < numel * _element_size(dtype):
                raise ConversionError(
                    f"{source}: storage {name} is shorter than declared (corrupt archive)."
                )
            cache[key] = _Storage(data, dtype)
        stored = cache[key]
        return stored if stored.dtype == dtype else _Storage(stored.data, dtype)

    data_pkl = _read_member(archive, pickles[0], limit, source)
    return _RestrictedUnpickler(io.BytesIO(data_pkl), load_storage, big_endian, source).load()


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise UnsafeCheckpointError(
            f"Refused to load a pickle that references {module}.{name} where a "
            "torch checkpoint header has plain values; loading it could run code."
        )


def _load_legacy_checkpoint(stream, source, limit, total_size):
    """The object of a pre-1.6 ``torch.save`` stream (magic, protocol, info, object, storages).

    The storages follow the object's pickle, so it is read twice: once to learn the storages
    (no tensor built), then, with their bytes read and size-checked, to rebuild the tensors.
    """
    _check_size(total_size, limit, source)
    header = _NoGlobals(stream)
    try:
        magic = header.load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise NotACheckpointError(f"{source}: not a PyTorch checkpoint ({error}).") from error
    if magic != LEGACY_MAGIC_NUMBER:
        raise NotACheckpointError(f"{source}: not a PyTorch checkpoint (no torch magic number).")
    protocol = header.load()
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ConversionError(f"{source}: unsupported legacy protocol version {protocol!r}.")
    sys_info = _NoGlobals(stream).load()
    little_endian = not isinstance(sys_info, dict) or bool(sys_info.get("little_endian", True))
    object_start = stream.tell()
    declared = {}

    def declare(key, dtype, numel):
        if numel * _element_size(dtype) > total_size:
            raise ConversionError(
                f"{source}: storage {key} declares {numel:,} elements, more than the "
                f"file holds (corrupt file)."
            )
        declared.setdefault(key, dtype)
        return _Storage(b"", dtype)

    _RestrictedUnpickler(stream, declare, not little_endian, source, build_tensors=False).load()
    keys = _NoGlobals(stream).load()
    if not isinstance(keys, list):
        raise ConversionError(f"{source}: malformed storage key list (corrupt file).")
    storages = {}
    for key in keys:
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if key not in declared:
            raise ConversionError(
                f"{source}: storage {key} is not referenced by the pickle (corrupt file)."
            )
        size_bytes = stream.read(8)
        if len(size_bytes) != 8:
            raise ConversionError(f"{source}: truncated before storage {key}; download it again.")
        (numel,) = struct.unpack("<q" if little_endian else ">q", size_bytes)
        nbytes = numel * _element_size(declared[key])
        if numel < 0 or nbytes > total_size:
            raise ConversionError(
                f"{source}: storage {key} declares {numel} elements (corrupt file)."
            )
        data = stream.read(nbytes)
        if len(data) != nbytes:
            raise ConversionError(f"{source}: truncated inside storage {key}; download it again.")
        storages[key] = data
    missing = sorted(set(declared) - set(storages))
    if missing:
        raise ConversionError(
            f"{source}: storages {missing[:5]} are missing (truncated or corrupt file)."
        )

    def load_storage(key, dtype, numel):
        return _Storage(storages[key], dtype)

    stream.seek(object_start)
    return _RestrictedUnpickler(stream, load_storage, not little_endian, source).load()


# ---- public API ----


def _detect(head):
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x80"):
        return "legacy"
    return None


def _not_a_checkpoint(source, head):
    text = head[:64].lstrip()
    if text.startswith(b"<"):
        hint = "it looks like an HTML/XML page (an error or login page saved instead of the file)"
    elif not head:
        hint = "it is empty"
    else:
        hint = f"it starts with {head[:16]!r}"
    return NotACheckpointError(
        f"{source} is not a PyTorch checkpoint: {hint}. Download it again (the release URL of the "
        f"preset), then convert it with `keras-clmr convert --input FILE --preset NAME`."
    )


def _load_stream(stream, size, source, limit, nested_ok):
    head = stream.read(512)
    stream.seek(0)
    kind = _detect(head)
    if kind == "zip":
        try:
            archive = zipfile.ZipFile(stream)
        except zipfile.BadZipFile as error:
            raise ConversionError(
                f"{source} is a damaged zip archive ({error}); download it again."
            ) from error
        with archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            if any(i.filename.endswith("data.pkl") and i.filename.count("/") == 1 for i in infos):
                return _load_zip_checkpoint(archive, source, limit), {"serialization": "zip"}
            members = [
                i
                for i in infos
                if i.filename.lower().endswith(CHECKPOINT_SUFFIXES)
                and not i.filename.startswith("__MACOSX")
                and "/._" not in "/" + i.filename
            ]
            if not nested_ok or len(members) != 1:
                found = [i.filename for i in members] or [i.filename for i in infos][:10]
                raise ConversionError(
                    f"{source}: a release zip should hold exactly one .pt/.pth/.ckpt checkpoint "
                    f"(not nested in another zip), found {found}. Extract the checkpoint and "
                    "convert that file."
                )
            _check_size(sum(i.file_size for i in infos), limit, source)
            inner = _read_member(archive, members[0], limit, source)
        obj, info = _load_stream(
            io.BytesIO(inner), len(inner), f"{source}:{members[0].filename}", limit, False
        )
        return obj, {**info, "member": members[0].filename}
    if kind == "legacy":
        return _load_legacy_checkpoint(stream, source, limit, size), {"serialization": "legacy"}
    if kind == "tar":
        raise ConversionError(
            f"{source} is a tar-format checkpoint (PyTorch < 0.4), which the torch-free reader "
            "does not read: `pip install torch` enables it (torch.load), or re-save it with a "
            "current PyTorch."
        )
    raise _not_a_checkpoint(source, head)


def load_checkpoint(path, max_bytes=DEFAULT_MAX_BYTES):
    """Read a ``torch.save`` file, a Lightning ``.ckpt`` or a release zip of one, without torch.

    Returns ``(obj, info)``: the saved object with every tensor as a numpy array (dicts, lists,
    tuples, numbers and strings as themselves; argparse/Lightning hyper-parameters as dicts) and
    ``info`` = ``{"serialization": "zip" | "legacy", "member": name inside a release zip}``.
    Raises :class:`UnsafeCheckpointError` for pickles that name anything else,
    :class:`CheckpointSizeError` beyond ``max_bytes`` unpacked, :class:`NotACheckpointError`
    for other files and :class:`ConversionError` for damaged ones.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(
            f"Checkpoint not found: {path}. Pass the .pt/.ckpt file or the release .zip."
        )
    source = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        try:
            return _load_stream(stream, size, source, int(max_bytes), nested_ok=True)
        except ConversionError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            struct.error,
            zipfile.BadZipFile,
            RecursionError,
            MemoryError,
        ) as error:
            raise ConversionError(
                f"{source} is not a readable PyTorch checkpoint ({type(error).__name__}: "
                f"{error}); it may be truncated or damaged: download it again."
            ) from error


def _plain(value, depth=0):
    """HyperParameters -> dict, recursively (for metadata)."""
    if depth > 50:
        return value
    if isinstance(value, dict):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, depth + 1) for v in value)
    return value


def read_state_dict(path, max_bytes=DEFAULT_MAX_BYTES):
    """``(state, info)``: the weights of a checkpoint as ``{key: numpy array}``, without torch.

    Accepts a plain state dict, a Lightning checkpoint (its ``state_dict``) or a release zip of
    either. ``info`` describes the file: name, sha256, member, container ("state_dict" or
    "lightning"), Lightning version/epoch/step and hyper-parameters, a stripped ``module.``
    prefix. Non-tensor entries in the state dict are an error.
    """
    from keras_clmr.conversion.common import json_safe
    from keras_clmr.io import sha256_file

    obj, read_info = load_checkpoint(path, max_bytes=max_bytes)
    info = {"file": os.path.basename(os.fspath(path)), "sha256": sha256_file(path), **read_info}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        info["container"] = "lightning"
        for key in ("pytorch-lightning_version", "epoch", "global_step"):
            if key in obj:
                info[key] = json_safe(obj[key])
        if "hyper_parameters" in obj:
            info["hyper_parameters"] = json_safe(_plain(obj["hyper_parameters"]))
        state = obj["state_dict"]
    elif isinstance(obj, dict):
        info["container"] = "state_dict"
        state = obj
    else:
        raise ConversionError(
            f"{info['file']}: expected a state dict or a Lightning checkpoint (a dict "
            f"with 'state_dict'), got a {type(obj).__name__}."
        )
    out = {}
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise ConversionError(
                f"{info['file']}: state-dict entry {key!r} is a {type(value).__name__}, "
                "not a tensor."
            )
        out[str(key)] = value
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
        info["stripped_prefix"] = "module."
    return out, info


__all__ = [
    "DEFAULT_MAX_BYTES",
    "CheckpointSizeError",
    "ConversionError",
    "NotACheckpointError",
    "UnsafeCheckpointError",
    "TorchDtype",
    "load_checkpoint",
    "read_state_dict",
]
