"""`GET /metrics`: scraped with prometheus_client's own parser during a real run
(the real Host, real Runners with the fake executor and fake NVML), and every
value checked against what the API says: nodes, cores and GPUs in use, tasks
by state, pending by user and reason, per-GPU stats; who may scrape; label
cardinality; the Grafana dashboard's queries."""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hakuriver.config import MetricsConfig, config_from_dict
from hakuriver.errors import ConfigError
from hakuriver.host.app import check_host_config
from hakuriver.host.metrics import REASON_CATEGORIES, reason_category
from tests.harness.polling import apoll

from .cluster import FAST_LIVENESS, InProcCluster
from .conftest import ClusterFactory

ADMIN_TOKEN = "admin-" + secrets.token_urlsafe(16)
RUNNER_TOKEN = "runner-" + secrets.token_urlsafe(16)
SCRAPE_TOKEN = "scrape-" + secrets.token_urlsafe(16)
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(inproc: InProcCluster, token: str | None = SCRAPE_TOKEN) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(inproc.url + "/metrics", headers=headers) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def parse(text: str) -> Samples:
    """{(sample name, labels): value} through the library's own text parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


async def metrics_cluster(factory: ClusterFactory) -> InProcCluster:
    return await factory(
        token=ADMIN_TOKEN,
        config_overrides={
            "auth": {"token": "", "admin_token": ADMIN_TOKEN, "runner_token": RUNNER_TOKEN},
            "metrics": {"scrape_token": SCRAPE_TOKEN},
        },
    )


async def api_view(inproc: InProcCluster) -> dict[str, Any]:
    """What the API says, in the metrics' terms."""
    client = inproc.client
    nodes = (await client.nodes())["nodes"]
    tasks = (await client.list_tasks(limit=1000))["tasks"]
    pending = [t for t in tasks if t["state"] == "pending"]
    return {
        "nodes": Counter("online" if n["online"] else "offline" for n in nodes),
        "cores": {n["hostname"]: n["cores"] for n in nodes},
        "cores_used": {n["hostname"]: n["allocated"]["cores"] for n in nodes},
        "gpus": {n["hostname"]: len(n["gpus"]) for n in nodes},
        "gpus_used": {n["hostname"]: len(n["allocated"]["gpus"]) for n in nodes},
        "tasks": Counter(t["state"] for t in tasks),
        "health": (await client.health())["tasks"],
        "pending": Counter(
            (t["owner"], "dependency" if t["waiting_for"] else reason_category(t["pending_reason"])) for t in pending
        ),
        "ids": {t["task_id"] for t in tasks},
    }


def metrics_view(samples: Samples) -> dict[str, Any]:
    """The same, from one scrape."""
    return {
        "nodes": Counter({k: int(v) for k, v in by_label(samples, "hakuriver_nodes", "state").items() if v}),
        "cores": {k: int(v) for k, v in by_label(samples, "hakuriver_node_cores", "node").items()},
        "cores_used": {k: int(v) for k, v in by_label(samples, "hakuriver_node_cores_allocated", "node").items()},
        "gpus": {k: int(v) for k, v in by_label(samples, "hakuriver_node_gpus", "node").items()},
        "gpus_used": {k: int(v) for k, v in by_label(samples, "hakuriver_node_gpus_allocated", "node").items()},
        "tasks": Counter({k: int(v) for k, v in by_label(samples, "hakuriver_tasks", "state").items() if v}),
        "pending": Counter(
            {
                (dict(k[1])["user"], dict(k[1])["reason"]): int(v)
                for k, v in samples.items()
                if k[0] == "hakuriver_tasks_pending"
            }
        ),
    }


