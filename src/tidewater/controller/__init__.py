"""The controller: the single source of truth, reached over websockets."""

from .app import Server, serve
from .core import Controller

__all__ = ["Controller", "Server", "serve"]
