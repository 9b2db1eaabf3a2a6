"""The controller's pure core alone: CPU per task from submit to done, no I/O.

    .venv/bin/python bench/core_path.py [-n 20000] [--batch 100] [--repeats 5]

Drives ``ControllerState`` as the driver does (handlers, then what follows
each "commit" at once), with no store, sockets or processes: one site, one
pilot with ``--batch`` cores; per batch a Submit of ``--batch`` tasks, a
dispatch, their "started" reports, their "done" reports and the pilot's
credit back. Prints the CPU time per task (``time.process_time``), best of
``--repeats`` runs. A floor for what the core costs the controller per task,
to compare two versions of it (``PYTHONPATH=other/src``) far more steadily
than a whole benchmark on a shared machine can.
"""

from __future__ import annotations

import argparse
import time

import tidewater
from tidewater import proto as P
from tidewater.config import ControllerConfig
from tidewater.controller import admin, requests
from tidewater.controller.effects import Effects
from tidewater.controller.model import Principal
from tidewater.controller.state import ControllerState, Stored
from tidewater.controller.store.base import Recovered

ALICE = Principal(user_id=1, user="alice")
CLIENT, PILOT = 1, 2


class Core:
    """The core and a driver that commits at once and drops what it would send."""

    def __init__(self, cores: int) -> None:
        self.st = ControllerState(ControllerConfig())
        self.now = 1000.0
        self.run(self.st.load(Recovered(next_task=1, next_event=1, sites=[], apps=[], live=[],
                                        parents=[], jobs=[], pilots=[]), self.now))
        self.run(admin.add_site(self.st, ALICE, CLIENT, P.AddSite(req_id=1, name="s"), self.now))
        self.run(admin.add_app(self.st, ALICE, CLIENT,
                               P.AddApp(req_id=2, site="s", name="t", command="/bin/true"),
                               self.now))
        self.assigned: list[P.Assignment] = []
        self.rec, fx = self.st.pilot_hello(
            ALICE, PILOT, P.Hello(role="pilot", proto_version=1, token="", site="s",
                                  pilot_id="p", cores=cores, credit_cores=cores),
            P.Welcome(proto_version=1, server_id="x"), self.now)
        self.run(fx)

    def run(self, fx: Effects) -> None:
        for o in fx.out:
            msg = getattr(o, "msg", None)
            if isinstance(msg, P.RunTasks):
                self.assigned += msg.tasks
        if fx.after:
            self.run(self.st.committed(fx.after, self.now))
        self.st.flush()

    def batch(self, n: int, seq: int) -> None:
        msg = P.Submit(req_id=9, tasks=[P.TaskSpec(app="t", site="s") for _ in range(n)])
        plan = requests.plan_submit(self.st, ALICE, msg, self.now)
        self.run(requests.submit(self.st, ALICE, CLIENT, msg, plan, Stored(), self.now))
        self.assigned = []
        self.run(self.st.dispatch(self.now))
        for kind, k in (("started", 0), ("done", 1)):
            self.run(self.st.reports(self.rec, P.Reports(seq=seq + k, reports=[
                P.Report(task_id=a.task_id, attempt=a.attempt, kind=kind,  # type: ignore[arg-type]
                         exit_code=0, time=self.now) for a in self.assigned]), self.now))
        self.run(self.st.credit(self.rec, P.Credit(cores=n, gpus=0)))


def once(n: int, batch: int) -> float:
    core = Core(batch)
    t0 = time.process_time()
    for b in range(n // batch):
        core.batch(batch, 2 * b + 1)
    return (time.process_time() - t0) / (n // batch * batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="tasks per run")
    ap.add_argument("--batch", type=int, default=100, help="tasks per Submit (and pilot cores)")
    ap.add_argument("--repeats", type=int, default=5, help="runs; the best is printed")
    a = ap.parse_args()
    best = min(once(a.n, a.batch) for _ in range(a.repeats))
    where = tidewater.__file__.rsplit("/tidewater/", 1)[0]
    print(f"{best * 1e6:.1f} us of CPU per task in the core ({where}; {a.n} tasks, "
          f"batches of {a.batch}, best of {a.repeats})")


if __name__ == "__main__":
    main()