async def test_a_scrape_during_a_run_matches_the_api(inproc_factory: ClusterFactory, fake_nvml: None) -> None:
    inproc = await metrics_cluster(inproc_factory)
    await inproc.add_runner("cpu1")
    await inproc.add_runner("gpu1", gpus=2)
    cores = (await inproc.client.node("cpu1"))["cores"]
    alice = (await inproc.client.add_user("alice"))["token"]

    # A run: finished tasks, tasks holding cores and a GPU, and tasks waiting
    # for different reasons (a reservation for it, a dependency), of two owners.
    done = await inproc.submit(["fake", "exit", "0"], targets=["cpu1"])
    failed = await inproc.submit(["fake", "exit", "3"], targets=["cpu1"])
    hang = await inproc.submit(["fake", "hang"], targets=["cpu1"])
    gpu_hang = await inproc.submit(["fake", "hang"], gpus=1)
    await inproc.wait_state(done, "completed")
    await inproc.wait_state(failed, "failed")
    await inproc.wait_state(hang, "running")
    await inproc.wait_state(gpu_hang, "running")
    blocked = await inproc.submit(["fake", "exit", "0"], targets=["cpu1"], cores=cores)  # cpu1 has a core busy
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {alice}"}) as session:
        body = {"command": ["fake", "exit", "0"], "after_any": [hang]}
        async with session.post(inproc.url + "/api/tasks", json=body) as resp:
            assert resp.status == 201, await resp.text()
            waiting = (await resp.json())["task_ids"][0]

    async def settled() -> tuple[dict[str, Any], Samples] | None:
        api = await api_view(inproc)
        status, content_type, text = await scrape(inproc)
        assert status == 200, text
        samples = parse(text)
        seen = metrics_view(samples)
        reasons_known = all(r != "position" for _, r in api["pending"])  # a pass has looked at them
        if reasons_known and all(seen[k] == api[k] for k in seen):
            return api, samples
        return None

    api, samples = await apoll(settled, timeout=20, interval=0.05, what="a scrape that agrees with the API")

    # What a person reading the dashboard would see, spelled out.
    assert api["nodes"] == {"online": 2}
    assert value(samples, "hakuriver_nodes", state="online") == 2
    assert value(samples, "hakuriver_nodes", state="offline") == 0
    assert value(samples, "hakuriver_node_cores_allocated", node="cpu1") == 1
    assert value(samples, "hakuriver_node_gpus", node="gpu1") == 2
    assert value(samples, "hakuriver_node_gpus_allocated", node="gpu1") == 1
    for state, n in {"completed": 1, "failed": 1, "running": 2, "pending": 2}.items():
        assert value(samples, "hakuriver_tasks", state=state) == n, state
        assert api["health"][state] == n, state  # /api/health: the same in-memory counts
    assert value(samples, "hakuriver_tasks_pending", user="admin", reason="reserved") == 1, api["pending"]
    assert value(samples, "hakuriver_tasks_pending", user="alice", reason="dependency") == 1

    # Per-GPU stats come from gpu1's heartbeats (tests/fakes/nvml: GPU i reports
    # 10*i % utilisation, (i+1) GiB used, 40+i °C, 75+i W).
    async def gpu_stats() -> Samples | None:
        got = parse((await scrape(inproc))[2])
        return got if value(got, "hakuriver_gpu_temperature_celsius", node="gpu1", gpu="1") is not None else None

    samples = await apoll(gpu_stats, timeout=10, interval=0.05, what="GPU stats from a heartbeat")
    for i in (0, 1):
        gpu = {"node": "gpu1", "gpu": str(i)}
        assert value(samples, "hakuriver_gpu_utilization_ratio", **gpu) == pytest.approx(0.1 * i)
        assert value(samples, "hakuriver_gpu_memory_used_bytes", **gpu) == (i + 1) << 30
        assert value(samples, "hakuriver_gpu_memory_total_bytes", **gpu) == 80 << 30
        assert value(samples, "hakuriver_gpu_temperature_celsius", **gpu) == 40 + i
        assert value(samples, "hakuriver_gpu_power_watts", **gpu) == 75 + i
    assert sum(by_label(samples, "hakuriver_gpu_allocated", "gpu").values()) == 1
    assert value(samples, "hakuriver_node_heartbeat_age_seconds", node="gpu1") is not None
    assert not [k for k in samples if k[0].startswith("hakuriver_gpu_") and dict(k[1])["node"] == "cpu1"]

    # The histograms saw the run: 2 submits by admin's CLI calls + 4 more, the
    # three tasks that started waited, two ended, commits and passes happened.
    assert value(samples, "hakuriver_submit_duration_seconds_count") == 6
    assert value(samples, "hakuriver_task_wait_seconds_count") == 4
    assert value(samples, "hakuriver_task_run_seconds_count", state="completed") == 1
    assert value(samples, "hakuriver_task_run_seconds_count", state="failed") == 1
    assert value(samples, "hakuriver_task_run_seconds_count", state="killed") == 0
    assert (value(samples, "hakuriver_db_commit_duration_seconds_count") or 0) > 0
    assert (value(samples, "hakuriver_scheduling_pass_duration_seconds_count") or 0) > 0

    # Bounded labels: no task id anywhere, only known label names and reasons.
    ids = api["ids"] | {blocked, waiting}
    labels = {name for key in samples for name, _ in key[1]}
    assert labels <= {"node", "gpu", "state", "user", "reason", "version", "le"}, labels
    values = {v for key in samples for _, v in key[1]}
    assert not values & ids
    assert set(by_label(samples, "hakuriver_tasks_pending", "reason")) <= set(REASON_CATEGORIES)

    # The counts follow the run: kill the hang, the dependent task then runs.
    await inproc.client.kill(hang)
    await inproc.wait_state(waiting, "completed")
    await inproc.wait_state(blocked, "completed")
    api, samples = await apoll(settled, timeout=20, interval=0.05, what="a scrape that agrees after the kill")
    assert value(samples, "hakuriver_tasks", state="killed") == 1
    assert value(samples, "hakuriver_tasks", state="completed") == 3
    assert value(samples, "hakuriver_task_run_seconds_count", state="killed") == 1
    assert not [k for k in samples if k[0] == "hakuriver_tasks_pending"]


