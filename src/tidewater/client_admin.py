"""The async client's requests on sites, apps, batch jobs, tokens, users and the audit trail.

Mixed into :class:`tidewater.client.Client`, which supplies the connection
(``_request``); kept apart so the client module stays about tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import proto as P
from .proto import ParamSpec


class Administration:
    """Sites and apps, batch jobs, tokens, users, audit: each one request and its reply."""

    if TYPE_CHECKING:
        async def _request(self, build: Callable[[int], P.Msg], *,
                           timeout: float | None = None,
                           on_reply: Callable[[Any], bool] | None = None) -> Any: ...

    # ------------------------------------------------------------------ sites and apps

    async def add_site(self, name: str) -> tuple[P.SiteInfo, str]:
        """Create a site; returns it and its token (shown only this once)."""
        r = await self._request(lambda i: P.AddSite(req_id=i, name=name))
        return r.site, r.token

    async def sites(self) -> list[P.SiteInfo]:
        r = await self._request(lambda i: P.ListSites(req_id=i))
        return list(r.sites)

    async def create_token(self, *, site: str | None = None, name: str = "",
                           expires_in: float | None = None) -> tuple[P.TokenInfo, str]:
        """Mint a user token (or a site token with ``site``); the secret is shown only now."""
        r = await self._request(lambda i: P.CreateToken(
            req_id=i, kind="site" if site else "user", site=site, name=name,
            expires_in=expires_in))
        return r.info, r.token

    async def tokens(self, *, include_revoked: bool = False) -> list[P.TokenInfo]:
        """Your tokens, by id (never the secret)."""
        r = await self._request(lambda i: P.ListTokens(req_id=i, include_revoked=include_revoked))
        return list(r.tokens)

    async def revoke_token(self, token_id: str) -> None:
        """Revoke a token; connections using it close at once."""
        await self._request(lambda i: P.RevokeToken(req_id=i, id=token_id))

    async def add_user(self, name: str, *, admin: bool = False,
                       expires_in: float | None = None) -> str:
        """Admins: create a user; returns their token (shown only now)."""
        r = await self._request(lambda i: P.AddUser(req_id=i, name=name, admin=admin,
                                                    expires_in=expires_in))
        return r.token  # type: ignore[no-any-return]

    async def remove_user(self, name: str) -> None:
        """Admins: remove a user (tokens revoked, connections closed, data kept)."""
        await self._request(lambda i: P.RemoveUser(req_id=i, name=name))

    async def users(self) -> list[P.UserInfo]:
        r = await self._request(lambda i: P.ListUsers(req_id=i))
        return list(r.users)

    async def audit(self, *, limit: int = 100, everyone: bool = False) -> list[P.AuditEntry]:
        """Your audit trail (admins: everyone's), oldest first."""
        r = await self._request(lambda i: P.ListAudit(req_id=i, limit=limit, everyone=everyone))
        return list(r.entries)

    async def queue_submit(
        self, site: str, *, nodes: int = 1, wall_time_min: int = 30, queue: str = "",
        project: str = "",
    ) -> P.BatchJobInfo:
        """Ask the site's agent for a batch job; returns it once stored (pending_submission).

        Raises InvalidRequest when the site's limits forbid it (queue, nodes, wall time).
        """
        r = await self._request(lambda i: P.AddJob(req_id=i, job=P.JobSpec(
            site=site, nodes=nodes, wall_time_min=wall_time_min, queue=queue, project=project)))
        return r.job  # type: ignore[no-any-return]

    async def queue(self, *, site: str | None = None, include_finished: bool = False,
                    limit: int = 100) -> list[P.BatchJobInfo]:
        """Your batch jobs (the newest ``limit``), oldest first."""
        r = await self._request(lambda i: P.ListJobs(
            req_id=i, site=site, include_finished=include_finished, limit=limit))
        return list(r.jobs)

    async def queue_cancel(self, job_id: int) -> None:
        """Cancel a batch job: its agent removes it from the scheduler."""
        await self._request(lambda i: P.CancelJob(req_id=i, id=job_id))

    async def add_app(
        self, site: str, name: str, command: str = "", *,
        params: Sequence[ParamSpec] | None = None, description: str = "", replace: bool = False,
        function: str = "", hooks: P.AppHooks | None = None,
    ) -> P.AppInfo:
        """Register an app on a site: a command template (placeholders ``{name}``), or with
        ``function="pkg.mod:name"`` a Python callable that exists in the site's environment.

        ``hooks`` names callables on the site run around each task: preprocess,
        postprocess, and error/timeout handlers that choose retry or fail
        (:mod:`tidewater.hooks`)."""
        r = await self._request(lambda i: P.AddApp(
            req_id=i, site=site, name=name, command=command,
            params=list(params) if params is not None else None, description=description,
            replace=replace, function=function, hooks=hooks,
        ))
        return r.app  # type: ignore[no-any-return]

    async def apps(self, site: str | None = None) -> list[P.AppInfo]:
        r = await self._request(lambda i: P.ListApps(req_id=i, site=site))
        return list(r.apps)
