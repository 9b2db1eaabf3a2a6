"""The controller's command vocabulary: what a pure handler asks the driver to do.

A book or :class:`~.state.ControllerState` never sends, closes, writes or
waits. It returns an :class:`Effects`:

* ``writes`` -- semantic writes (:data:`~.store.base.Write`) to commit, in order;
* ``out`` -- frames and closes to deliver at once (answers that report
  nothing new, such as a listing, or the Welcome that must come first);
* ``after`` -- what follows the commit of ``writes``, as data, in order.
  The driver hands these back to :meth:`ControllerState.committed` from the
  store's ``on_commit`` callback; that is where waiters are answered,
  watchers notified, tasks queued and acknowledgements sent. So nothing is
  announced before it is stored, and the order of announcements is the order
  of commits.

Peers are named by their id, never held: the driver owns the connections.
The commands made for every task (``Send``, ``Touched``) are plain slotted
dataclasses rather than frozen ones, which cost three times as much to
build; nothing changes them after they are made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import proto as P
from ..states import TaskState
from .model import Event, JobRec, LiveTask
from .store.base import Write


@dataclass(slots=True)
class Send:
    """Deliver ``msg`` to connection ``peer``."""

    peer: int
    msg: P.Msg


@dataclass(slots=True)
class Close:
    """Close connection ``peer`` with a websocket close ``code`` and ``reason``."""

    peer: int
    code: int
    reason: str


Out = Send | Close


@dataclass(slots=True)
class Touched:
    """A task's transitions in one commit, and the state that commit wrote.

    Memory may be ahead of ``written`` by the time the commit lands (a later
    report is already applied), so what follows is judged by ``written``.
    """

    task: LiveTask
    events: list[Event]
    written: TaskState


@dataclass(frozen=True, slots=True)
class KillOnPilot:
    """Tell pilot ``pilot_id`` (on its connection at commit time) to stop these attempts."""

    pilot_id: str
    tasks: list[tuple[int, int]]
    reason: str


@dataclass(frozen=True, slots=True)
class JobEnded:
    """A batch job reached a final state: its token's sessions close, its pilots are let go."""

    job: JobRec


@dataclass(frozen=True, slots=True)
class JobStart:
    """Push a committed batch job to its site's agent, with the pilot token's secret."""

    job: JobRec
    pilot_token: str


@dataclass(frozen=True, slots=True)
class AgentOwes:
    """The site's agent is welcomed and has its jobs: send it every transfer it owes."""

    site_id: int
    peer: int


@dataclass(frozen=True, slots=True)
class CloseSessions:
    """Close every connection authenticated by one of ``token_ids``."""

    token_ids: list[str]
    reason: str


@dataclass(frozen=True, slots=True)
class PilotStored:
    """The pilot's row is committed: its credit may reach the dispatcher."""

    pilot_id: str
    peer: int


After = (Out | Touched | KillOnPilot | JobEnded | JobStart | AgentOwes | CloseSessions
         | PilotStored)


@dataclass(slots=True)
class Effects:
    """Writes to commit, frames to send now, and what follows the commit."""

    writes: list[Write] = field(default_factory=list)
    out: list[Out] = field(default_factory=list)
    after: list[After] = field(default_factory=list)
    wake: bool = False
    """The dispatcher has something new to match (a task queued, credit granted)."""

    def send(self, peer: int, msg: P.Msg) -> None:
        self.out.append(Send(peer, msg))

    def reply(self, peer: int, msg: P.Msg) -> None:
        """Send ``msg`` once this handler's writes are committed."""
        self.after.append(Send(peer, msg))

    def extend(self, other: Effects) -> Effects:
        self.writes.extend(other.writes)
        self.out.extend(other.out)
        self.after.extend(other.after)
        self.wake = self.wake or other.wake
        return self

    def __bool__(self) -> bool:
        return bool(self.writes or self.out or self.after or self.wake)
