"""Where a client's controller URL, token, CA file and default site come from.

A per-user file, ``$XDG_CONFIG_HOME/tidewater/config.toml`` (by default
``~/.config/tidewater/config.toml``), holds named profiles::

    default_profile = "polaris"

    [profiles.polaris]
    url = "wss://tidewater.example.org:8765"
    token_file = "/home/me/.config/tidewater/polaris.token"   # mode 0600
    ca_file = ""
    site = "polaris"

Each value is taken from the first of: a command-line flag, the environment
(``TIDEWATER_URL``, ``TIDEWATER_TOKEN``, ``TIDEWATER_CA_FILE``,
``TIDEWATER_SITE``), the selected profile, a built-in default. The profile
is the one named by ``--profile``, else ``TIDEWATER_PROFILE``, else the
file's ``default_profile``. A token comes from a flag or the environment,
else from the profile's ``token_file``.

:func:`resolve` is pure (flags, environment and the parsed file in, values
with their sources out); reading and writing files happens in the functions
below it. ``tidewater login`` writes profiles, ``tidewater config show``
prints what :func:`resolve` found, and :func:`tidewater.connect` uses the
same resolution for what it is not given.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .tomlw import toml_key, toml_string

FIELDS = ("url", "token_file", "ca_file", "site")
"""What a profile holds."""

ENV = {"url": "TIDEWATER_URL", "token": "TIDEWATER_TOKEN", "ca_file": "TIDEWATER_CA_FILE",
       "site": "TIDEWATER_SITE"}
DEFAULT_URL = "ws://127.0.0.1:8765"


@dataclass(frozen=True)
class Setting:
    """One resolved value and where it came from (``flag --url``, ``env TIDEWATER_URL``,
    ``profile NAME in FILE``, ``default``, or ``unset``)."""

    value: str
    source: str


@dataclass(frozen=True)
class Config:
    """A parsed config file: its profiles and the default profile's name."""

    path: Path
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)
    default_profile: str = ""


@dataclass(frozen=True)
class Resolved:
    """What a client connects with: each value with its source; ``profile`` is the
    selected profile's name ("" for none) with how it was selected."""

    profile: Setting
    url: Setting
    token: Setting
    token_file: Setting
    ca_file: Setting
    site: Setting

    def settings(self) -> dict[str, Setting]:
        return {"profile": self.profile, "url": self.url, "token": self.token,
                "token_file": self.token_file, "ca_file": self.ca_file, "site": self.site}


def config_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/tidewater``, else ``~/.config/tidewater``."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base).expanduser() / "tidewater"


def config_path(env: Mapping[str, str]) -> Path:
    return config_dir(env) / "config.toml"