async def test_who_may_scrape(inproc_factory: ClusterFactory) -> None:
    inproc = await metrics_cluster(inproc_factory)
    alice = (await inproc.client.add_user("alice"))["token"]
    boss = (await inproc.client.add_user("boss", admin=True))["token"]
    for token in (SCRAPE_TOKEN, ADMIN_TOKEN, boss):
        status, content_type, text = await scrape(inproc, token)
        assert status == 200, text
        assert content_type.startswith("text/plain") and "version=" in content_type
        assert "hakuriver_nodes" in {f.name for f in text_string_to_metric_families(text)}
    for token, status_wanted, words in (
        (None, 401, ""),
        ("not-a-token", 401, ""),
        (alice, 403, "metrics.scrape_token"),
        (RUNNER_TOKEN, 403, "/api/runner/ only"),
    ):
        status, content_type, text = await scrape(inproc, token)
        assert status == status_wanted, (token, text)
        assert content_type.startswith("application/json")
        assert words in json.loads(text)["error"]["message"]
    # The scrape token opens /metrics and nothing else.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"}) as session:
        for method, path in (("GET", "/api/tasks"), ("GET", "/api/nodes"), ("POST", "/api/tasks")):
            async with session.request(method, inproc.url + path, json={}) as resp:
                assert resp.status == 403, path
                assert "/metrics only" in (await resp.json())["error"]["message"]


async def test_without_a_scrape_token_only_admins_scrape(inproc_factory: ClusterFactory) -> None:
    inproc = await inproc_factory()
    alice = (await inproc.client.add_user("alice"))["token"]
    assert (await scrape(inproc, inproc.token))[0] == 200
    assert (await scrape(inproc, alice))[0] == 403
    assert (await scrape(inproc, SCRAPE_TOKEN))[0] == 401
    assert "hakuriver_tasks" in await inproc.client.metrics()


