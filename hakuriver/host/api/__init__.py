"""The Host's HTTP API: one module per resource and the one route list.

Handlers are thin: parse and validate, call the cluster (or the dispatcher,
liveness, the environment manager), shape the JSON. The OpenAPI document
(`openapi.yaml`, served at /api/openapi.yaml) lists every route here; a test
keeps the two equal.
"""

from __future__ import annotations

from aiohttp import web

from . import backup, batches, environments, events, history, metrics, nodes, runners, session, tasks, usage, users

ROUTES = [
    web.post("/api/tasks", tasks.submit_tasks),
    web.get("/api/tasks", tasks.list_tasks),
    web.post("/api/tasks/wait", tasks.wait_tasks),
    web.get("/api/tasks/{task_id}", tasks.get_task),
    web.post("/api/tasks/{task_id}/kill", tasks.kill_task),
    web.post("/api/tasks/{task_id}/pause", tasks.pause_task),
    web.post("/api/tasks/{task_id}/resume", tasks.resume_task),
    web.post("/api/tasks/{task_id}/priority", tasks.set_priority),
    web.get("/api/tasks/{task_id}/logs", tasks.task_logs),
    web.post("/api/batches/{batch_id}/kill", batches.kill_batch),
    web.post("/api/batches/{batch_id}/priority", batches.set_batch_priority),
    web.get("/api/nodes", nodes.list_nodes),
    web.get("/api/nodes/{hostname}", nodes.get_node),
    web.get("/api/nodes/{hostname}/history", history.node_history),
    web.post("/api/nodes/{hostname}/forget", nodes.forget_node),
    web.post("/api/nodes/{hostname}/drain", nodes.drain_node),
    web.post("/api/nodes/{hostname}/resume", nodes.resume_node),
    web.get("/api/health", nodes.health),
    web.get("/api/openapi.yaml", nodes.openapi),
    web.get("/api/environments/containers", environments.list_env_containers),
    web.post("/api/environments/containers/{name}", environments.create_env_container),
    web.delete("/api/environments/containers/{name}", environments.delete_env_container),
    web.post("/api/environments/containers/{name}/start", environments.start_env_container),
    web.post("/api/environments/containers/{name}/stop", environments.stop_env_container),
    web.get("/api/environments/containers/{name}/shell", environments.env_shell),
    web.post("/api/environments/containers/{name}/tarball", environments.commit_env),
    web.get("/api/environments/tarballs", environments.list_env_tarballs),
    web.delete("/api/environments/tarballs/{name}", environments.delete_env_tarballs),
    web.post("/api/environments/tarballs/{name}/image", environments.import_env_image),
    web.post("/api/environments/tarballs/{name}/tar", environments.import_env_tar),
    web.get("/api/whoami", users.whoami),
    web.get("/api/users", users.list_users),
    web.post("/api/users", users.add_user),
    web.patch("/api/users/{name}", users.update_user),
    web.delete("/api/users/{name}", users.remove_user),
    web.post("/api/users/{name}/tokens", users.issue_token),
    web.get("/api/usage", usage.usage),
    web.get("/api/fairshare", usage.fairshare),
    web.get("/api/backup", backup.backup),
    web.post("/api/session", session.login),
    web.get("/api/session", session.show),
    web.delete("/api/session", session.logout),
    web.get("/api/events", events.events),
    web.post("/api/runner/register", runners.runner_register),
    web.post("/api/runner/heartbeat", runners.runner_heartbeat),
    web.post("/api/runner/tasks/{task_id}/status", runners.runner_report),
    web.post("/api/runner/reports", runners.runner_reports),
    web.get("/metrics", metrics.metrics),
]
