"""App command templates: parsing, parameter validation, rendering. Pure.

A template is a shell command line with ``{name}`` placeholders, e.g.
``analyze --frame {frame} --out result.npy``. Every value is converted to
its declared type and inserted shell-quoted, so a parameter is always
exactly one word: ``; rm -rf ~`` arrives as the literal argument
``; rm -rf ~``. A template with no shell syntax outside its placeholders is
run directly as an argv list, with no shell in between.
"""

from __future__ import annotations

import functools
import re
import shlex
import string
from collections.abc import Mapping, Sequence

from .errors import AppError, ParamError
from .proto import ParamSpec

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Characters that make /bin/sh do more than split words.
_SHELL_SYNTAX = set("|&;<>()$`\\\"'*?[]#~\n")
_LEADING_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*=")

ParamValue = str | int | float | bool


def check_name(kind: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise AppError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '.', '-' "
            "(starting with a letter or '_', at most 128 characters)"
        )


_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_JINJA = re.compile(rf"(?<!\$)\{{\{{(?:\s+({_ID})\s*|\s*({_ID})\s+|\s*({_ID})\s*\|[^{{}}]*)\}}\}}")


def _refuse_jinja(command: str) -> None:
    """Refuse a Balsam (Jinja) template: ``{{ name }}`` would otherwise be the literal
    text ``{ name }`` (doubled braces are how a brace is written here), an app with no
    parameters that fails only when a task runs. Jinja's spaces or a ``|filter`` inside
    the doubled braces tell it apart from a brace written doubled (``awk '{{print}}'``,
    ``${{HOME}}``), which is left alone."""
    if _JINJA.search(command) is not None:
        ours = _JINJA.sub(lambda m: "{" + next(g for g in m.groups() if g) + "}", command)
        raise AppError(
            f"{command!r} uses Balsam/Jinja placeholders ({{{{ name }}}}); Tidewater's are "
            f"single braces, with values always inserted shell-quoted: {ours!r} "
            "(a literal brace is written {{ or }})")


def template_fields(command: str) -> list[str]:
    """Placeholder names in ``command``, in order of first use.

    Raises :class:`AppError` for malformed braces, positional or attribute
    placeholders, and format specs (values are always inserted whole).
    """
    if not command.strip():
        raise AppError("an app's command template must not be empty")
    if "\x00" in command:
        raise AppError("an app's command template must not contain NUL bytes")
    _refuse_jinja(command)
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(command))
    except ValueError as exc:
        raise AppError(f"malformed command template {command!r}: {exc}") from None
    for _literal, field, spec, conv in parsed:
        if field is None:
            continue
        if not PARAM_RE.match(field):
            raise AppError(
                f"placeholder {{{field}}} in {command!r} is not a plain parameter name"
            )
        if spec or conv:
            raise AppError(f"placeholder {{{field}}} in {command!r} may not carry a format spec")
        if field not in names:
            names.append(field)
    _check_unquoted_placeholders(command, parsed)
    return names


def _check_unquoted_placeholders(
    command: str, parsed: list[tuple[str, str | None, str | None, str | None]]
) -> None:
    """Refuse ``'{x}'`` and ``"{x}"``: values are quoted already, quoting twice splits them."""
    quote = ""
    for literal, field, _s, _c in parsed:
        escaped = False
        for ch in literal:
            if escaped:
                escaped = False
            elif ch == "\\" and quote != "'":
                escaped = True
            elif quote:
                if ch == quote:
                    quote = ""
            elif ch in "'\"":
                quote = ch
        if field is not None and (quote or escaped):
            raise AppError(
                f"placeholder {{{field}}} in {command!r} is inside quotes or after a backslash; "
                "remove them: every value is inserted shell-quoted already"
            )


def uses_shell(command: str) -> bool:
    """Whether the template needs /bin/sh (shell syntax outside placeholders)."""
    if _LEADING_ASSIGNMENT.match(command):
        return True
    for literal, _field, _spec, _conv in string.Formatter().parse(command):
        if any(ch in _SHELL_SYNTAX for ch in literal):
            return True
    return False


