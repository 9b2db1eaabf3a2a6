"""Values of Python function apps on the wire: msgpack with numpy arrays. Pure.

A function app's arguments and return value travel as msgpack. What can be
sent is a closed set, checked on both sides:

* ``None``, ``bool``, ``int`` (64 bits: ``-2**63`` to ``2**64 - 1``),
  ``float``, ``str``, ``bytes``;
* ``list`` and ``tuple`` (a tuple arrives as a list), ``dict`` whose keys are
  ``str``, ``int``, ``float``, ``bool``, ``None`` or ``bytes``;
* numpy ``ndarray`` of any dtype that holds no Python objects: numbers,
  ``bool``, ``datetime64``/``timedelta64``, fixed-width ``S``/``U``/``V``,
  and structured dtypes built from those, in either byte order, any shape
  (0-d and empty included). It arrives as a writable array equal to the one
  sent: same dtype, shape and values;
* numpy scalars, which arrive as the Python scalar (``np.float32(1.5)`` as
  ``1.5``); subclasses of the builtin types (``IntEnum``, ``OrderedDict``,
  named tuples) arrive as the builtin type.

Anything else (objects, sets, ``datetime``, ``complex``, object arrays) is
refused with :class:`CodecError`, naming the type and where it sat in the
value. Nothing is ever pickled or imported by decoding: an array is data —
an Ext of type :data:`NDARRAY_EXT` whose payload is the msgpack array
``[descr, shape, raw]``, where ``descr`` is the dtype as the ``.npy`` format
writes it (``"<f8"``, or a list of fields for a structured dtype), ``shape``
a list of ints and ``raw`` the C-order bytes. Decoding refuses payloads that
are malformed, whose size does not match shape and dtype, that name an object
dtype or an Ext type it does not know, again with :class:`CodecError` and
never another exception.
"""

from __future__ import annotations

import keyword
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, cast

import msgspec
import numpy as np
from numpy.lib import format as npy_format

from .errors import CodecError

__all__ = [
    "NDARRAY_EXT",
    "CodecError",
    "check_import_path",
    "decode",
    "decode_call",
    "encode",
    "encode_call",
]

NDARRAY_EXT = 1
"""The msgpack Ext type code of a numpy array."""

MAX_DEPTH = 256
"""How deeply lists and dicts may nest (a guard against cycles and stack exhaustion)."""

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
# dtype kinds whose bytes mean the same in any process: bool, ints, floats,
# complex, datetime64, timedelta64, bytes, unicode, void (raw or structured).
# Not "O" (pointers to Python objects) nor numpy 2's "T" StringDType (pointers too).
_DATA_KINDS = frozenset("biufcmMSUV")
_MAX_NDIM = 64
_MAX_COUNT = 2**62
_KEY_TYPES = (str, int, float, bool, type(None), bytes)
# Types encoded as they are (int is not among them: its range is checked).
_PLAIN = frozenset({str, float, bool, type(None), bytes})
# Types msgspec decodes that need no further look.
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_SUPPORTED = (
    "supported are None, bool, int, float, str, bytes, list, tuple, dict and numpy "
    "arrays or scalars without Python objects"
)


# One exception tree (errors.py): CodecError is a TidewaterError and a ValueError.


# --------------------------------------------------------------------------- encode


