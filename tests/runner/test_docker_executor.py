"""DockerExecutor against the real engine and the suite's task image."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap

import pytest

from hakuriver import naming
from hakuriver.errors import ExecutorError
from hakuriver.models import Mount, NumaNode, TaskState
from hakuriver.runner.executors.base import Handle, Presence
from tests.runner.dockerfix import *  # noqa: F403
from tests.runner.dockerfix import eventually, new_task_id

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

MiB = 1 << 20


def py(code: str, *args: str) -> list[str]:
    return ["python3", "-c", textwrap.dedent(code), *args]


def read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def container(docker_client, handle: Handle) -> dict:
    return docker_client.api.inspect_container(handle.ref)


async def test_argv_is_passed_verbatim_and_streams_are_separate(executor, make_spec):
    nasty = "$(id); echo pwned `uname` 'single' \"double\" \\ back\nsecond line * ? ~ | & > /tmp/x"
    spec = make_spec(py("import sys; sys.stdout.write(sys.argv[1]); print('to stderr', file=sys.stderr)", nasty))
    handle = await executor.start(spec)
    assert handle.executor == "docker"
    assert handle.data["name"] == naming.task_container_name(spec.task_id)
    result = await executor.wait(handle)
    assert (result.state, result.exit_code) == (TaskState.COMPLETED, 0)
    assert read(spec.stdout_path) == nasty
    assert read(spec.stderr_path) == "to stderr\n"
    await executor.destroy(handle)


async def test_nonzero_exit_is_failed_with_its_code(executor, make_spec):
    spec = make_spec(py("import sys; print('bye'); sys.exit(3)"))
    handle = await executor.start(spec)
    result = await executor.wait(handle)
    assert result.state is TaskState.FAILED
    assert result.exit_code == 3
    assert result.error == "exited with code 3"
    assert read(spec.stdout_path) == "bye\n"
    # wait() is repeatable and a second waiter gets the same answer
    assert await executor.wait(handle) == result
    await executor.destroy(handle)


async def test_limits_env_labels_and_mounts(executor, make_spec, docker_client, task_dirs, tmp_path):
    shared, local = task_dirs
    extra = tmp_path / "extra"
    extra.mkdir()
    extra.chmod(0o1777)  # writable by the task's user: only the read-only mount may refuse the write
    (extra / "data.txt").write_text("from the host")
    code = """
        import json, os
        open('written-by-task.txt', 'w').write('hello')
        open('/local_temp/scratch.txt', 'w').write('scratch')
        try:
            open('/extra/nope.txt', 'w')
            ro = False
        except OSError:
            ro = True
        print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), 'ro': ro,
                          'data': open('/extra/data.txt').read()}))
    """
    spec = make_spec(
        py(code),
        env={"FOO": "bar baz", "MULTI": "a\nb"},
        cores=1,
        memory=64 * MiB,
        mounts=(Mount(str(extra), "/extra", read_only=True),),
    )
    handle = await executor.start(spec)
    result = await executor.wait(handle)
    assert result.state is TaskState.COMPLETED, read(spec.stderr_path)
    seen = json.loads(read(spec.stdout_path))
    assert seen["cwd"] == "/shared"
    env = seen["env"]
    assert env["HAKURIVER_TASK_ID"] == str(spec.task_id)
    assert env["HAKURIVER_SHARED_DIR"] == "/shared"
    assert env["HAKURIVER_LOCAL_TEMP_DIR"] == "/local_temp"
    assert env["FOO"] == "bar baz" and env["MULTI"] == "a\nb"
    assert seen["ro"] is True and seen["data"] == "from the host"
    assert (shared / "written-by-task.txt").read_text() == "hello"
    assert (local / "scratch.txt").read_text() == "scratch"

    info = container(docker_client, handle)
    assert info["Name"] == "/" + naming.task_container_name(spec.task_id)
    assert info["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert info["HostConfig"]["Memory"] == 64 * MiB
    assert info["HostConfig"]["MemorySwap"] == 64 * MiB
    assert info["HostConfig"]["Init"] is True
    assert info["Config"]["WorkingDir"] == "/shared"
    labels = info["Config"]["Labels"]
    assert labels[naming.LABEL_TASK_ID] == str(spec.task_id)
    assert labels[naming.LABEL_RUNNER] == executor.runner_name
    assert info["Config"]["Entrypoint"] == ["python3"]
    await executor.destroy(handle)
    await executor.destroy(handle)  # idempotent
    import docker

    with pytest.raises(docker.errors.NotFound):
        container(docker_client, handle)


async def test_numa_binding_on_node_zero(executor, make_spec, docker_client):
    spec = make_spec(
        ["sh", "-c", "grep -E '^(Cpus|Mems)_allowed_list' /proc/self/status"],
        numa=NumaNode(id=0, cpus=(0,), memory=0),
    )
    handle = await executor.start(spec)
    assert (await executor.wait(handle)).state is TaskState.COMPLETED
    info = container(docker_client, handle)
    assert info["HostConfig"]["CpusetCpus"] == "0"
    assert info["HostConfig"]["CpusetMems"] == "0"
    out = read(spec.stdout_path)
    assert "Cpus_allowed_list:\t0\n" in out and "Mems_allowed_list:\t0\n" in out
    await executor.destroy(handle)


async def test_memory_hog_is_killed_oom(executor, make_spec):
    code = """
        chunks = []
        while True:
            chunks.append(b'x' * (4 << 20))
    """
    spec = make_spec(py(code), memory=32 * MiB)
    handle = await executor.start(spec)
    result = await executor.wait(handle)
    assert result.state is TaskState.KILLED_OOM, result
    assert result.exit_code == 137
    await executor.destroy(handle)


async def test_missing_image_is_refused_without_pull_or_leftovers(executor, make_spec, docker_client, monkeypatch):
    pulls = []
    monkeypatch.setattr(docker_client.api, "pull", lambda *a, **k: pulls.append(a) or "")
    executor._engine._client = docker_client  # the executor must not pull through any path
    executor._engine._owns_client = False
    image = "hakuriver/definitely-not-here-" + os.urandom(3).hex() + ":base"
    spec = make_spec(["true"], image=image)
    with pytest.raises(ExecutorError) as info:
        await executor.start(spec)
    assert f"environment image {image} is not present on this node" in str(info.value)
    assert pulls == []
    assert docker_client.api.containers(all=True, filters={"name": naming.task_container_name(spec.task_id)}) == []
    assert docker_client.api.images(name=image.split(":")[0]) == []


async def test_start_failure_removes_the_half_made_container(executor, make_spec, docker_client, tmp_path):
    a_file = tmp_path / "plain-file"
    a_file.write_text("not a directory")
    # Created fine, but runc cannot mount a file over a directory: start fails.
    spec = make_spec(["true"], mounts=(Mount(str(a_file), "/etc", read_only=True),))
    with pytest.raises(ExecutorError) as info:
        await executor.start(spec)
    assert "could not start" in str(info.value)
    assert docker_client.api.containers(all=True, filters={"name": naming.task_container_name(spec.task_id)}) == []


async def test_create_failure_is_explained(executor, make_spec, tmp_path):
    spec = make_spec(["true"], mounts=(Mount(str(tmp_path / "does-not-exist"), "/data"),))
    with pytest.raises(ExecutorError) as info:
        await executor.start(spec)
    assert "does-not-exist" in str(info.value)


async def test_missing_program_fails_with_its_reason(executor, make_spec):
    spec = make_spec(["definitely-not-a-program", "x"])
    try:
        handle = await executor.start(spec)
    except ExecutorError as exc:  # engines without docker-init refuse at start
        assert "definitely-not-a-program" in str(exc)
        return
    result = await executor.wait(handle)
    assert result.state is TaskState.FAILED and result.exit_code not in (0, None)
    assert "definitely-not-a-program" in read(spec.stderr_path)
    await executor.destroy(handle)


async def test_kill_and_term(executor, make_spec):
    spec = make_spec(["sleep", "300"])
    handle = await executor.start(spec)
    await executor.stop(handle)  # SIGKILL
    result = await executor.wait(handle)
    assert (result.state, result.exit_code) == (TaskState.FAILED, 137)
    await executor.stop(handle)  # already ended: not an error
    await executor.destroy(handle)

    spec = make_spec(["sleep", "300"])
    handle = await executor.start(spec)
    await executor.stop(handle, "SIGTERM")  # reaches sleep through docker-init
    assert (await executor.wait(handle)).exit_code == 143
    await executor.destroy(handle)


async def test_pause_resume_and_kill_while_paused(executor, make_spec, docker_client, task_dirs):
    shared, _ = task_dirs
    code = """
        import os, time
        print('started', flush=True)
        while not os.path.exists('go'):
            time.sleep(0.05)
        print('finished', flush=True)
    """
    spec = make_spec(py(code))
    handle = await executor.start(spec)
    await eventually(lambda: "started" in read(spec.stdout_path), what="first output")
    await executor.pause(handle)
    await executor.pause(handle)  # idempotent
    assert container(docker_client, handle)["State"]["Paused"] is True
    assert await executor.recover(handle) is Presence.PAUSED
    await executor.resume(handle)
    await executor.resume(handle)  # idempotent
    assert container(docker_client, handle)["State"]["Paused"] is False
    (shared / "go").write_text("")
    result = await executor.wait(handle)
    assert result.state is TaskState.COMPLETED
    assert read(spec.stdout_path) == "started\nfinished\n"
    with pytest.raises(ExecutorError):
        await executor.pause(handle)  # not running any more
    await executor.destroy(handle)

    spec = make_spec(["sleep", "300"])
    handle = await executor.start(spec)
    await executor.pause(handle)
    await executor.stop(handle)
    assert (await executor.wait(handle)).exit_code == 137
    await executor.destroy(handle)


async def test_output_is_readable_while_the_task_runs(executor, make_spec, task_dirs):
    shared, _ = task_dirs
    code = """
        import os, sys, time
        print('line one', flush=True)
        print('err one', file=sys.stderr, flush=True)
        while not os.path.exists('go'):
            time.sleep(0.05)
        print('line two', flush=True)
    """
    spec = make_spec(py(code))
    handle = await executor.start(spec)
    waiter = asyncio.ensure_future(executor.wait(handle))
    await eventually(lambda: read(spec.stdout_path) == "line one\n", what="partial stdout")
    await eventually(lambda: read(spec.stderr_path) == "err one\n", what="partial stderr")
    assert not waiter.done()
    (shared / "go").write_text("")
    result = await asyncio.wait_for(waiter, 60)
    assert result.state is TaskState.COMPLETED
    assert read(spec.stdout_path) == "line one\nline two\n"
    assert read(spec.stderr_path) == "err one\n"
    await executor.destroy(handle)


PHASED = """
    import os, sys, time
    def phase(tag, gate):
        for i in range(50):
            print(f'{tag} out {i}', flush=True)
            print(f'{tag} err {i}', file=sys.stderr, flush=True)
        if gate:
            while not os.path.exists(gate):
                time.sleep(0.05)
    phase('A', 'go1')
    phase('B', 'go2')
    phase('C', None)
    sys.exit(5)
