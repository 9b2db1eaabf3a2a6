"""Sites and apps, as their owners register them. Pure.

A site belongs to one user and is known by its name among that user's
sites; an app is registered on one site, as a command template (its
parameters declared and checked at submit, see :mod:`tidewater.apps`) or as
a Python callable named by import path that exists on the site. Code never
travels over the wire.
"""

from __future__ import annotations

import msgspec

from .. import apps as appmod
from .. import codec
from .. import proto as P
from ..errors import AppError, InvalidRequest, NotFound
from .model import AppRec, Principal, SiteRec
from .store.base import SiteRow


class Registry:
    """Every site and app of the store (there are few; all live in memory)."""

    def __init__(self) -> None:
        self.sites: dict[int, SiteRec] = {}
        self.site_names: dict[tuple[int, str], int] = {}
        self.apps: dict[tuple[int, str], AppRec] = {}
        self.next_site = 1

    def load(self, sites: list[SiteRow], apps: list[AppRec]) -> None:
        for s in sites:
            self.sites[s.id] = SiteRec(s.id, s.owner_id, s.name, s.created_at)
            self.site_names[(s.owner_id, s.name)] = s.id
            self.next_site = max(self.next_site, s.id + 1)
        for a in apps:
            self.apps[(a.site_id, a.name)] = a

    def site_of(self, who: Principal, name: str) -> SiteRec:
        """``who``'s site called ``name``. Raises NotFound (also for a site token of another)."""
        sid = self.site_names.get((who.user_id, name))
        if sid is None or (who.site_id is not None and who.site_id != sid):
            raise NotFound(f"no site named {name!r}; create it with `tidewater site add {name}`")
        return self.sites[sid]

    def site_name(self, site_id: int) -> str:
        site = self.sites.get(site_id)
        return site.name if site is not None else "?"

    def new_site(self, who: Principal, name: str, now: float) -> SiteRec:
        """A new site of ``who`` (in memory; the caller stores it). Raises InvalidRequest."""
        appmod.check_name("site", name)
        if (who.user_id, name) in self.site_names:
            raise InvalidRequest(f"site {name!r} already exists", "exists")
        rec = SiteRec(self.next_site, who.user_id, name, now)
        self.next_site += 1
        self.sites[rec.id] = rec
        self.site_names[(who.user_id, name)] = rec.id
        return rec

    def owned_sites(self, who: Principal) -> list[SiteRec]:
        return [s for s in self.sites.values() if s.owner_id == who.user_id]

    def app(self, site: SiteRec, name: str) -> AppRec | None:
        return self.apps.get((site.id, name))

    def app_names(self, site_id: int) -> list[str]:
        return sorted(a.name for a in self.apps.values() if a.site_id == site_id)

    def put_app(self, site: SiteRec, msg: P.AddApp) -> AppRec:
        """Register (or with ``replace``, change) an app. Raises AppError, InvalidRequest."""
        appmod.check_name("app", msg.name)
        if msg.function:
            if msg.command or msg.params:
                raise AppError("a function app has an import path, not a command or parameters")
            try:
                codec.check_import_path(msg.function)
            except ValueError as exc:
                raise AppError(str(exc)) from None
            specs: list[P.ParamSpec] = []
        else:
            specs = appmod.declare_params(msg.command, msg.params)
        hooks = msg.hooks if msg.hooks and any(msgspec.structs.astuple(msg.hooks)) else None
        for hook, path in (msgspec.structs.asdict(hooks) if hooks else {}).items():
            if path:
                try:
                    codec.check_import_path(path)
                except ValueError as exc:
                    raise AppError(f"hook {hook}: {exc}") from None
        if (site.id, msg.name) in self.apps and not msg.replace:
            raise AppError(
                f"app {msg.name!r} already exists on site {site.name!r} (pass replace to change it)"
            )
        rec = AppRec(site.id, msg.name, msg.command, specs, msg.description, msg.function, hooks)
        self.apps[(site.id, msg.name)] = rec
        return rec

    def app_info(self, rec: AppRec) -> P.AppInfo:
        return P.AppInfo(site=self.sites[rec.site_id].name, name=rec.name, command=rec.command,
                         params=rec.params, description=rec.description, function=rec.function,
                         hooks=rec.hooks)

    def list_apps(self, who: Principal, site: str | None) -> list[P.AppInfo]:
        out = []
        for rec in self.apps.values():
            s = self.sites[rec.site_id]
            if s.owner_id != who.user_id or (site is not None and site != s.name):
                continue
            out.append(self.app_info(rec))
        return out