class _Refused(Exception):
    """Internal: a value was refused; ``path`` grows as the error unwinds."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.path: list[str] = []


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _descr_of(dtype: np.dtype[Any]) -> Any:
    if not _dtype_ok(dtype):
        raise _Refused(
            f"a numpy array of dtype {dtype} (its items are Python objects or pointers, "
            "not data; convert it to a numeric, fixed-width string or structured dtype)"
        )
    if _has_metadata(dtype):
        # Metadata is a Python dict riding on the dtype, not data: it is not sent,
        # and numpy warns when it drops it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return npy_format.dtype_to_descr(dtype)
    return npy_format.dtype_to_descr(dtype)


def _has_metadata(dtype: np.dtype[Any]) -> bool:
    if dtype.metadata:
        return True
    if dtype.subdtype is not None:
        return _has_metadata(dtype.subdtype[0])
    if dtype.fields is not None:
        return any(_has_metadata(f[0]) for f in dtype.fields.values())
    return False


def _dtype_ok(dtype: np.dtype[Any]) -> bool:
    if dtype.kind not in _DATA_KINDS or dtype.hasobject:
        return False
    if dtype.subdtype is not None:
        return _dtype_ok(dtype.subdtype[0])
    if dtype.fields is not None:
        return all(_dtype_ok(f[0]) for f in dtype.fields.values())
    return True


def _array_ext(arr: np.ndarray[Any, Any]) -> msgspec.msgpack.Ext:
    if type(arr) not in (np.ndarray, np.memmap, np.recarray):
        raise _Refused(
            f"a {_type_name(arr)} (an ndarray subclass whose meaning would be lost; "
            "send np.asarray(x) and any extra parts, such as a mask, separately)"
        )
    descr = _descr_of(arr.dtype)
    raw: bytes | memoryview
    if arr.nbytes == 0:
        raw = b""
    else:
        # A uint8 view of the C-order data: no copy for a contiguous array, and
        # it works for dtypes that the buffer protocol refuses (datetime64).
        raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data
    return msgspec.msgpack.Ext(NDARRAY_EXT, _payload_encoder.encode((descr, arr.shape, raw)))


def _key(key: object) -> object:
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, _KEY_TYPES):
        return _prepare(key, 0)
    raise _Refused(
        f"a dict key of type {_type_name(key)} (keys must be str, int, float, bool, None or bytes)"
    )


def _prepare(value: object, depth: int) -> object:
    """``value`` as builtin types msgspec encodes as they are, arrays as Ext."""
    t = type(value)
    if t is str or t is float or t is bool or value is None or t is bytes:
        return value
    if isinstance(value, int):  # bool is final, so this is int or a subclass (IntEnum)
        number = value if t is int else int(value)
        if _INT_MIN <= number <= _INT_MAX:
            return number
        raise _Refused(f"the int {number} (msgpack ints are 64 bits: -2**63 to 2**64 - 1)")
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise _Refused(f"a value nested deeper than {MAX_DEPTH} levels (or a cycle)")
        out: list[object] = []
        for i, item in enumerate(value):
            if type(item) in _PLAIN:  # inline the common case: no call per float
                out.append(item)
                continue
            try:
                out.append(_prepare(item, depth + 1))
            except _Refused as exc:
                exc.path.append(f"[{i}]")
                raise
        return out
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise _Refused(f"a value nested deeper than {MAX_DEPTH} levels (or a cycle)")
        mapping: dict[object, object] = {}
        for k, v in value.items():
            if type(k) is str and type(v) in _PLAIN:
                mapping[k] = v
                continue
            try:
                mapping[_key(k)] = _prepare(v, depth + 1)
            except _Refused as exc:
                exc.path.append(f"[{k!r}]")
                raise
        return mapping
    if isinstance(value, np.ndarray):
        return _array_ext(value)
    if isinstance(value, np.generic):
        # Before float and str: np.float64 and np.str_ subclass them.
        if isinstance(value, (np.datetime64, np.timedelta64)):
            raise _Refused(
                f"a numpy scalar of type {_type_name(value)} (send np.asarray(x), a 0-d "
                "array, or an int count of its unit)"
            )
        scalar = value.item()
        if isinstance(scalar, (np.generic, complex)) or not isinstance(
            scalar, (str, int, float, bytes, tuple, type(None))
        ):
            raise _Refused(
                f"a numpy scalar of type {_type_name(value)} (it has no plain Python "
                "equivalent here; send np.asarray(x) to keep it as a 0-d array)"
            )
        return _prepare(scalar, depth)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)  # the characters, whatever a subclass's __str__ says
    if isinstance(value, bytes):
        return bytes(value)
    raise _Refused(f"a value of type {_type_name(value)}")


def _refusal(exc: _Refused, root: str = "value") -> CodecError:
    path = exc.path[::-1]
    if len(path) > 12:  # a cycle or deep nesting: the ends say enough
        path = [*path[:6], f"...({len(exc.path) - 9} more)...", *path[-3:]]
    where = root + "".join(path)
    return CodecError(f"cannot encode {exc.what} at {where}: {_SUPPORTED}")


def encode(value: object) -> bytes:
    """``value`` as msgpack bytes (see the module docstring for what can be sent).

    Raises :class:`CodecError` naming the first value that cannot be encoded
    and where it sits (``value[2]['x']``). Pure.
    """
    try:
        tree = _prepare(value, 0)
    except _Refused as exc:
        raise _refusal(exc) from None
    return _encoder.encode(tree)


# --------------------------------------------------------------------------- decode


def _bad(what: str) -> NoReturn:
    raise CodecError(f"malformed function-app data: {what}")


def _name_from_wire(name: object) -> object:
    if isinstance(name, str):
        return name
    if isinstance(name, list) and len(name) == 2 and all(isinstance(n, str) for n in name):
        return (name[0], name[1])  # (title, name)
    _bad(f"a structured dtype field name must be a string, not {name!r}")


def _descr_from_wire(descr: object, depth: int = 0) -> object:
    """The ``.npy`` descr of a dtype from its msgpack form (lists where tuples were)."""
    if isinstance(descr, str):
        return descr
    if not isinstance(descr, list) or depth > 8:
        _bad(f"an array dtype must be a string or a list of fields, not {descr!r:.200}")
    fields: list[tuple[object, ...]] = []
    for field in descr:
        if not isinstance(field, list) or len(field) not in (2, 3):
            _bad(f"a structured dtype field must be [name, dtype(, shape)], not {field!r:.200}")
        name = _name_from_wire(field[0])
        fmt = _descr_from_wire(field[1], depth + 1)
        if len(field) == 2:
            fields.append((name, fmt))
            continue
        shape = field[2]
        if not isinstance(shape, list) or not all(type(n) is int and 0 <= n for n in shape):
            _bad(f"a structured dtype field shape must be a list of sizes, not {shape!r:.200}")
        fields.append((name, fmt, tuple(shape)))
    return fields


def _dtype_from_wire(descr: object) -> np.dtype[Any]:
    spec = _descr_from_wire(descr)
    try:
        if isinstance(spec, str):
            dtype = np.dtype(spec)
        else:
            dtype = npy_format.descr_to_dtype(cast(Any, spec))
    except Exception as exc:  # numpy raises TypeError, ValueError, KeyError, ...
        raise CodecError(
            f"malformed function-app data: array dtype {descr!r:.200}: {exc}"
        ) from None
    if dtype.subdtype is not None:
        _bad(f"array dtype {dtype} is a subarray dtype (put its shape in the array's shape)")
    if not _dtype_ok(dtype):
        raise CodecError(
            f"refused an array of dtype {dtype}: arrays holding Python objects are never decoded"
        )
    return dtype


def _array_from_ext(data: memoryview) -> np.ndarray[Any, Any]:
    try:
        descr, shape, raw = _payload_decoder.decode(data)
    except msgspec.MsgspecError as exc:
        _bad(f"an array payload must be [dtype, shape, bytes]: {exc}")
    dtype = _dtype_from_wire(descr)
    if len(shape) > _MAX_NDIM or any(n < 0 for n in shape):
        _bad(f"array shape {list(shape)!r:.200} (sizes >= 0, at most {_MAX_NDIM} dimensions)")
    count = math.prod(shape)
    if count > _MAX_COUNT:
        _bad(f"array shape {shape} has more than 2**62 items")
    if count * dtype.itemsize != len(raw):
        _bad(
            f"an array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} "
            f"bytes, the payload has {len(raw)}"
        )
    try:
        if len(raw) == 0:
            arr = np.zeros(shape, dtype=dtype)
        else:
            arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    except Exception as exc:  # e.g. "array is too big" for a huge shape of 0-byte items
        _bad(f"an array of shape {shape} and dtype {dtype}: {exc}")
    if arr.dtype != dtype:  # numpy sizes an unsized "S0"/"U0" dtype on creation
        _bad(f"array dtype {dtype} is not the dtype of any array")
    # The bytearray is ours alone, so the array is writable without a copy;
    # copy only to align it.
    return arr if arr.flags.aligned else arr.copy()


def _ext_hook(code: int, data: memoryview) -> object:
    if code == NDARRAY_EXT:
        return _array_from_ext(data)
    _bad(f"unknown msgpack extension type {code}")


def _check_decoded(value: object, depth: int) -> None:
    """Refuse what msgspec decodes on its own but :func:`encode` never sends.

    That is the msgpack timestamp extension (a ``datetime``) and arrays used
    as map keys (tuples).
    """
    t = type(value)
    if t is list:
        if depth >= MAX_DEPTH:
            _bad(f"nested deeper than {MAX_DEPTH} levels")
        for item in value:  # type: ignore[attr-defined]
            if type(item) not in _SCALARS:
                _check_decoded(item, depth + 1)
    elif t is dict:
        if depth >= MAX_DEPTH:
            _bad(f"nested deeper than {MAX_DEPTH} levels")
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) not in _SCALARS:
                _bad(f"a map key of type {_type_name(k)}")
            if type(v) not in _SCALARS:
                _check_decoded(v, depth + 1)
    elif t not in _SCALARS and t is not np.ndarray:
        _bad(
            f"a value of type {_type_name(value)} (from a msgpack extension this codec does not use)"
        )


def decode(data: bytes | bytearray | memoryview) -> Any:
    """The value that :func:`encode` turned into ``data``.

    Arrays come back writable and C-contiguous. Raises :class:`CodecError`
    (and nothing else) for bytes that are not msgpack, for trailing bytes,
    for an unknown extension type and for an array payload that is malformed,
    names an object dtype or whose size does not match its shape. Pure.
    """
    try:
        value = _decoder.decode(data)
    except CodecError:
        raise
    except RecursionError:
        _bad(f"nested deeper than {MAX_DEPTH} levels")
    except Exception as exc:  # msgspec.DecodeError, TypeError for an unhashable key, ...
        raise CodecError(f"malformed function-app data: {exc}") from None
    _check_decoded(value, 0)
    return value


# --------------------------------------------------------------------------- calls


def encode_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """A function call's arguments as msgpack: ``[args, kwargs]``.

    Raises :class:`CodecError` for a value that cannot be encoded (its path
    reads ``args[0]`` or ``kwargs['x']``) and for a keyword that is not a str.
    Pure.
    """
    for key in kwargs:
        if not isinstance(key, str):
            raise CodecError(f"keyword argument names must be str, not {_type_name(key)} {key!r}")
    try:
        prepared_args = _prepare(list(args), 0)
    except _Refused as exc:
        raise _refusal(exc, "args") from None
    try:
        prepared_kwargs = _prepare(dict(kwargs), 0)
    except _Refused as exc:
        raise _refusal(exc, "kwargs") from None
    return _encoder.encode([prepared_args, prepared_kwargs])


def decode_call(data: bytes | bytearray | memoryview) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` from :func:`encode_call`'s bytes; empty ``data`` is a call with none.

    Raises :class:`CodecError` as :func:`decode` does, and for data that is
    not ``[list, dict with str keys]``. Pure.
    """
    if len(data) == 0:
        return [], {}
    call = decode(data)
    if not (
        isinstance(call, list)
        and len(call) == 2
        and isinstance(call[0], list)
        and isinstance(call[1], dict)
    ):
        _bad("a call must be [args, kwargs]")
    args, kwargs = call
    for key in kwargs:
        if not isinstance(key, str):
            _bad(f"keyword argument names must be strings, not {key!r:.100}")
    return args, kwargs


