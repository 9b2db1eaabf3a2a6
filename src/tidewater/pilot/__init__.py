"""The pilot: runs pushed tasks on the nodes of one allocation."""

from .main import Pilot, PilotConfig, run_pilot

__all__ = ["Pilot", "PilotConfig", "run_pilot"]
