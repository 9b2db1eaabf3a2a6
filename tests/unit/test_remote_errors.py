"""Mapping a worker's description of an exception to the exception the client raises.

Pure: names in, classes out. A worker (or anything posing as one) may send any
names at all; only the name of a built-in exception class maps to one.
"""

from __future__ import annotations

import builtins
import pickle
import traceback

import pytest

from tidewater import TaskFailed, TidewaterError
from tidewater.errors import builtin_base, remote_class, remote_failure

EVERY_BUILTIN = sorted(
    name for name, obj in vars(builtins).items()
    if isinstance(obj, type) and issubclass(obj, Exception) and obj is not Exception
    and not issubclass(obj, BaseExceptionGroup | StopIteration | StopAsyncIteration)
)


def fail(names: list[object], *, tb: str = "") -> TaskFailed:
    return remote_failure(12, "FAILED", 1, "X: it broke", remote_type="m.X",
                          builtin_names=names, remote_message="it broke", remote_traceback=tb)


@pytest.mark.parametrize("name", EVERY_BUILTIN)
def test_every_builtin_exception_is_raised_as_itself_and_a_task_failure(name: str) -> None:
    base = getattr(builtins, name)
    exc = fail([name, "Exception"])
    assert isinstance(exc, base) and isinstance(exc, TaskFailed)
    assert str(exc) == "task 12 ended FAILED (exit code 1): X: it broke"
    assert repr(exc) and exc.args == (str(exc),)
    with pytest.raises(base):
        raise exc
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc) and str(again) == str(exc)


@pytest.mark.parametrize("names", [
    ["os.system"], ["builtins.type"], ["type"], ["print"], ["__import__"], ["eval"],
    ["object"], ["int"], ["SystemExit"], ["KeyboardInterrupt"], ["GeneratorExit"],
    ["BaseException"], ["Exception"], ["ExceptionGroup", "BaseExceptionGroup"],
    ["StopIteration"], ["StopAsyncIteration"], ["builtins.ValueError"], ["valueerror"],
    ["ValueError "], [""], [42, None, b"ValueError", ["ValueError"], {"ValueError": 1}],
    ["__builtins__"], ["__class__"], ["tidewater.errors.TaskFailed"], ["TaskFailed"], [],
])
def test_garbage_names_map_to_plain_task_failed(names: list[object]) -> None:
    assert builtin_base(names) is None
    exc = fail(names)
    assert type(exc) is TaskFailed
    assert str(exc) == "task 12 ended FAILED (exit code 1): X: it broke"


def test_a_class_slipped_into_builtins_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    class Sneaky(ValueError):
        pass

    monkeypatch.setattr(builtins, "Sneaky", Sneaky, raising=False)
    assert builtin_base(["Sneaky"]) is None
    assert builtin_base(["Sneaky", "ValueError"]) is ValueError


def test_the_nearest_builtin_is_taken_and_only_the_first_64_names_are_read() -> None:
    assert builtin_base(["FileNotFoundError", "OSError", "Exception"]) is FileNotFoundError
    assert builtin_base(["os.system", "UnicodeDecodeError", "ValueError"]) is UnicodeDecodeError
    assert builtin_base(["junk"] * 64 + ["ValueError"]) is None


def test_classes_are_made_once_per_builtin() -> None:
    assert remote_class(ValueError) is remote_class(ValueError)
    assert type(fail(["KeyError"])) is type(fail(["KeyError"])) is remote_class(KeyError)
    assert remote_class(None) is TaskFailed
    assert remote_class(TaskFailed) is TaskFailed  # not a built-in
    cls = remote_class(ValueError)
    assert cls.__name__ == "RemoteValueError" and cls.__module__ == "tidewater.errors"
    assert issubclass(cls, TidewaterError)


def test_builtins_with_awkward_constructors_still_read_well() -> None:
    key = fail(["KeyError"])
    assert str(key) == "task 12 ended FAILED (exit code 1): X: it broke"  # not a repr
    uni = fail(["UnicodeDecodeError", "UnicodeError", "ValueError"])
    assert isinstance(uni, UnicodeDecodeError) and "X: it broke" in str(uni)
    os_err = fail(["FileNotFoundError", "OSError"])
    assert isinstance(os_err, OSError) and os_err.errno is None and os_err.filename is None
    syntax = fail(["SyntaxError"])
    assert "X: it broke" in "".join(traceback.format_exception(syntax))


def test_the_remote_traceback_is_an_attribute_and_a_note() -> None:
    tb = 'Traceback (most recent call last):\n  File "f.py", line 3, in g\nX: it broke\n'
    exc = fail(["ValueError"], tb=tb)
    assert exc.remote_traceback == tb and exc.remote_type == "m.X"
    printed = "".join(traceback.format_exception(exc))
    assert 'File "f.py", line 3, in g' in printed and "task 12" in printed
    plain = TaskFailed(3, "KILLED", None, "cancelled by user")
    assert str(plain) == "task 3 ended KILLED: cancelled by user"
    assert not getattr(plain, "__notes__", None) and plain.remote_traceback == ""