def parse_config(path: Path, text: str) -> Config:
    """The profiles in ``text`` (the file at ``path``). Raises ConfigError naming the
    file for bad TOML, an unknown key or a value that is not a string."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(raw) - {"default_profile", "profiles"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}: "
                          "the file holds default_profile and [profiles.NAME] tables")
    default = raw.get("default_profile", "")
    profiles = raw.get("profiles", {})
    if not isinstance(default, str) or not isinstance(profiles, dict):
        raise ConfigError(f"{path}: default_profile is a string, profiles a table of tables")
    out: dict[str, dict[str, str]] = {}
    for name, prof in profiles.items():
        if not isinstance(prof, dict):
            raise ConfigError(f"{path}: profiles.{name} is not a table")
        bad = set(prof) - set(FIELDS)
        if bad:
            raise ConfigError(f"{path}: profiles.{name}: unknown key(s) "
                              f"{', '.join(sorted(bad))} (known: {', '.join(FIELDS)})")
        for k, v in prof.items():
            if not isinstance(v, str):
                raise ConfigError(f"{path}: profiles.{name}.{k} must be a string")
        out[name] = dict(prof)
    return Config(path, out, default)


def resolve(flags: Mapping[str, str | None], env: Mapping[str, str], config: Config) -> Resolved:
    """Each value from the first of flags, environment, profile, default (pure).

    ``flags`` maps ``profile``, ``url``, ``token``, ``ca_file``, ``site`` to
    what was given on the command line (None or missing: not given). Raises
    ConfigError for a profile named by a flag or TIDEWATER_PROFILE that the
    file does not hold.
    """
    if flags.get("profile"):
        profile = Setting(str(flags["profile"]), "flag --profile")
    elif env.get("TIDEWATER_PROFILE"):
        profile = Setting(env["TIDEWATER_PROFILE"], "env TIDEWATER_PROFILE")
    elif config.default_profile:
        profile = Setting(config.default_profile, f"default_profile in {config.path}")
    else:
        profile = Setting("", "unset")
    prof: dict[str, str] = {}
    if profile.value:
        if profile.value not in config.profiles:
            known = ", ".join(sorted(config.profiles)) or "none yet"
            raise ConfigError(
                f"no profile {profile.value!r} ({profile.source}) in {config.path} "
                f"(profiles: {known}); create it with `tidewater login URL --profile "
                f"{profile.value}`")
        prof = config.profiles[profile.value]
    where = f"profile {profile.value} in {config.path}"

    def pick(key: str, default: str = "") -> Setting:
        flag = flags.get(key)
        if flag is not None and flag != "":
            return Setting(flag, f"flag --{key.replace('_', '-')}")
        if key in ENV and env.get(ENV[key]):
            return Setting(env[ENV[key]], f"env {ENV[key]}")
        if prof.get(key):
            return Setting(prof[key], where)
        return Setting(default, "default" if default else "unset")

    return Resolved(profile=profile, url=pick("url", DEFAULT_URL), token=pick("token"),
                    token_file=pick("token_file"), ca_file=pick("ca_file"), site=pick("site"))


def load_config(env: Mapping[str, str]) -> Config:
    """The user's config file, or an empty Config when there is none. Raises ConfigError
    for a file that cannot be read or parsed."""
    path = config_path(env)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_config(path, text)


def read_token(r: Resolved) -> str:
    """The token: the resolved one, else the content of ``token_file`` ("" if neither).
    Raises ConfigError when the token file cannot be read."""
    if r.token.value:
        return r.token.value
    if not r.token_file.value:
        return ""
    f = Path(r.token_file.value).expanduser()
    try:
        return f.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {f} ({r.token_file.source}): "
                          f"{exc.strerror or exc}") from None


def connection(url: str | None, token: str | None, ca_file: str | None,
               env: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """``(url, token, ca_file)`` for a client: what is given, else the environment, else
    the selected profile of the config file ("" for what none of them has). Raises
    ConfigError for a bad config file or an unreadable token file."""
    env = os.environ if env is None else env
    flags = {"url": url, "token": token, "ca_file": ca_file}
    try:
        r = resolve(flags, env, load_config(env))
    except ConfigError:
        if url and token:
            return url, token, ca_file or ""
        raise
    u = r.url.value if r.url.source != "default" else ""
    return u, read_token(r), r.ca_file.value


def render_config(config: Config) -> str:
    """The TOML text of ``config`` (the inverse of :func:`parse_config`)."""
    lines = ["# Tidewater client profiles: `tidewater login` writes them, "
             "`tidewater config show` reads them."]
    if config.default_profile:
        lines.append(f"default_profile = {toml_string(config.default_profile)}")
    for name, prof in config.profiles.items():
        lines += ["", f"[profiles.{toml_key(name)}]"]
        lines += [f"{k} = {toml_string(prof[k])}" for k in FIELDS if k in prof]
    return "\n".join(lines) + "\n"


def save_profile(env: Mapping[str, str], name: str, profile: dict[str, str], *,
                 token: str | None, make_default: bool) -> tuple[Path, Path | None]:
    """Store ``profile`` as ``name`` in the config file (keeping the others) and, when
    ``token`` is given, the token in ``NAME.token`` beside it (mode 0600, its path
    recorded as the profile's token_file). Returns the config file and the token
    file. The config file is written aside and renamed, so a reader never sees half.
    Raises ConfigError for an unreadable config file or a name unfit for a file."""
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise ConfigError(f"profile name {name!r}: use letters, digits, '-', '_' or '.'")
    config = load_config(env)
    d = config.path.parent
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_path = None
    if token is not None:
        token_path = d / f"{name}.token"
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        profile = {**profile, "token_file": str(token_path)}
    profiles = {**config.profiles, name: {k: v for k, v in profile.items() if v}}
    default = name if make_default or not config.default_profile else config.default_profile
    new = Config(config.path, profiles, default)
    tmp = config.path.with_name(config.path.name + ".tmp")
    tmp.write_text(render_config(new))
    os.replace(tmp, config.path)
    return config.path, token_path