# --------------------------------------------------------------------------- import paths

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_QUALNAME_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})?")
_MAX_PATH = 512
_PATH_HELP = (
    "expected 'package.module:function' or 'package.module:Class.method' "
    "(ASCII Python identifiers, no spaces, no leading dots)"
)


def check_import_path(path: str) -> tuple[str, str]:
    """``(module, qualname)`` of a function app's import path ``pkg.mod:name``.

    ``qualname`` is a name in the module or ``Class.attribute`` (a static or
    class method). Raises :class:`ValueError` saying what is wrong for
    anything else: relative modules, spaces, Python keywords, more than one
    ``:``. Nothing is imported. Pure.
    """
    if not isinstance(path, str):
        raise ValueError(f"a function app's import path must be a string, not {_type_name(path)}")
    if len(path) > _MAX_PATH:
        raise ValueError(f"function import path is longer than {_MAX_PATH} characters")
    module, sep, qualname = path.partition(":")
    if not sep:
        raise ValueError(f"invalid function import path {path!r}: no ':' — {_PATH_HELP}")
    if not _MODULE_RE.fullmatch(module):
        raise ValueError(
            f"invalid module {module!r} in function import path {path!r}: {_PATH_HELP}"
        )
    if not _QUALNAME_RE.fullmatch(qualname):
        raise ValueError(
            f"invalid function name {qualname!r} in function import path {path!r}: {_PATH_HELP}"
        )
    for part in (*module.split("."), *qualname.split(".")):
        if keyword.iskeyword(part):
            raise ValueError(f"invalid function import path {path!r}: {part!r} is a Python keyword")
    return module, qualname


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)
_payload_encoder = msgspec.msgpack.Encoder()
_payload_decoder = msgspec.msgpack.Decoder(tuple[Any, tuple[int, ...], bytearray])
