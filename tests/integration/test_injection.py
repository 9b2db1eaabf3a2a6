"""A parameter is one argument, verbatim, whatever it holds.

Two apps print their one parameter: ``printf %s {x}`` runs as an argv list
(no shell), ``printf %s {x} | cat`` through /bin/sh with the value quoted.
Shell metacharacters, quotes, newlines, leading dashes, format directives,
unicode and very long values must come out of both exactly as they went in,
and nothing they spell may run: the pilot's HOME, which the values try to
remove or write to, is left alone. test_bad_input.py checks one such value
through an argv template; these check many, both ways, and a property.

One controller and one pilot serve the module; every value is a real task
round trip (submit, push, fork/exec, report, result).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tidewater

from .procs import Cluster, cluster

pytestmark = pytest.mark.integration

TAIL = 4096  # Limits.tail_bytes: what of stdout comes back
ARGV_APP, SHELL_APP = "argv", "shell"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: one controller and one pilot for every value


@dataclass
class Site:
    c: Cluster
    client: tidewater.Client
    home: Path


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory, module_store: str | None
               ) -> AsyncIterator[Site]:
    tmp = tmp_path_factory.mktemp("inject")
    home = tmp / "home-of-the-pilot"
    home.mkdir()
    (home / "canary").write_text("still here")
    async with cluster(tmp, db=module_store) as c:
        c.env["HOME"] = str(home)
        await c.start_controller()
        token = await c.add_user("alice")
        async with tidewater.connect(c.url, token=token) as client:
            _s, site_token = await client.add_site("hpc")
            await client.add_app("hpc", ARGV_APP, "printf %s {x}")
            await client.add_app("hpc", SHELL_APP, "printf %s {x} | cat")
            await c.start_pilot(site_token, pilot_id="p1", cores=4, prefetch=4)
            yield Site(c, client, home)


async def round_trip(s: Site, value: str) -> tuple[str, str]:
    """The stdout of both apps given ``value``, after checking how each was run."""
    specs = [tidewater.TaskSpec(app=app, site="hpc", params={"x": value})
             for app in (ARGV_APP, SHELL_APP)]
    tasks = await s.client.submit_many(specs)
    argv_info, shell_info = await s.client.wait(tasks, timeout=30)
    for info in (argv_info, shell_info):
        assert (info.state, info.exit_code, info.stderr_tail) == ("JOB_FINISHED", 0, ""), info
    # The first ran without a shell, as [printf, %s, value]; the second through /bin/sh.
    ((argv, shell),) = s.c.rows("SELECT argv, shell FROM tasks WHERE id = ?", (tasks[0].id,))
    assert shell == "" and tidewater.proto.encode_json(["printf", "%s", value]) == argv
    ((argv, shell),) = s.c.rows("SELECT argv, shell FROM tasks WHERE id = ?", (tasks[1].id,))
    assert argv == "[]" and shell.endswith(" | cat")
    assert sorted(os.listdir(s.home)) == ["canary"]
    assert (s.home / "canary").read_text() == "still here"
    return argv_info.stdout_tail, shell_info.stdout_tail


NASTY = {
    "semicolon": "; rm -rf ~",
    "subshell": "$(rm -rf ~)",
    "backticks": "`rm -rf ~`",
    "pipe": "| rm -rf ~",
    "and": "&& rm -rf ~ && echo pwned",
    "or": "|| touch ~/pwned",
    "redirect": "> ~/pwned",
    "append": ">> ~/pwned 2>&1",
    "input": "< /etc/passwd",
    "background": "sleep 60 &",
    "variable": "$HOME ${HOME} $0 $$ $?",
    "glob": "* ~/* /etc/pass?? [a-z]*",
    "comment": "# nothing after",
    "newlines": "line one\nline two; rm -rf ~\n",
    "crlf": "a\r\nb",
    "tab": "\tx\ty",
    "single-quote": "it's",
    "double-quote": 'say "hi"',
    "quote-escape": "'\"'\"'; rm -rf ~; '",
    "backslashes": "\\ \\\\ \\n \\' end\\",
    "dash": "-",
    "leading-dash": "-n",
    "double-dash": "--",
    "long-option": "--version",
    "printf-format": "%s %d %% %n %b",
    "braces": "{x} {0} {} {{x}}",
    "spaces": "  two  spaces  ",
    "empty": "",
    "unicode": "ünïcödé ✓ 漢字 🚀 \u202e\u200b",
    "long": "".join(f"{i:05d};" for i in range(680)),  # 4080 chars: returned whole
}


@pytest.mark.parametrize("value", list(NASTY.values()), ids=list(NASTY))
async def test_value_arrives_verbatim_as_one_argument(site: Site, value: str) -> None:
    assert await round_trip(site, value) == (value, value)


async def test_very_long_value(site: Site) -> None:
    value = "".join(f"{i:05d};$(id)`id`|" for i in range(3500))  # 59,500 chars
    out_argv, out_shell = await round_trip(site, value)
    # Only the last TAIL bytes of stdout come back; they end the value exactly.
    assert out_argv == out_shell == value[-TAIL:]


# Any string a user can send: every Unicode scalar value but NUL (lone surrogates
# cannot be encoded as UTF-8 at all; the client refuses them, see below).
VALUES = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
                 max_size=200)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=VALUES | st.lists(st.sampled_from(list(NASTY.values())[:-1]) | VALUES,
                               max_size=4).map("".join))
async def test_any_value_arrives_verbatim(site: Site, value: str) -> None:
    assert await round_trip(site, value) == (value, value)


async def test_a_string_that_is_not_unicode_text_is_refused_by_the_client(site: Site) -> None:
    """A lone surrogate cannot be encoded: a clear error, nothing sent, the client goes on."""
    with pytest.raises(tidewater.InvalidRequest, match="cannot be encoded"):
        await site.client.submit(ARGV_APP, site="hpc", params={"x": "\ud800"})
    assert await round_trip(site, "still fine") == ("still fine", "still fine")