def dashboard_metrics() -> set[str]:
    """Every metric name the Grafana dashboard's PromQL queries use."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    names: set[str] = set()
    for expr in exprs:
        # Metric names are the identifiers that are not PromQL's functions,
        # keywords or label names (inside {...} or by/without (...)).
        bare = re.sub(r"\{[^}]*\}", "", expr)
        bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
        bare = re.sub(r"\[[^\]]*\]", "", bare)
        for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
            if word.startswith("hakuriver_"):
                names.add(word)
    return names


async def test_every_metric_the_dashboard_queries_exists(inproc_factory: ClusterFactory, fake_nvml: None) -> None:
    inproc = await metrics_cluster(inproc_factory)
    await inproc.add_runner("gpu1", gpus=1)
    done = await inproc.submit(["fake", "exit", "0"])
    await inproc.wait_state(done, "completed")
    hang = await inproc.submit(["fake", "hang"], gpus=1)
    await inproc.submit(["fake", "exit", "0"], after_any=[hang])  # pending: a sample of hakuriver_tasks_pending

    async def with_gpu_stats() -> set[str] | None:
        text = (await scrape(inproc))[2]
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        return names if "hakuriver_gpu_temperature_celsius" in names else None

    names = await apoll(with_gpu_stats, timeout=10, interval=0.05, what="a scrape with GPU stats")
    wanted = dashboard_metrics()
    assert len(wanted) >= 10
    assert wanted - names == set()


def test_reason_categories_cover_the_schedulers_reasons() -> None:
    cases = {
        "limit: max-running (2 of 2 running)": "limit_max_running",
        "limit: max-cores (4 of 4 in use, task needs 1)": "limit_max_cores",
        "limit: max-gpus (1 of 1 in use, task needs 1)": "limit_max_gpus",
        "limit: array max-running (2 of batch 5 running)": "limit_array_max_running",
        "reserved: head of queue on n1 (waiting for 2 free cores)": "reserved",
        "resources: no node has 4 cores free": "resources",
        "position: not examined yet": "position",
        "position: behind task 12 (same request)": "position",
        "node n1 offline": "node_offline",
        "node 'n1' is drained": "node_drained",
        "node n1 cannot run Docker tasks: no engine": "node_cannot_run",
        "no node is online": "no_node_online",
        "retry: waiting for node 'n1' to let go of the earlier attempt": "retry",
        "resources: no node has 4 cores free (fair share: 3 later ahead)": "resources",
        "something new": "other",
    }
    for reason, category in cases.items():
        assert reason_category(reason) == category, reason
    assert set(cases.values()) | {"dependency"} == set(REASON_CATEGORIES)


@pytest.mark.parametrize("scrape", ["short", "has white space in the middle", ADMIN_TOKEN, RUNNER_TOKEN])
def test_a_weak_scrape_token_is_refused_at_start(tmp_path: Path, scrape: str) -> None:
    config = config_from_dict(
        {
            "paths": {"shared_dir": str(tmp_path)},
            "database": {"db_file": str(tmp_path / "host.db")},
            "auth": {"admin_token": ADMIN_TOKEN, "runner_token": RUNNER_TOKEN},
            "metrics": {"scrape_token": scrape},
        }
    )
    with pytest.raises(ConfigError, match="metrics.scrape_token"):
        check_host_config(config)
    check_host_config(replace(config, metrics=MetricsConfig(SCRAPE_TOKEN)))


async def test_a_task_lost_with_its_node_counts_in_the_run_time(inproc_factory: ClusterFactory) -> None:
    """The offline sweep ends tasks without Cluster.transition; the histogram still hears of them."""
    inproc = await inproc_factory(
        token=ADMIN_TOKEN,
        timing=FAST_LIVENESS,
        config_overrides={
            "auth": {"token": "", "admin_token": ADMIN_TOKEN, "runner_token": RUNNER_TOKEN},
            "metrics": {"scrape_token": SCRAPE_TOKEN},
        },
    )
    runner = await inproc.add_runner("n1")
    task_id = await inproc.submit(["fake", "hang"])
    await inproc.wait_state(task_id, "running")
    await runner.stop()
    await inproc.wait_state(task_id, "lost")
    status, _, text = await scrape(inproc)
    assert status == 200
    assert value(parse(text), "hakuriver_task_run_seconds_count", state="lost") == 1.0
