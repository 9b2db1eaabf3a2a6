"""Turning ``submit``'s arguments into wire fields: the site or sites and policy, the
inputs and the outputs. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from . import proto as P


class HasId(Protocol):
    """A task handle (:class:`tidewater.Task`): only its id is read."""

    @property
    def id(self) -> int: ...


def route_fields(site: str | Sequence[str], policy: str = "") -> dict[str, Any]:
    """``TaskSpec`` fields for a site, a list of sites, or ``"any"``, and a routing policy.

    ``TaskSpec(app="x", **route_fields(["a", "b"]))`` is a task the controller
    routes between sites a and b. Raises ValueError for an empty list.
    """
    if isinstance(site, str):
        return {"site": site, "policy": policy}
    sites = list(dict.fromkeys(site))
    if not sites:
        raise ValueError("site: an empty list of sites (name one, several, or 'any')")
    return {"site": "any", "sites": sites, "policy": policy}


InputSource = str | bytes | tuple["HasId | int", str]
"""A URL, inline bytes, or (parent task, output name)."""


def inputs_of(inputs: Mapping[str, InputSource] | Iterable[P.Input]) -> list[P.Input]:
    """Wire inputs of ``submit``'s ``inputs``: a mapping of path to source, or Inputs.
    Raises TypeError for a source of another kind."""
    if not isinstance(inputs, Mapping):
        return list(inputs)
    out = []
    for path, src in inputs.items():
        if isinstance(src, bytes | bytearray | memoryview):
            out.append(P.Input(path=path, data=bytes(src)))
        elif isinstance(src, str):
            out.append(P.Input(path=path, url=src))
        elif isinstance(src, tuple) and len(src) == 2:
            t, name = src
            out.append(P.Input(path=path, task=int(t) if isinstance(t, int) else t.id,
                               output=name))
        else:
            raise TypeError(f"input {path!r}: give a URL, bytes, or (task, output name), "
                            f"not {type(src).__name__}")
    return out


def outputs_of(outputs: Mapping[str, str] | Iterable[str | P.Output]) -> list[P.Output]:
    """Wire outputs of ``submit``'s ``outputs``: a mapping of path to URL, paths, or Outputs."""
    if isinstance(outputs, Mapping):
        return [P.Output(path=p, url=u) for p, u in outputs.items()]
    return [o if isinstance(o, P.Output) else P.Output(path=o) for o in outputs]
