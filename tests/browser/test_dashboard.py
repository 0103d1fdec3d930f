"""The dashboard in a real browser against the real Host: login, the cluster
page (a runner's real cores, a fake-NVML node's GPUs and their history),
tasks submitted from the CLI appearing and finishing live, a task's live log,
and killing one's own task while someone else's cannot be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import toml

from hakuriver import naming
from hakuriver.cli import task as task_cli
from hakuriver.host.keys import LIVENESS
from tests.harness.polling import poll
from tests.inproc.cluster import ThreadedCluster

pytestmark = pytest.mark.browser

TIMEOUT = 30.0


def _ignored() -> tuple[type[BaseException], ...]:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    return (NoSuchElementException, StaleElementReferenceException)


def _text(browser: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def wait_text(browser: Any, css: str, needle: str, what: str | None = None) -> str:
    """Poll (with a deadline) until the element at `css` shows `needle`; its text."""

    def shown() -> str | None:
        text = _text(browser, css)
        return text if needle in text else None

    return poll(
        shown,
        timeout=TIMEOUT,
        interval=0.1,
        what=what or f"{css} to show {needle!r}",
        ignore=_ignored(),
        on_timeout=lambda: browser.find_element("tag name", "body").text,
    )


def add_user(cluster: ThreadedCluster, name: str) -> str:
    status, body = cluster.api("POST", "/api/users", {"name": name})
    assert status == 201, body
    return str(body["token"])


def login(browser: Any, cluster: ThreadedCluster, token: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(cluster.url + "/dashboard/")
    field = poll(
        lambda: browser.find_element(By.ID, "token"), timeout=TIMEOUT, what="the login form", ignore=_ignored()
    )
    field.clear()
    field.send_keys(token)
    browser.find_element(By.ID, "login").click()


def click(browser: Any, css: str) -> None:
    from selenium.webdriver.common.by import By

    poll(lambda: browser.find_element(By.CSS_SELECTOR, css), timeout=TIMEOUT, what=css, ignore=_ignored()).click()


def test_login_and_the_cluster_page(fake_nvml: None, cluster: ThreadedCluster, browser: Any, screenshots: Path) -> None:
    alice = add_user(cluster, "alice")
    cluster.inner._host_site.app[LIVENESS].history.interval = 0.3  # type: ignore[union-attr]
    cluster.add_runner("alpha")
    cluster.add_runner("gpu1", gpus=2)

    # A wrong token: refused, still on the login form.
    login(browser, cluster, "hkr_not-a-token")
    wait_text(browser, "[role=alert]", "invalid bearer token")
    browser.save_screenshot(str(screenshots / "login.png"))

    login(browser, cluster, alice)
    wait_text(browser, "#whoami", "alice (user)")
    alpha, gpu1 = cluster.node("alpha"), cluster.node("gpu1")
    assert alpha is not None and gpu1 is not None
    # The runner's real cores (its probe of this machine), nothing in use.
    wait_text(browser, "[data-testid=node-alpha]", f"0 / {alpha['cores']} cores")
    assert "online" in _text(browser, "[data-testid=node-alpha] h2")
    # The fake-NVML node's GPUs, with the stats its heartbeats carry.
    wait_text(browser, "[data-testid=node-gpu1]", "0 / 2 GPUs")
    table = wait_text(browser, "[data-testid=gpus-gpu1]", gpu1["gpus"][1]["name"])
    assert table.count(gpu1["gpus"][0]["name"]) == 2 and "°C" in table

    # A task holding a GPU shows as in use, live.
    [task_id] = cluster.submit(["fake", "hang"], targets=["gpu1::1"])
    cluster.wait_state(task_id, "running")
    wait_text(browser, "[data-testid=node-gpu1]", "1 / 2 GPUs")
    wait_text(browser, "[data-testid=gpus-gpu1]", "in use")

    # The per-GPU history charts over the last hour.
    click(browser, "#history-toggle-gpu1")
    poll(
        lambda: len(browser.find_elements("css selector", "[data-testid=chart-util-gpu1] canvas")) == 1,
        timeout=TIMEOUT,
        what="the utilisation chart",
    )
    for chart in ("chart-util-gpu1", "chart-mem-gpu1", "chart-temp-gpu1"):
        legend = wait_text(browser, f"[data-testid={chart}]", "GPU 1")
        assert "GPU 0" in legend
    browser.save_screenshot(str(screenshots / "cluster.png"))

    # Environments: the tarball versions in shared storage.
    click(browser, "#nav-environments")
    wait_text(browser, "#env-tarballs", "inproc-env")
    assert "newest" in _text(browser, "#env-tarballs tr[data-env=inproc-env]")
    browser.save_screenshot(str(screenshots / "environments.png"))

    # Logging out ends the session: the API refuses its cookie, the page shows the login.
    click(browser, "#logout")
    wait_text(browser, ".login", "You are logged out")
    browser.get(cluster.url + "/dashboard/")
    wait_text(browser, ".login", "Your API token")


def _cli_config(tmp_path: Path, cluster: ThreadedCluster, token: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        toml.dumps({"network": {"host_port": int(cluster.url.rsplit(":", 1)[1])}, "auth": {"token": token}})
    )
    return path


def test_queue_task_log_and_kill(
    cluster: ThreadedCluster, browser: Any, screenshots: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("HAKURIVER_TOKEN", raising=False)
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    alice, bob = add_user(cluster, "alice"), add_user(cluster, "bob")
    runner = cluster.add_runner("alpha", hold_end=True)
    [bobs] = cluster.api("POST", "/api/tasks", {"command": ["fake", "hang"]}, token=bob)[1]["task_ids"]
    cluster.wait_state(bobs, "running")

    login(browser, cluster, alice)
    wait_text(browser, "#whoami", "alice (user)")
    click(browser, "#nav-queue")
    wait_text(browser, "[data-testid=queue-running]", bobs)

    # Submitted from the CLI: the task appears on the open page, and finishes there.
    config = _cli_config(tmp_path, cluster, alice, "alice")
    assert task_cli.main(["--config", str(config), "submit", "--json", "--", "fake", "exit", "0"]) == 0
    [done] = json.loads(capsys.readouterr().out)["task_ids"]
    row = f"[data-testid=queue-running] tr[data-task='{done}']"
    wait_text(browser, row, "running", what=f"task {done} to appear running on the queue page")
    runner.docker.release_end(done)
    wait_text(
        browser, f"[data-testid=queue-recent] tr[data-task='{done}']", "completed", what=f"task {done} to finish live"
    )

    assert task_cli.main(["--config", str(config), "submit", "--json", "--", "fake", "hang"]) == 0
    [mine] = json.loads(capsys.readouterr().out)["task_ids"]
    wait_text(browser, f"[data-testid=queue-running] tr[data-task='{mine}']", "running")
    # A task that cannot start now says why it waits, as the API says it.
    cores = cluster.node("alpha")["cores"]  # type: ignore[index]
    [waiting] = cluster.api("POST", "/api/tasks", {"command": ["fake", "hang"], "cores": cores}, token=alice)[1][
        "task_ids"
    ]
    row = f"[data-testid=queue-pending] tr[data-task='{waiting}']"

    def reason_shown() -> str | None:
        # The reason moves on as passes look at the task: the page must catch up with the API's.
        reason = cluster.task(waiting)["pending_reason"]
        return reason if reason and reason in _text(browser, row) else None

    poll(reason_shown, timeout=TIMEOUT, interval=0.1, what="the API's wait reason on the page", ignore=_ignored())
    browser.save_screenshot(str(screenshots / "queue.png"))

    # The task page: its live log grows while it runs.
    click(browser, f"[data-testid=queue-running] tr[data-task='{mine}'] a")
    wait_text(browser, "h1", f"Task {mine}")
    shared = cluster.inner.host_config().paths.shared_dir
    out = Path(naming.stdout_path(shared, int(mine)))
    poll(out.exists, timeout=TIMEOUT, what="the task's stdout file")
    with out.open("a") as fh:
        fh.write("epoch 1: loss 0.42\n")
    wait_text(browser, "#log-stdout", "epoch 1: loss 0.42")
    with out.open("a") as fh:
        fh.write("epoch 2: loss 0.17\n")
    wait_text(browser, "#log-stdout", "epoch 2: loss 0.17")
    browser.save_screenshot(str(screenshots / "task.png"))

    # Pausing and resuming it.
    click(browser, "#pause")
    wait_text(browser, "#task-message", "pause: done")
    wait_text(browser, "h1", "paused")
    click(browser, "#resume")
    wait_text(browser, "#task-message", "resume: done")
    wait_text(browser, "h1", "running")
    assert cluster.task(mine)["state"] == "running"

    # Killing one's own task.
    click(browser, "#kill")
    wait_text(browser, "#task-message", "kill: done")
    wait_text(browser, "h1", "killed")
    assert cluster.task(mine)["state"] == "killed"

    # Someone else's: no control offered, and the API refuses the session's forged kill.
    browser.get(cluster.url + f"/dashboard/#/task/{bobs}")
    wait_text(browser, "#not-yours", "bob's task")
    assert not browser.find_elements("css selector", "#kill")
    answer = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        // The page keeps its session's CSRF token in its origin's storage.
        const token = window.localStorage.getItem("hakuriver-csrf");
        fetch(`../api/tasks/${arguments[0]}/kill`, {method: "POST", headers: {"X-HakuRiver-CSRF": token}})
          .then(async (r) => done([r.status, await r.json()]));
        """,
        bobs,
    )
    assert answer[0] == 403 and "only your own" in answer[1]["error"]["message"], answer
    # And without the CSRF header, not even one's own task is touched.
    status = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(`../api/tasks/${arguments[0]}/kill`, {method: "POST"}).then((r) => done(r.status));
        """,
        bobs,
    )
    assert status == 403
    assert cluster.task(bobs)["state"] == "running"


def test_a_retried_tasks_page_shows_each_attempts_output(cluster: ThreadedCluster, browser: Any) -> None:
    alice = add_user(cluster, "alice")
    cluster.add_runner("alpha")
    body = {"command": ["fake", "exit", "3"], "retries": 1, "retry_on_exit": True}
    [task_id] = cluster.api("POST", "/api/tasks", body, token=alice)[1]["task_ids"]
    poll(lambda: cluster.task(task_id)["state"] == "failed", timeout=TIMEOUT, what="both attempts to fail")
    assert cluster.task(task_id)["attempt"] == 2
    shared = cluster.inner.host_config().paths.shared_dir
    kept = Path(naming.stdout_path(shared, int(task_id), 1))
    kept.write_text("attempt one's words\n")  # attempt 1's own file (ID.out); told apart here

    login(browser, cluster, alice)
    wait_text(browser, "#whoami", "alice (user)")
    browser.get(cluster.url + f"/dashboard/#/task/{task_id}")
    wait_text(browser, "#attempts", "attempt 1 (failed)")
    wait_text(browser, "#log-stdout", f"fake task {task_id}: fake exit 3")
    click(browser, "#attempt-1")
    wait_text(browser, "#log-stdout", "attempt one's words")
    wait_text(browser, "#log-stderr", f"fake task {task_id}: stderr")
    click(browser, "#attempt-current")
    wait_text(browser, "#log-stdout", f"fake task {task_id}: fake exit 3")
    assert "attempt one's words" not in _text(browser, "#log-stdout")


def test_the_queue_pages_and_filters(cluster: ThreadedCluster, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    bob = add_user(cluster, "bob")
    cluster.add_runner("alpha")
    cluster.add_runner("beta")
    ids = [cluster.submit(["fake", "exit", "0"], targets=["alpha"])[0] for _ in range(27)]
    [bobs] = cluster.api("POST", "/api/tasks", {"command": ["fake", "exit", "0"], "targets": ["beta"]}, token=bob)[1][
        "task_ids"
    ]
    for task_id in [*ids, bobs]:
        cluster.wait_final(task_id)

    login(browser, cluster, cluster.token)
    wait_text(browser, "#whoami", "admin (admin)")
    click(browser, "#nav-queue")
    recent = "[data-testid=queue-recent]"

    def rows() -> list[str]:
        return [r.get_attribute("data-task") for r in browser.find_elements(By.CSS_SELECTOR, f"{recent} tbody tr")]

    # 28 final tasks: a page of 25, newest first, and the rest one click older.
    poll(lambda: len(rows()) == 25, timeout=TIMEOUT, what="a full first page", ignore=_ignored())
    assert rows()[0] == bobs and rows() == sorted(rows(), key=int, reverse=True)
    first = rows()
    click(browser, f"{recent} .pager button:last-child")
    poll(
        lambda: rows() == sorted(ids, key=int, reverse=True)[24:],
        timeout=TIMEOUT,
        what="the older page",
        ignore=_ignored(),
    )
    click(browser, f"{recent} .pager button:first-child")
    poll(lambda: rows() == first, timeout=TIMEOUT, what="the newer page again", ignore=_ignored())

    # Filters: by user, and by node.
    user = browser.find_element(By.ID, "filter-user")
    user.send_keys("bob", Keys.TAB)
    poll(lambda: rows() == [bobs], timeout=TIMEOUT, what="bob's tasks only", ignore=_ignored())
    user.send_keys(Keys.CONTROL, "a")
    user.send_keys(Keys.BACKSPACE, Keys.TAB)
    poll(lambda: len(rows()) == 25, timeout=TIMEOUT, what="everyone's tasks again", ignore=_ignored())
    node = browser.find_element(By.ID, "filter-node")
    node.send_keys("beta", Keys.TAB)
    poll(lambda: rows() == [bobs], timeout=TIMEOUT, what="beta's tasks only", ignore=_ignored())


def test_an_admin_drains_and_resumes_a_node_and_a_user_cannot(cluster: ThreadedCluster, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    alice = add_user(cluster, "alice")
    cluster.add_runner("alpha")
    login(browser, cluster, alice)
    wait_text(browser, "[data-testid=node-alpha]", "online")
    assert not browser.find_elements(By.CSS_SELECTOR, "#drain-alpha")  # a user is offered nothing

    click(browser, "#logout")
    login(browser, cluster, cluster.token)
    wait_text(browser, "#whoami", "admin (admin)")
    click(browser, "#drain-alpha")
    field = poll(
        lambda: browser.find_element(By.ID, "drain-reason-alpha"),
        timeout=TIMEOUT,
        what="the reason field",
        ignore=_ignored(),
    )
    field.send_keys("new disks")
    click(browser, "#drain-confirm-alpha")
    wait_text(browser, "[data-testid=node-alpha] h2", "drained: new disks")
    assert cluster.node("alpha")["drained"]["reason"] == "new disks"  # type: ignore[index]
    click(browser, "#resume-alpha")
    poll(
        lambda: "drained" not in _text(browser, "[data-testid=node-alpha] h2"),
        timeout=TIMEOUT,
        what="the drain to go",
        ignore=_ignored(),
    )
    assert cluster.node("alpha")["drained"] is None  # type: ignore[index]


def test_the_pages_stay_usable_with_10000_tasks(cluster: ThreadedCluster, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    cluster.add_runner("alpha")
    status, body = cluster.api("POST", "/api/tasks", {"command": ["fake", "hang"], "array": "0-9999%1"}, timeout=120)
    assert status == 201 and len(body["task_ids"]) == 10_000, status
    ids = sorted(body["task_ids"], key=int)

    login(browser, cluster, cluster.token)
    wait_text(browser, "[data-testid=node-alpha]", "1 task(s)")
    click(browser, "#nav-queue")
    pending = "[data-testid=queue-pending]"

    def rows() -> list[str]:
        return [r.get_attribute("data-task") for r in browser.find_elements(By.CSS_SELECTOR, f"{pending} tbody tr")]

    # One page of 25, newest first; never the whole table.
    poll(lambda: rows() == ids[::-1][:25], timeout=TIMEOUT, what="the newest 25 pending", ignore=_ignored())
    assert "25+ on this page" in _text(browser, f"{pending} h2")
    click(browser, f"{pending} .pager button:last-child")
    poll(lambda: rows() == ids[::-1][25:50], timeout=TIMEOUT, what="the next 25", ignore=_ignored())
    wait_text(browser, "[data-testid=queue-running]", ids[0])