def declare_params(command: str, params: Sequence[ParamSpec] | None) -> list[ParamSpec]:
    """Check declared parameters against the template's placeholders.

    With ``params`` None, every placeholder becomes a required ``str``.
    Raises :class:`AppError` naming any placeholder without a declaration or
    any declaration without a placeholder.
    """
    fields = template_fields(command)
    if params is None:
        return [ParamSpec(name=f) for f in fields]
    declared = {p.name: p for p in params}
    if len(declared) != len(params):
        names = [p.name for p in params]
        twice = next(n for n in names if names.count(n) > 1)
        raise AppError(f"parameter {twice!r} is declared twice")
    missing = [f for f in fields if f not in declared]
    if missing:
        raise AppError(f"placeholder(s) {', '.join(missing)} in the template are not declared")
    unused = [p.name for p in params if p.name not in fields]
    if unused:
        raise AppError(f"declared parameter(s) {', '.join(unused)} do not appear in the template")
    out: list[ParamSpec] = []
    for p in params:
        if not PARAM_RE.match(p.name):
            raise AppError(f"invalid parameter name {p.name!r}")
        if p.default is not None:
            p = ParamSpec(name=p.name, type=p.type, required=False,
                          default=_convert(p, p.default))
        elif not p.required:
            raise AppError(f"parameter {p.name!r} is optional but has no default")
        out.append(p)
    return out


def parse_param_decl(text: str) -> ParamSpec:
    """Parse a command-line declaration ``name[:type][=default]``."""
    name, eq, default = text.partition("=")
    name, colon, typ = name.partition(":")
    typ = typ or "str"
    if typ not in ("str", "int", "float", "bool"):
        raise AppError(f"unknown parameter type {typ!r} in {text!r}: use str, int, float or bool")
    spec = ParamSpec(name=name, type=typ, required=not eq)  # type: ignore[arg-type]
    if eq:
        value = _convert(spec, default)
        spec = ParamSpec(name=name, type=typ, required=False, default=value)  # type: ignore[arg-type]
    return spec


def _convert(spec: ParamSpec, value: ParamValue) -> ParamValue:
    where = f"parameter {spec.name!r}"
    try:
        if spec.type == "str":
            if isinstance(value, bool | int | float):
                return str(value)
            if "\x00" in value:
                raise ParamError(f"{where} contains a NUL byte")
            return value
        if spec.type == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if spec.type == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError
    except (ValueError, TypeError):
        raise ParamError(f"{where} must be {spec.type}, got {value!r}") from None


def validate_params(
    app: str, specs: Sequence[ParamSpec], given: Mapping[str, ParamValue]
) -> dict[str, ParamValue]:
    """Check ``given`` against the declarations; return typed values with defaults.

    Raises :class:`ParamError` naming the first unknown, missing or mistyped
    parameter.
    """
    known = {s.name: s for s in specs}
    unknown = sorted(set(given) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        raise ParamError(
            f"app {app!r} has no parameter {unknown[0]!r} (its parameters: {allowed})"
        )
    out: dict[str, ParamValue] = {}
    for spec in specs:
        if spec.name in given:
            out[spec.name] = _convert(spec, given[spec.name])
        elif spec.required:
            raise ParamError(f"app {app!r} needs parameter {spec.name!r}")
        elif spec.default is not None:
            out[spec.name] = spec.default
    return out


def _word(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(command: str, values: Mapping[str, ParamValue]) -> tuple[list[str], str]:
    """Render a validated template: ``(argv, "")`` or ``([], shell_command)``."""
    if _shell_cached(command):
        quoted = {k: shlex.quote(_word(v)) for k, v in values.items()}
        return [], command.format_map(quoted)
    return [
        "".join(_word(values[text]) if is_field else text for is_field, text in word)
        for word in _compile_argv(command)
    ], ""


@functools.lru_cache(maxsize=4096)
def _shell_cached(command: str) -> bool:
    return uses_shell(command)


@functools.lru_cache(maxsize=4096)
def _compile_argv(command: str) -> tuple[tuple[tuple[bool, str], ...], ...]:
    """Split a template without shell syntax into words once.

    Each word is a sequence of literal text and placeholders, so values are
    substituted as whole words or parts of words (``--frame={frame}``) and
    never split, whatever they contain.
    """
    marker = "\x00"  # templates cannot contain NUL (template_fields refuses it)
    pieces: list[str] = []
    fields: list[str] = []
    for literal, field, _s, _c in string.Formatter().parse(command):
        pieces.append(literal)
        if field is not None:
            pieces.append(marker)
            fields.append(field)
    it = iter(fields)
    words: list[tuple[tuple[bool, str], ...]] = []
    for word in shlex.split("".join(pieces)):
        parts: list[tuple[bool, str]] = []
        for i, chunk in enumerate(word.split(marker)):
            if i:
                parts.append((True, next(it)))
            if chunk:
                parts.append((False, chunk))
        words.append(tuple(parts))
    return tuple(words)
