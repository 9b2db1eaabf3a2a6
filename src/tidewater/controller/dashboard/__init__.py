"""The web dashboard, served by the controller process on a port of its own.

``tidewater server --dashboard-port PORT`` turns it on (off by default).
:mod:`.handlers` holds the handlers, :mod:`.link` the dashboard's in-process
connection to the driver, :mod:`.sessions` the login sessions and
:mod:`.views` the JSON; ``static/`` the page itself (plain HTML, CSS and
JavaScript, no build step). docs/dashboard.md describes what it shows.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import web

from ...config import ControllerConfig
from ...errors import CannotListen, bind_reason
from .handlers import Dashboard

if TYPE_CHECKING:
    from ..service import ControllerService

__all__ = ["Dashboard", "dashboard_listener"]

log = logging.getLogger("tidewater.controller.dashboard")


@asynccontextmanager
async def dashboard_listener(service: ControllerService, config: ControllerConfig,
                             ssl_context: ssl.SSLContext | None) -> AsyncIterator[str]:
    """Listen with the dashboard on ``config.dashboard_port``; yields its url.

    Yields ``""`` and listens on nothing when the port is None. At exit every
    session ends and the listener closes (within ``Timeouts.close``). Raises
    OSError when the port cannot be bound.
    """
    if config.dashboard_port is None:
        yield ""
        return
    dash = Dashboard(service, secure=ssl_context is not None)
    runner = web.AppRunner(dash.app, handle_signals=False, access_log=None,
                           shutdown_timeout=config.timeouts.close / 2)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.dashboard_host, config.dashboard_port,
                           reuse_address=True, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise CannotListen("the dashboard", config.dashboard_host, config.dashboard_port,
                               bind_reason(exc), "--dashboard-port") from None
        addr: Any = runner.addresses[0]
        host = config.dashboard_host
        shown = f"[{host}]" if ":" in host else host
        url = f"{'https' if ssl_context is not None else 'http'}://{shown}:{int(addr[1])}"
        log.info("dashboard listening on %s", url)
        yield url
    finally:
        dash.close()
        with anyio.move_on_after(config.timeouts.close, shield=True):
            await runner.cleanup()
