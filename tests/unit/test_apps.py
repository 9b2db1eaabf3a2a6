"""App command templates: placeholders, parameter checks, and quoting that never splits a value."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewater.apps import (
    check_name,
    declare_params,
    parse_param_decl,
    render,
    template_fields,
    uses_shell,
    validate_params,
)
from tidewater.errors import AppError, InvalidRequest, ParamError
from tidewater.proto import ParamSpec

# Values a hostile or careless user might pass as a parameter.
NASTY = [
    "plain",
    "",
    "two words",
    "  leading and trailing  ",
    "; rm -rf ~",
    "$(whoami)",
    "`whoami`",
    "${HOME}",
    "$HOME",
    "a\nb",
    "line\n",
    "tab\there",
    "it's",
    'say "hi"',
    "'",
    '"',
    "\\",
    "back\\slash\\",
    "*",
    "?[a-z]",
    "~",
    "~root",
    "#not a comment",
    "a | b > c < d & e",
    "&& echo pwned",
    "-n",
    "--flag=value",
    "{a}",
    "{}",
    "%s %d",
    "ünïcödé ✓ 漢字",
    "\r\n\x1b[31m",
]



def examples(n: int) -> settings:
    """Hypothesis settings: no example database written into the repo, no deadline."""
    return settings(database=None, deadline=None, max_examples=n)


def run_sh(command: str) -> bytes:
    """Run a rendered shell command exactly as a pilot would: ``/bin/sh -c``."""
    proc = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, check=True, timeout=20
    )
    return proc.stdout


# --------------------------------------------------------------------------- template_fields


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("prog", []),
        ("prog {a}", ["a"]),
        ("prog {b} {a} {c}", ["b", "a", "c"]),
        ("prog {a} {b} {a} {a}", ["a", "b"]),
        ("prog --x={x}{y}", ["x", "y"]),
        ("prog {{literal}} {a}", ["a"]),
        ("prog {_private} {Name2}", ["_private", "Name2"]),
    ],
)
def test_template_fields_in_order_of_first_use(command: str, fields: list[str]) -> None:
    assert template_fields(command) == fields


@pytest.mark.parametrize(
    "command",
    [
        "prog {0}",
        "prog {}",
        "prog {a.b}",
        "prog {a[0]}",
        "prog {a!r}",
        "prog {a!s}",
        "prog {a:>3}",
        "prog {a:{b}}",
        "prog {a",
        "prog a}",
        "prog {a}}",
        "prog {1a}",
        "prog {a-b}",
        "",
        "   ",
        "\n",
    ],
)
def test_template_fields_rejects_malformed(command: str) -> None:
    with pytest.raises(AppError) as info:
        template_fields(command)
    assert info.value.code == "bad_app"
    assert isinstance(info.value, InvalidRequest)


def test_template_fields_error_names_the_placeholder() -> None:
    with pytest.raises(AppError, match=r"\{a\.b\}"):
        template_fields("prog {a.b}")
    with pytest.raises(AppError, match="format spec"):
        template_fields("prog {a:>3}")
    with pytest.raises(AppError, match="empty"):
        template_fields("")


# --------------------------------------------------------------------------- uses_shell


@pytest.mark.parametrize(
    "command",
    [
        "prog {a} | wc -l",
        "prog {a} > out.txt",
        "prog < in.txt",
        "prog {a} 2>&1",
        "prog && other",
        "prog; other",
        "echo $HOME {a}",
        "echo `date`",
        "printf '%s' {a}",
        'echo "{a}"',
        "echo \\n",
        "ls *.npy",
        "ls ~/data",
        "prog # comment",
        "(cd x && prog)",
        "prog {a}\nother",
        "FOO=1 prog {a}",
        "  FOO=1 prog",
        "_X=y prog",
    ],
)
def test_uses_shell_true(command: str) -> None:
    assert uses_shell(command) is True


@pytest.mark.parametrize(
    "command",
    [
        "prog --x={x} {y}",
        "prog",
        "analyze --frame {frame} --out result.npy",
        "prog {a}{b}",
        "prog {{braces}}",
        "prog FOO=1",
        "/usr/bin/python3 -m mod.sub --n=4 {a}",
    ],
)
def test_uses_shell_false(command: str) -> None:
    assert uses_shell(command) is False


def test_shell_characters_inside_placeholders_do_not_count() -> None:
    # Placeholder names cannot carry shell syntax; only the literal text decides.
    assert uses_shell("prog {a} {b}") is False


# --------------------------------------------------------------------------- declare_params


def test_declare_params_none_makes_every_placeholder_a_required_str() -> None:
    specs = declare_params("prog {b} {a} {b}", None)
    assert specs == [ParamSpec(name="b"), ParamSpec(name="a")]
    assert all(s.type == "str" and s.required and s.default is None for s in specs)


def test_declare_params_accepts_matching_declarations() -> None:
    decl = [ParamSpec(name="n", type="int", required=False, default=3), ParamSpec(name="x")]
    assert declare_params("prog {x} -n {n}", decl) == decl


def test_declare_params_no_placeholders_no_params() -> None:
    assert declare_params("prog --version", None) == []
    assert declare_params("prog --version", []) == []


def test_declare_params_undeclared_placeholder_is_named() -> None:
    with pytest.raises(AppError, match="frame"):
        declare_params("prog {frame} {out}", [ParamSpec(name="out")])


def test_declare_params_unused_declaration_is_named() -> None:
    with pytest.raises(AppError, match="extra"):
        declare_params("prog {a}", [ParamSpec(name="a"), ParamSpec(name="extra")])


def test_declare_params_duplicate_is_refused() -> None:
    with pytest.raises(AppError, match="twice"):
        declare_params("prog {frame}", [ParamSpec(name="frame"), ParamSpec(name="frame")])


def test_declare_params_duplicate_error_names_the_parameter() -> None:
    with pytest.raises(AppError, match="frame"):
        declare_params("prog {frame}", [ParamSpec(name="frame"), ParamSpec(name="frame")])


def test_declare_params_checks_defaults_against_type() -> None:
    with pytest.raises(ParamError, match="'n'"):
        declare_params("prog {n}", [ParamSpec(name="n", type="int", required=False, default="x")])


def test_declare_params_rejects_malformed_template() -> None:
    with pytest.raises(AppError):
        declare_params("prog {a", None)


def test_optional_param_without_default_is_refused_or_renders() -> None:
    command = "prog {x}"
    try:
        specs = declare_params(command, [ParamSpec(name="x", required=False)])
    except AppError:
        return  # refusing the declaration is a fine fix
    values = validate_params("app", specs, {})
    argv, _ = render(command, values)  # must not raise KeyError
    assert argv[0] == "prog"


def test_template_with_nul_byte_is_refused() -> None:
    with pytest.raises(AppError):
        declare_params("prog \x00 {a}", None)


# --------------------------------------------------------------------------- parse_param_decl


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("name", ParamSpec(name="name", type="str", required=True)),
        ("name:str", ParamSpec(name="name", type="str", required=True)),
        ("n:int=3", ParamSpec(name="n", type="int", required=False, default=3)),
        ("n:int", ParamSpec(name="n", type="int", required=True)),
        ("x:float=2.5", ParamSpec(name="x", type="float", required=False, default=2.5)),
        ("flag:bool=true", ParamSpec(name="flag", type="bool", required=False, default=True)),
        ("flag:bool=no", ParamSpec(name="flag", type="bool", required=False, default=False)),
        ("s=", ParamSpec(name="s", type="str", required=False, default="")),
        ("s=a=b", ParamSpec(name="s", type="str", required=False, default="a=b")),
    ],
)
def test_parse_param_decl(text: str, spec: ParamSpec) -> None:
    got = parse_param_decl(text)
    assert got == spec
    assert type(got.default) is type(spec.default)


@pytest.mark.parametrize("text", ["n:list", "n:integer", "n:Int=3", "n:string=x"])
def test_parse_param_decl_bad_type(text: str) -> None:
    with pytest.raises(AppError, match="unknown parameter type"):
        parse_param_decl(text)


@pytest.mark.parametrize("text", ["n:int=three", "x:float=abc", "b:bool=maybe"])
def test_parse_param_decl_bad_default(text: str) -> None:
    with pytest.raises(ParamError):
        parse_param_decl(text)


# --------------------------------------------------------------------------- validate_params

SPECS = [
    ParamSpec(name="name"),
    ParamSpec(name="count", type="int", required=False, default=3),
    ParamSpec(name="scale", type="float", required=False, default=1.5),
    ParamSpec(name="verbose", type="bool", required=False, default=False),
]


def test_validate_params_applies_defaults() -> None:
    assert validate_params("hello", SPECS, {"name": "world"}) == {
        "name": "world",
        "count": 3,
        "scale": 1.5,
        "verbose": False,
    }


def test_validate_params_given_values_override_defaults() -> None:
    out = validate_params(
        "hello", SPECS, {"name": "w", "count": "7", "scale": "0.25", "verbose": "yes"}
    )
    assert out == {"name": "w", "count": 7, "scale": 0.25, "verbose": True}
    assert type(out["count"]) is int
    assert type(out["scale"]) is float
    assert out["verbose"] is True


def test_validate_params_missing_is_named() -> None:
    with pytest.raises(ParamError, match="'name'") as info:
        validate_params("hello", SPECS, {"count": 1})
    assert "hello" in str(info.value)
    assert info.value.code == "bad_params"


def test_validate_params_unknown_is_named_with_the_apps_params() -> None:
    with pytest.raises(ParamError) as info:
        validate_params("hello", SPECS, {"name": "w", "nmae": "typo"})
    msg = str(info.value)
    assert "'nmae'" in msg
    assert "'hello'" in msg
    for spec in SPECS:
        assert spec.name in msg


def test_validate_params_unknown_for_app_without_params() -> None:
    with pytest.raises(ParamError, match="none"):
        validate_params("bare", [], {"x": 1})


def test_validate_params_optional_without_value_or_default_is_left_out() -> None:
    specs = [ParamSpec(name="x", required=False)]
    assert validate_params("app", specs, {}) == {}


@pytest.mark.parametrize(
    ("typ", "given", "expected"),
    [
        ("str", "x y", "x y"),
        ("str", 5, "5"),
        ("str", 2.5, "2.5"),
        ("str", True, "True"),
        ("int", 5, 5),
        ("int", "42", 42),
        ("int", "-7", -7),
        ("float", 2, 2.0),
        ("float", "1e3", 1000.0),
        ("float", "-0.5", -0.5),
        ("bool", True, True),
        ("bool", False, False),
        ("bool", "true", True),
        ("bool", "TRUE", True),
        ("bool", "1", True),
        ("bool", "yes", True),
        ("bool", "false", False),
        ("bool", "0", False),
        ("bool", "No", False),
    ],
)
def test_validate_params_conversions(typ: str, given: object, expected: object) -> None:
    out = validate_params("app", [ParamSpec(name="p", type=typ)], {"p": given})  # type: ignore[arg-type,dict-item]
    assert out["p"] == expected
    assert type(out["p"]) is type(expected)


@pytest.mark.parametrize(
    ("typ", "given"),
    [
        ("int", "x"),
        ("int", "3.5"),
        ("int", ""),
        ("int", True),
        ("float", "abc"),
        ("float", False),
        ("bool", "maybe"),
        ("bool", ""),
        ("str", "a\x00b"),
    ],
)
def test_validate_params_conversion_failures(typ: str, given: object) -> None:
    with pytest.raises(ParamError, match="'p'"):
        validate_params("app", [ParamSpec(name="p", type=typ)], {"p": given})  # type: ignore[arg-type,dict-item]


def test_validate_params_refuses_fractional_float_for_int() -> None:
    with pytest.raises(ParamError):
        validate_params("app", [ParamSpec(name="p", type="int")], {"p": 3.7})


def test_validate_params_default_is_typed() -> None:
    specs = declare_params(
        "prog {b}", [ParamSpec(name="b", type="bool", required=False, default="yes")]
    )
    out = validate_params("app", specs, {})
    assert out == {"b": True}
    assert render("prog {b}", out)[0] == ["prog", "true"]


# --------------------------------------------------------------------------- render: argv


def test_render_argv_plain() -> None:
    argv, shell = render(
        "analyze --frame {frame} --out result.npy", {"frame": "f 001.h5"}
    )
    assert shell == ""
    assert argv == ["analyze", "--frame", "f 001.h5", "--out", "result.npy"]


@pytest.mark.parametrize("value", NASTY)
def test_render_argv_value_is_exactly_one_element(value: str) -> None:
    argv, shell = render("prog --x {a} tail", {"a": value})
    assert shell == ""
    assert argv == ["prog", "--x", value, "tail"]


@pytest.mark.parametrize("value", NASTY)
def test_render_argv_value_inside_a_word(value: str) -> None:
    argv, _ = render("prog --x={a}.txt", {"a": value})
    assert argv == ["prog", f"--x={value}.txt"]


def test_render_argv_adjacent_placeholders_make_one_word() -> None:
    argv, _ = render("prog {a}{b} {a}", {"a": "x y", "b": "; z"})
    assert argv == ["prog", "x y; z", "x y"]


def test_render_argv_typed_values() -> None:
    argv, _ = render(
        "prog {n} {f} {t} {u}", {"n": 3, "f": 0.5, "t": True, "u": False}
    )
    assert argv == ["prog", "3", "0.5", "true", "false"]


def test_render_argv_escaped_braces_and_extra_whitespace() -> None:
    argv, _ = render("  prog\t{{lit}}   {a}  ", {"a": "v"})
    assert argv == ["prog", "{lit}", "v"]


def test_render_argv_program_from_parameter() -> None:
    argv, _ = render("{prog} --help", {"prog": "/opt/my tool/bin"})
    assert argv == ["/opt/my tool/bin", "--help"]


# --------------------------------------------------------------------------- render: shell


def test_render_shell_returns_a_shell_string() -> None:
    argv, shell = render("prog {a} | wc -l", {"a": "x"})
    assert argv == []
    assert shell.startswith("prog ")
    assert shell.endswith(" | wc -l")


@pytest.mark.parametrize("value", NASTY)
def test_render_shell_value_arrives_verbatim(value: str) -> None:
    _, shell = render("printf '%s|' {a} | cat", {"a": value})
    assert run_sh(shell) == f"{value}|".encode()


def test_render_shell_each_value_one_word() -> None:
    values = {"a": "x y", "b": "; echo INJECTED", "c": "$(echo INJECTED)"}
    _, shell = render("printf '%s|' {a} {b} {c} | cat", values)
    assert run_sh(shell) == b"x y|; echo INJECTED|$(echo INJECTED)|"


def test_render_shell_value_inside_a_word() -> None:
    _, shell = render("printf '%s|' pre{a}post | cat", {"a": " $(echo X) "})
    assert run_sh(shell) == b"pre $(echo X) post|"


def test_render_shell_typed_values() -> None:
    _, shell = render(
        "printf '%s|' {n} {f} {t} {u} | cat", {"n": 3, "f": 0.5, "t": True, "u": False}
    )
    assert run_sh(shell) == b"3|0.5|true|false|"


def test_render_shell_leading_assignment() -> None:
    _, shell = render('FOO={a} sh -c \'printf "%s|" "$FOO"\'', {"a": "x; echo y"})
    assert run_sh(shell) == b"x; echo y|"


def test_render_shell_runs_nothing_from_a_value(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    attacks = [
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"; touch {canary}",
        f"&& touch {canary}",
        f"| touch {canary}",
        f"\ntouch {canary}",
        f"'; touch {canary}; '",
    ]
    for value in attacks:
        _, shell = render("printf '%s|' {a} | cat", {"a": value})
        assert run_sh(shell) == f"{value}|".encode()
    assert not canary.exists()


@pytest.mark.parametrize(
    "command", ["printf '%s|' \"{a}\" | cat", "printf '%s|' '{a}' | cat"]
)
def test_render_shell_placeholder_inside_template_quotes(command: str) -> None:
    value = "a  b $(echo INJECTED)"
    try:
        declare_params(command, None)
    except AppError:
        return  # refusing such a template at registration is a fine fix
    _, shell = render(command, {"a": value})
    assert run_sh(shell) == f"{value}|".encode()


# --------------------------------------------------------------------------- properties

# Any text a user may send (the wire rejects NUL through validate_params).
values_st = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
    max_size=40,
)


@examples(150)
@given(a=values_st, b=values_st)
def test_property_shell_output_equals_value(a: str, b: str) -> None:
    _, shell = render("printf '%s|' {a} {b} | cat", {"a": a, "b": b})
    assert run_sh(shell) == f"{a}|{b}|".encode()


@examples(500)
@given(a=values_st, b=values_st)
def test_property_argv_value_never_splits(a: str, b: str) -> None:
    argv, shell = render("prog --x={a} {b} tail", {"a": a, "b": b})
    assert shell == ""
    assert argv == ["prog", f"--x={a}", b, "tail"]


@examples(300)
@given(a=values_st)
def test_property_validated_value_renders_whole(a: str) -> None:
    specs = declare_params("prog {a}", None)
    values = validate_params("app", specs, {"a": a})
    assert render("prog {a}", values) == (["prog", a], "")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["hello", "a", "_x", "frames.v2-beta", "A" * 128])
def test_check_name_accepts(name: str) -> None:
    check_name("app", name)


@pytest.mark.parametrize("name", ["", "1abc", "-x", "a b", "a/b", "A" * 129, "ünï"])
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(AppError, match="invalid app name"):
        check_name("app", name)


@pytest.mark.parametrize(("command", "ours"), [
    ("echo hello {{ name }}", "echo hello {name}"),
    ("run --in {{input_file }} --out {{ out}}", "run --in {input_file} --out {out}"),
    ("echo {{ x | upper }} {y}", "echo {x} {y}"),
])
def test_balsam_templates_refused_with_our_form(command: str, ours: str) -> None:
    from tidewater.apps import template_fields
    from tidewater.errors import AppError

    with pytest.raises(AppError) as info:
        template_fields(command)
    assert "Balsam/Jinja" in str(info.value) and repr(ours) in str(info.value)


@pytest.mark.parametrize(("command", "fields"), [
    ("awk '{{print $1}}' {f}", ["f"]),
    ("echo ${{HOME}} {name}", ["name"]),
])
def test_doubled_braces_without_jinja_spacing_stay_literal(command: str,
                                                           fields: list[str]) -> None:
    from tidewater.apps import template_fields

    assert template_fields(command) == fields
