"""Requests that manage rather than run: sites, apps, batch jobs, tokens and users. Pure.

Each function is a handler of :class:`~.state.ControllerState` (the state
is its first argument) composing the registry, the job book and the token
book, and returns :class:`~.effects.Effects`. Stored rows a handler needs
(token rows, users, audit entries) are read by the driver first and passed
in. No await, no clock, no connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import proto as P
from . import access
from .effects import Effects, Send
from .model import Principal, TokenRow
from .store import schema

if TYPE_CHECKING:
    from .state import ControllerState


def add_site(st: ControllerState, who: Principal, peer: int, msg: P.AddSite,
             now: float) -> Effects:
    site = st.registry.new_site(who, msg.name, now)
    minted, token_write = access.mint("site", who.user_id, site_id=site.id, name="site token",
                                      now=now)
    fx = Effects(writes=[
        schema.insert_site(site.id, who.user_id, site.name, minted.id, site.created_at),
        token_write,
        access.audit(who, "site.add", site.name, now, token=minted.id),
    ])
    info = P.SiteInfo(name=site.name, created_at=site.created_at)
    fx.reply(peer, P.SiteAdded(req_id=msg.req_id, site=info, token=minted.token))
    return fx


def list_sites(st: ControllerState, who: Principal, peer: int, msg: P.ListSites,
               now: float) -> Effects:
    out = [st.site_info(rec, now) for rec in st.registry.owned_sites(who)]
    return Effects(out=[Send(peer, P.SiteList(req_id=msg.req_id, sites=out))])


def add_app(st: ControllerState, who: Principal, peer: int, msg: P.AddApp,
            now: float) -> Effects:
    site = st.registry.site_of(who, msg.site)
    rec = st.registry.put_app(site, msg)
    fx = Effects(writes=[
        schema.upsert_app(rec, now),
        access.audit(who, "app.add", f"{site.name}/{msg.name}",
                     now, command=msg.command or msg.function, replace=msg.replace),
    ])
    fx.reply(peer, P.AppAdded(req_id=msg.req_id, app=st.registry.app_info(rec)))
    return fx


def list_apps(st: ControllerState, who: Principal, peer: int, msg: P.ListApps) -> Effects:
    return Effects(out=[Send(peer, P.AppList(req_id=msg.req_id,
                                              apps=st.registry.list_apps(who, msg.site)))])


def add_job(st: ControllerState, who: Principal, peer: int, msg: P.AddJob,
            now: float) -> Effects:
    site = st.registry.site_of(who, msg.job.site)
    return st.jobs.add_job(who, peer, msg, site, now)


def list_jobs(st: ControllerState, who: Principal, peer: int, msg: P.ListJobs,
              now: float) -> Effects:
    return st.jobs.list_jobs(who, peer, msg, st.registry.site_name, now)


def agent_hello(st: ControllerState, who: Principal, peer: int, hello: P.Hello,
                welcome: P.Welcome, now: float) -> tuple[int, Effects]:
    """An agent connected: its site id, and the Effects of welcoming it."""
    site = st.registry.sites.get(who.site_id) if who.site_id is not None else None
    fx = st.jobs.agent_hello(who, peer, hello, welcome, site, now)
    assert site is not None  # agent_hello refused anything else
    st.demand_dirty.add(site.id)
    return site.id, fx


def request_job(st: ControllerState, site_id: int, peer: int, msg: P.RequestJob,
                now: float) -> Effects:
    return st.jobs.request_job(st.registry.sites[site_id], msg, now)


# ---------------------------------------------------------------------- tokens and users

def create_token(st: ControllerState, who: Principal, peer: int, msg: P.CreateToken,
                 live_count: int, now: float) -> Effects:
    site = None
    if msg.kind == "site" and msg.site and who.site_id is None:
        site = st.registry.site_of(who, msg.site)
    return st.tokens.create(who, peer, msg, live_count, site, now)


def list_tokens(st: ControllerState, who: Principal, peer: int, msg: P.ListTokens,
                rows: Sequence[TokenRow]) -> Effects:
    def site_name(site_id: int) -> str | None:
        site = st.registry.sites.get(site_id)
        return site.name if site is not None else None

    return st.tokens.list(who, peer, msg, rows, site_name)
