"""``GET /metrics`` of a real controller, parsed as Prometheus does, against the tasks it ran."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tidewater

from .procs import Cluster, cluster, until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("store")]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
FINAL = {"JOB_FINISHED", "FAILED", "KILLED"}


async def scrape(c: Cluster, token: str | None) -> tuple[int, str]:
    url = c.url.replace("ws://", "http://") + "/metrics"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, await r.text()


async def samples(c: Cluster, token: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type, as Prometheus parses them."""
    status, text = await scrape(c, token)
    assert status == 200, text
    out: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out, types


def get(s: Samples, name: str, **labels: str) -> float:
    return s.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_match_the_tasks_run_and_the_pilots_connected(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_controller()
        root = await c.add_user("root")  # the first user: an admin
        alice = await c.add_user("alice")
        async with tidewater.connect(c.url, token=alice) as cl:
            _, laptop_token = await cl.add_site("laptop")
            await cl.add_site("far")  # no pilot ever: its tasks wait
            for site in ("laptop", "far"):
                await cl.add_app(site, "hello", "echo hello {name}")
                await cl.add_app(site, "fails", "/bin/false")
            s, _ = await samples(c, root)
            assert get(s, "tidewater_pilots_connected", user="alice", site="laptop") == 0

            await c.start_pilot(laptop_token, pilot_id="m1", cores=2)
            ok = [await cl.submit("hello", site="laptop", params={"name": f"n{i}"})
                  for i in range(5)]
            bad = await cl.submit("fails", site="laptop", max_retries=0)
            waiting = [await cl.submit("hello", site="far", params={"name": "w"})
                       for _ in range(3)]
            await cl.cancel([waiting[0]])
            infos = await cl.wait([*ok, bad, waiting[0]])
            assert [i.state for i in infos] == ["JOB_FINISHED"] * 5 + ["FAILED", "KILLED"]

            listed = await cl.tasks(limit=1000)
            real = Counter((t.site, t.state) for t in listed)
            started = Counter(t.site for t in listed if t.started_at is not None)
            s, types = await samples(c, root)

            # Tasks by state and site: live ones a gauge, final ones counted as they end.
            assert types["tidewater_tasks"] == "gauge"
            assert types["tidewater_tasks_ended"] == "counter"
            for (site, state), n in real.items():
                name = "tidewater_tasks_ended_total" if state in FINAL else "tidewater_tasks"
                assert get(s, name, user="alice", site=site, state=state) == n, (site, state)
            assert real[("far", "STAGED_IN")] == 2
            shown = {(dict(k[1])["site"], dict(k[1])["state"]): v for k, v in s.items()
                     if k[0] in ("tidewater_tasks", "tidewater_tasks_ended_total")}
            assert shown == dict(real)  # and nothing else
            assert get(s, "tidewater_tasks_submitted_total") == len(listed) == 9
            assert get(s, "tidewater_tasks_finished_total") == 5
            assert get(s, "tidewater_live_tasks") == 2

            # One observation per task started; the buckets add up to it.
            assert started == {"laptop": 6}
            for name in ("tidewater_task_start_latency_seconds",
                         "tidewater_dispatch_latency_seconds"):
                assert types[name] == "histogram"
                assert get(s, f"{name}_count", user="alice", site="laptop") == 6
                assert get(s, f"{name}_bucket", user="alice", site="laptop", le="+Inf") == 6
                assert 0 < get(s, f"{name}_sum", user="alice", site="laptop") < 60
                assert get(s, f"{name}_count", user="alice", site="far") == 0
            longest = max(t.started_at - t.created_at for t in listed if t.started_at)
            assert get(s, "tidewater_task_start_latency_seconds_sum", user="alice",
                       site="laptop") <= 6 * longest + 1e-6

            # Connections, frames, the store, the process.
            assert get(s, "tidewater_pilots_connected", user="alice", site="laptop") == 1
            assert get(s, "tidewater_pilots_connected", user="alice", site="far") == 0
            assert get(s, "tidewater_agents_connected", user="alice", site="laptop") == 0
            assert get(s, "tidewater_clients_connected") == 1  # this client
            for role in ("client", "pilot"):
                assert get(s, "tidewater_frames_received_total", role=role) > 0
                assert get(s, "tidewater_frames_sent_total", role=role) > 0
                assert get(s, "tidewater_frame_bytes_sent_total", role=role) > get(
                    s, "tidewater_frames_sent_total", role=role)
            assert get(s, "tidewater_store_commit_seconds_count") == get(
                s, "tidewater_store_batches_total") > 0
            assert get(s, "tidewater_store_batch_ops_sum") == get(s, "tidewater_store_ops_total")
            assert get(s, "process_resident_memory_bytes") > 10_000_000

            await c.pilots["m1"].stop()

            async def pilot_gone() -> bool:
                s, _ = await samples(c, root)
                return get(s, "tidewater_pilots_connected", user="alice", site="laptop") == 0

            await until(pilot_gone, timeout=20, what="the pilots gauge to drop to 0")

        # Admins only: another user, a bad token or none get "not found".
        for token in (alice, "twu_0123456789abcdef.x", None):
            status, text = await scrape(c, token)
            assert status == 404 and "tidewater" not in text
