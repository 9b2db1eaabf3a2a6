"""The controller: the single source of truth, reached over websockets."""

from .app import Server, serve
from .service import ControllerService

__all__ = ["ControllerService", "Server", "serve"]
