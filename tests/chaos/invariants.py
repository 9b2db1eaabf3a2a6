"""What must hold after any fault, checked from the store and from the tasks' own ledger.

The chaos workload's command tasks append ``<task id> <attempt>`` to a ledger
file outside every work directory (``$TIDEWATER_TASK_ID $TIDEWATER_ATTEMPT``,
set by the pilot), so the ledger is the ground truth of what actually ran,
whatever the controller believes. :func:`check` compares three sources:

* the tasks the client was acknowledged (the ids ``submit_many`` returned),
* the store's ``tasks`` and ``events`` rows, read directly,
* the ledger,

and returns a :class:`Verdict` listing every violation of these invariants:

1. every acknowledged task is in the store and in exactly one final state,
   and nothing in the store is left non-final once the system is quiet;
2. every task's events are a legal path through ``states.TRANSITIONS``:
   the first comes from CREATED, each starts where the previous one ended,
   the last ends in the task's stored state, and only the last is final --
   except that a user's retry (an event out of FAILED allowed by
   ``states.RETRY`` and marked ``retry`` in its data) may leave a final state;
3. an attempt is *recorded* when an event names it (its RUNNING event, or the
   RUN_TIMEOUT/RUN_ERROR that ended it); every execution in the ledger is a
   recorded attempt, and no attempt ran twice. A task may run more than once
   only as distinct recorded attempts (one was lost with its pilot, or failed);
4. a task that finished ran: its final attempt is in the ledger;
5. optionally, ``kept``: tasks that must have run once, as attempt 1, with
   their first result accepted (a pilot partitioned for less than its lease
   keeps its work).

The checker is pure (rows in, verdict out) so tests/chaos/test_invariants.py
can feed it hand-made violations and see each one caught.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidewater.states import FINAL, TaskState, can_retry, can_transition

TASK_COLUMNS = "id, state, attempt, retries, pilot"
"""What :func:`check` reads of ``tasks`` (in this order)."""
EVENT_COLUMNS = "task_id, from_state, to_state, data"
"""What :func:`check` reads of ``events`` (in this order, ``ORDER BY id``)."""


@dataclass
class Verdict:
    """The outcome of :func:`check`: counts for the report, and every violation found."""

    tasks: int = 0
    retried: int = 0  # tasks that needed more than one attempt
    lost: int = 0  # acknowledged but missing from the store or not final
    unrecorded: int = 0  # executions in the ledger that no event accounts for
    duplicates: int = 0  # (task, attempt) pairs that ran more than once
    states: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def bad(self, what: str, kind: str = "other") -> None:
        self.violations.append(what)
        self.kinds[kind] += 1

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self, limit: int = 15) -> str:
        head = "\n  ".join(self.violations[:limit])
        more = len(self.violations) - limit
        return (f"{len(self.violations)} invariant violations"
                f"{f' (first {limit})' if more > 0 else ''}:\n  {head}")


def assert_holds(v: Verdict) -> None:
    """Raise AssertionError listing the violations, if any."""
    if not v.ok:
        raise AssertionError(v.summary())


def read_ledger(path: Path) -> list[tuple[int, int]]:
    """The ``(task id, attempt)`` executions a ledger file records, in order."""
    if not path.exists():
        return []
    out: list[tuple[int, int]] = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((int(parts[0]), int(parts[1])))
    return out


def _data(raw: object) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (bytes, str)):
        value = json.loads(raw)
        return value if isinstance(value, dict) else {}
    return {}


def check(
    acknowledged: Iterable[int],
    tasks: Sequence[tuple[Any, ...]],
    events: Sequence[tuple[Any, ...]],
    ledger: Sequence[tuple[int, int]],
    *,
    ledgered: Iterable[int] | None = None,
    kept: Iterable[int] = (),
) -> Verdict:
    """Check the invariants (module docstring) and return the verdict; never raises on bad data.

    ``tasks`` rows are :data:`TASK_COLUMNS`, ``events`` rows :data:`EVENT_COLUMNS` in id
    order, ``ledger`` the executions. ``ledgered``: the tasks that write to the ledger
    (default: every acknowledged task); the others are exempt from invariant 4.
    """
    v = Verdict()
    acked = set(acknowledged)
    v.tasks = len(acked)
    stored = {int(r[0]): r for r in tasks}
    by_task: dict[int, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)
    for task_id, src, dst, raw in events:
        by_task[int(task_id)].append((str(src), str(dst), _data(raw)))

    # 1. one final state each; nothing left behind
    for tid in sorted(acked):
        row = stored.get(tid)
        if row is None:
            v.lost += 1
            v.bad(f"task {tid} was acknowledged but is not in the store")
        elif row[1] not in FINAL:
            v.lost += 1
            v.bad(f"task {tid} is left in {row[1]} (not final)")
    for tid, row in stored.items():
        v.states[str(row[1])] += 1
        if tid not in acked and row[1] not in FINAL:
            v.bad(f"task {tid} (not acknowledged to the client) is left in {row[1]}")
        if int(row[3]) > 0:
            v.retried += 1

    # 2. legal paths
    recorded: dict[int, set[int]] = defaultdict(set)
    for tid, row in stored.items():
        path = by_task.get(tid, [])
        if not path:
            v.bad(f"task {tid} has no events")
            continue
        cur = TaskState.CREATED.value
        finals = 0
        for src, dst, data in path:
            if src != cur:
                v.bad(f"task {tid}: event {src}->{dst} does not start where the last ended ({cur})")
            retried = False
            try:
                legal = can_transition(TaskState(src), TaskState(dst))
                retried = not legal and "retry" in data and can_retry(TaskState(src),
                                                                      TaskState(dst))
            except ValueError:
                legal = False
            if not (legal or retried):
                v.bad(f"task {tid}: illegal transition {src}->{dst}")
            if retried:
                finals -= 1  # the final state it left no longer counts
            if dst in FINAL:
                finals += 1
            if "attempt" in data:
                recorded[tid].add(int(data["attempt"]))
            cur = dst
        if cur != row[1]:
            v.bad(f"task {tid}: events end in {cur} but the store says {row[1]}")
        if finals > 1:
            v.bad(f"task {tid} reached a final state {finals} times")

    # 3. executions are recorded attempts, each at most once
    runs = Counter(ledger)
    for (tid, attempt), n in sorted(runs.items()):
        if n > 1:
            v.duplicates += n - 1
            v.bad(f"task {tid} attempt {attempt} ran {n} times")
        if attempt not in recorded.get(tid, set()):
            v.unrecorded += 1
            v.bad(f"task {tid} ran as attempt {attempt}, which no event records "
                  f"(recorded: {sorted(recorded.get(tid, set()))})", kind="unrecorded")

    # 4. a finished task ran, as its final attempt
    ran = defaultdict(set)
    for tid, attempt in ledger:
        ran[tid].add(attempt)
    for tid in sorted(acked if ledgered is None else set(ledgered)):
        row = stored.get(tid)
        if row is not None and row[1] == TaskState.JOB_FINISHED and int(row[2]) not in ran[tid]:
            v.bad(f"task {tid} finished as attempt {row[2]} but the ledger has "
                  f"{sorted(ran[tid]) or 'no run'}")

    # 5. kept work: one run, attempt 1, its result accepted once
    for tid in sorted(set(kept)):
        row = stored.get(tid)
        if row is None:
            continue  # already reported
        finished = sum(1 for _s, d, _x in by_task.get(tid, []) if d == TaskState.JOB_FINISHED)
        if (row[1], int(row[2]), int(row[3])) != (TaskState.JOB_FINISHED, 1, 0) or finished != 1:
            v.bad(f"task {tid} should have kept its first attempt: state {row[1]}, "
                  f"attempt {row[2]}, retries {row[3]}, {finished} JOB_FINISHED events")
        if sorted(a for t, a in ledger if t == tid) != [1]:
            v.bad(f"task {tid} should have run once as attempt 1: ledger "
                  f"{sorted(a for t, a in ledger if t == tid)}")
    return v