"""


def expected(tags: str, stream: str) -> str:
    return "".join(f"{t} {stream} {i}\n" for t in tags for i in range(50))


async def test_recover_after_restart_completes_output_without_duplicates(
    make_executor, make_spec, task_dirs, docker_client
):
    shared, _ = task_dirs
    first = make_executor()
    spec = make_spec(py(PHASED))
    handle = await first.start(spec)
    saved = Handle.from_json(json.loads(json.dumps(handle.to_json())))  # as the state file has it
    await eventually(lambda: read(spec.stdout_path) == expected("A", "out"), what="phase A")
    await eventually(lambda: read(spec.stderr_path) == expected("A", "err"), what="phase A err")
    await first.close()  # the runner stops; the task must not

    # While nobody watches, the task moves on to phase B.
    (shared / "go1").write_text("")

    def reached_b() -> bool:
        logs = docker_client.api.logs(handle.ref, stdout=True, stderr=False).decode()
        return "B out 49" in logs

    await eventually(reached_b, what="phase B in the container log")
    assert container(docker_client, saved)["State"]["Running"] is True

    second = make_executor()
    assert await second.recover(saved) is Presence.RUNNING
    await eventually(lambda: read(spec.stdout_path) == expected("AB", "out"), what="phase B replayed")
    (shared / "go2").write_text("")
    result = await second.wait(saved)
    assert (result.state, result.exit_code) == (TaskState.FAILED, 5)
    assert read(spec.stdout_path) == expected("ABC", "out")
    assert read(spec.stderr_path) == expected("ABC", "err")
    await second.destroy(saved)


async def test_recover_a_task_that_ended_while_the_runner_was_away(make_executor, make_spec, task_dirs, docker_client):
    shared, _ = task_dirs
    first = make_executor()
    spec = make_spec(py(PHASED))
    handle = await first.start(spec)
    await eventually(lambda: "A out 49" in read(spec.stdout_path), what="phase A")
    await first.close()
    (shared / "go1").write_text("")
    (shared / "go2").write_text("")
    await eventually(lambda: container(docker_client, handle)["State"]["Status"] == "exited", what="the task to exit")
    second = make_executor()
    assert await second.recover(handle) is Presence.EXITED
    result = await second.wait(handle)
    assert (result.state, result.exit_code) == (TaskState.FAILED, 5)
    assert read(spec.stdout_path) == expected("ABC", "out")
    assert read(spec.stderr_path) == expected("ABC", "err")
    await second.destroy(handle)
    assert await second.recover(handle) is Presence.MISSING


async def test_recover_missing_container(executor):
    handle = Handle(task_id=new_task_id(), executor="docker", ref="0" * 64, data={"stdout": "/x", "stderr": "/y"})
    assert await executor.recover(handle) is Presence.MISSING
    await executor.destroy(handle)  # nothing there: fine
    await executor.stop(handle)  # nothing there: fine


async def test_closed_executor_refuses_work(make_executor, make_spec):
    ex = make_executor()
    await ex.close()
    with pytest.raises(ExecutorError):
        await ex.start(make_spec(["true"]))


async def test_large_and_unterminated_output_is_complete(executor, make_spec):
    code = """
        import sys
        out = sys.stdout
        for i in range(100000):
            out.write(f'{i}\\n')
        out.write('y' * 40000)  # a long last line without newline: several partial messages
        out.flush()
        sys.stderr.write('no newline on stderr either\\n')
        sys.stderr.write('z' * (16384 * 70 + 5))  # 71 partial messages, 70 of them identical
    """
    spec = make_spec(py(code))
    handle = await executor.start(spec)
    result = await executor.wait(handle)
    assert result.state is TaskState.COMPLETED
    assert read(spec.stdout_path) == "".join(f"{i}\n" for i in range(100000)) + "y" * 40000
    assert read(spec.stderr_path) == "no newline on stderr either\n" + "z" * (16384 * 70 + 5)
    await executor.destroy(handle)


async def test_many_concurrent_tasks_and_threads_are_released(make_executor, make_spec):
    import threading

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("hakuriver-")]

    before = ours()
    ex = make_executor()
    specs = [make_spec(py(f"import sys; print('task {i}'); sys.exit({i % 3})")) for i in range(16)]
    handles = await asyncio.gather(*(ex.start(s) for s in specs))
    results = await asyncio.gather(*(ex.wait(h) for h in handles))
    for i, (s, r) in enumerate(zip(specs, results)):
        assert r.exit_code == i % 3
        assert read(s.stdout_path) == f"task {i}\n"
    await asyncio.gather(*(ex.destroy(h) for h in handles))
    await ex.close()
    await eventually(lambda: ours() == before, what=f"our threads to end: {ours()} vs {before}")


async def test_destroy_a_running_task(executor, make_spec, docker_client):
    spec = make_spec(py("import time; print('up', flush=True); time.sleep(300)"))
    handle = await executor.start(spec)
    await eventually(lambda: read(spec.stdout_path) == "up\n", what="output")
    await executor.destroy(handle)
    assert docker_client.api.containers(all=True, filters={"id": handle.ref}) == []
    assert read(spec.stdout_path) == "up\n"


async def test_close_fails_pending_waits_but_leaves_the_task(make_executor, make_spec, docker_client):
    ex = make_executor()
    spec = make_spec(["sleep", "300"])
    handle = await ex.start(spec)
    waiter = asyncio.ensure_future(ex.wait(handle))
    await ex.close()
    with pytest.raises(ExecutorError):
        await asyncio.wait_for(waiter, 30)
    assert container(docker_client, handle)["State"]["Running"] is True


async def test_wait_on_a_container_removed_behind_our_back_is_lost(executor, make_spec, docker_client):
    spec = make_spec(["sleep", "300"])
    handle = await executor.start(spec)
    docker_client.api.remove_container(handle.ref, force=True)
    result = await asyncio.wait_for(executor.wait(handle), 30)
    # Either the watch saw it killed by the removal, or found it gone.
    assert result.state is TaskState.LOST or (result.state, result.exit_code) == (TaskState.FAILED, 137)


async def test_cancelled_start_leaves_no_container(executor, make_spec, docker_client, runner_name):
    import threading
    import time

    entered, release = threading.Event(), threading.Event()
    original = executor._create_and_start

    def gated(spec, plan):
        entered.set()
        release.wait(60)
        return original(spec, plan)

    executor._create_and_start = gated
    spec = make_spec(["sleep", "300"])
    name = naming.task_container_name(spec.task_id)
    since = time.time() - 1
    starting = asyncio.ensure_future(executor.start(spec))
    await eventually(entered.is_set, what="start to reach its thread")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    release.set()

    def destroyed() -> bool:
        events = docker_client.api.events(
            since=since,
            until=time.time() + 60,
            filters={"event": "destroy", "label": f"{naming.LABEL_RUNNER}={runner_name}"},
            decode=True,
        )
        try:
            return any(ev["Actor"]["Attributes"].get("name") == name for ev in events)
        finally:
            events.close()

    assert await asyncio.to_thread(destroyed)
    assert docker_client.api.containers(all=True, filters={"name": name}) == []


async def test_recover_from_a_placeholder_handle(make_executor, make_spec, docker_client):
    # The supervisor persists Handle(ref=<container name>, data={}) before start returns.
    first = make_executor()
    spec = make_spec(py("import sys; print('out'); print('err', file=sys.stderr); sys.exit(4)"))
    real = await first.start(spec)
    await first.wait(real)
    await first.close()
    placeholder = Handle(task_id=spec.task_id, executor="docker", ref=naming.task_container_name(spec.task_id), data={})
    second = make_executor()
    assert await second.recover(placeholder) is Presence.EXITED
    assert placeholder.data["stdout"] == spec.stdout_path and placeholder.data["stderr"] == spec.stderr_path
    result = await second.wait(placeholder)
    assert (result.state, result.exit_code) == (TaskState.FAILED, 4)
    assert read(spec.stdout_path) == "out\n" and read(spec.stderr_path) == "err\n"
    await second.destroy(placeholder)
    assert docker_client.api.containers(all=True, filters={"id": real.ref}) == []


async def test_check_reports_the_engine(executor):
    assert (await executor.fingerprint()).version[:1].isdigit()


async def test_check_on_an_unreachable_engine(make_executor):
    ex = make_executor(base_url="unix:///nonexistent/docker.sock")
    with pytest.raises(ExecutorError, match="cannot reach the Docker engine"):
        await ex.fingerprint()


async def test_a_second_start_of_the_same_task_is_refused_and_harmless(executor, make_spec, task_dirs):
    shared, _ = task_dirs
    spec = make_spec(
        py("import os, time\nprint('first', flush=True)\nwhile not os.path.exists('go'): time.sleep(0.05)")
    )
    handle = await executor.start(spec)
    await eventually(lambda: read(spec.stdout_path) == "first\n", what="output")
    with pytest.raises(ExecutorError, match="cannot create container"):
        await executor.start(spec)
    assert read(spec.stdout_path) == "first\n"  # the running task's output is untouched
    (shared / "go").write_text("")
    assert (await executor.wait(handle)).state is TaskState.COMPLETED
    await executor.destroy(handle)
