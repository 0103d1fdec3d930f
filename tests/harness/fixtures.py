"""pytest plugin: Docker engine, images, networks, systemd nodes, plain containers.

Registered from tests/conftest.py (``pytest_plugins = ["tests.harness.fixtures"]``).

Before the first test runs (only if a selected test uses one of these fixtures) the engine is
connected (dockerd started when needed), leftovers of dead earlier sessions are swept and the
images are built (cached), so a first build does not count against a test's timeout.
At the end of the session any container or network this session labelled that still exists
is listed, removed, and the session fails.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from . import engine
from .engine import (
    SESSION_ID,
    SESSION_LABEL,
    EngineUnavailable,
    harness_labels,
    harness_name,
    labelled_containers,
    labelled_networks,
    remove_container,
    remove_network,
)
from .node import ContainerFactory, Node, NodeFactory, _short_test_name

DOCKER_FIXTURES = frozenset(
    {"docker_client", "harness_images", "docker_network", "network_factory", "node_factory", "container_factory"}
)
IMAGE_FIXTURES = frozenset({"harness_images", "node_factory"})

_FACTORIES = pytest.StashKey[list]()
_SESSION_T0 = time.time()


class _State:
    client: Any = None
    engine_error: str | None = None
    images: dict[str, str] | None = None
    images_error: str | None = None
    engine_prepared = False
    images_prepared = False


def _say(config: pytest.Config, msg: str) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(f"[harness] {msg}")
    else:
        print(f"[harness] {msg}")


def _prepare_engine(config: pytest.Config) -> None:
    if _State.engine_prepared:
        return
    _State.engine_prepared = True
    t0 = time.monotonic()
    try:
        _State.client = engine.connect_engine(start=True)
    except EngineUnavailable as exc:
        _State.engine_error = str(exc)
        _say(config, f"Docker engine NOT available: {exc}")
        return
    removed = engine.sweep(_State.client)
    info = _State.client.version()
    _say(
        config,
        f"docker engine {info.get('Version')} (API {info.get('ApiVersion')}) ready in "
        f"{time.monotonic() - t0:.1f}s; session {SESSION_ID}; swept "
        f"{len(removed)} leftover(s){': ' + ', '.join(removed) if removed else ''}",
    )


def _prepare_images(config: pytest.Config) -> None:
    if _State.images_prepared:
        return
    _State.images_prepared = True
    from tests.images import ensure_images  # builds only what is missing

    t0 = time.monotonic()
    try:
        _State.images = ensure_images()
    except Exception as exc:
        _State.images_error = f"{type(exc).__name__}: {exc}"
        _say(config, f"image build FAILED: {_State.images_error}")
        return
    _say(config, f"images ready in {time.monotonic() - t0:.1f}s: " + ", ".join(_State.images.values()))


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    if session.config.option.collectonly or not session.items:
        return None
    used = set()
    for item in session.items:
        used.update(getattr(item, "fixturenames", ()))
    if used & DOCKER_FIXTURES:
        _prepare_engine(session.config)
        if used & IMAGE_FIXTURES and _State.client is not None:
            _prepare_images(session.config)
    return None  # let the default loop run the tests


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    rep = yield
    if rep.when == "call" and rep.failed:
        for factory in item.stash.get(_FACTORIES, []):
            for node in getattr(factory, "nodes", []):
                try:
                    rep.sections.append((f"node {node.name}", node.diagnostics()))
                except Exception as exc:  # never hide the real failure
                    rep.sections.append((f"node {node.name}", f"(diagnostics failed: {exc!r})"))
    return rep


# If pytest cannot exit because a test leaked a non-daemon thread (an unclosed aiosqlite
# connection, an executor that was never shut down, ...), the interpreter waits for it forever
# and CI hangs. After this grace period the stacks are dumped and the process exits non-zero.
EXIT_GRACE_S = float(os.environ.get("HAKURIVER_TEST_EXIT_GRACE", "30"))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    status = int(getattr(config, "_hkr_exitstatus", 1))

    def force_exit() -> None:
        leaked = [
            t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()
        ]
        if not leaked:
            return
        sys.stderr.write(
            f"\n[harness] pytest cannot exit: non-daemon thread(s) still running {EXIT_GRACE_S:.0f}s"
            f" after the session: {[t.name for t in leaked]}. A test leaked a resource (unclosed"
            f" aiosqlite connection, executor not shut down, ...). Stacks:\n"
        )
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(status or 1)

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        timer = threading.Timer(EXIT_GRACE_S, force_exit)
        timer.daemon = True
        timer.start()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        _check_leftovers(session)
    finally:
        session.config._hkr_exitstatus = int(session.exitstatus)  # type: ignore[attr-defined]


def _check_leftovers(session: pytest.Session) -> None:
    client = _State.client
    if client is None:
        return  # this session never used the engine
    try:
        ours = labelled_containers(client, **{SESSION_LABEL: SESSION_ID})
        our_nets = labelled_networks(client, **{SESSION_LABEL: SESSION_ID})
    except Exception as exc:
        _say(session.config, f"could not check for leftover containers: {exc!r}")
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        return
    _warn_ownerless(session, client)
    if not ours and not our_nets:
        return
    _say(session.config, "LEFTOVERS after the session (removing them; the session fails):")
    for c in ours:
        _say(session.config, f"  container {c.name} ({c.status}) from {c.labels.get(engine.TEST_LABEL)}")
        remove_container(c)
    for n in our_nets:
        _say(session.config, f"  network {n.name} from {(n.attrs.get('Labels') or {}).get(engine.TEST_LABEL)}")
        remove_network(client, n)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _warn_ownerless(session: pytest.Session, client: Any) -> None:
    """Containers made from harness images by code under test inherit only the harness label.

    Those created during this session and still present are named here (scripts/test.sh fails
    on them); tests should pass ``harness_labels(request.node.nodeid)`` as extra labels to
    whatever starts containers, so the harness can attribute and clean them.
    """
    try:
        for c in labelled_containers(client):
            if engine.OWNER_LABEL in c.labels:
                continue
            if engine._age_seconds(c.attrs.get("Created")) <= time.time() - _SESSION_T0:
                _say(
                    session.config,
                    f"WARNING: container {c.name} ({c.status}, image "
                    f"{c.attrs.get('Config', {}).get('Image')}), created from a harness "
                    f"image while this session ran (by it or by a concurrent "
                    f"one), still exists",
                )
    except Exception as exc:
        _say(session.config, f"could not list ownerless containers: {exc!r}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def docker_client(request: pytest.FixtureRequest) -> Any:
    """docker SDK client for a reachable engine (started if needed). Fails, never skips."""
    _prepare_engine(request.config)
    if _State.client is None:
        pytest.fail(f"Docker engine unavailable: {_State.engine_error}", pytrace=False)
    return _State.client


@pytest.fixture(scope="session")
def harness_images(request: pytest.FixtureRequest, docker_client: Any) -> dict[str, str]:
    """{"task": tag, "node": tag, "node-docker": tag}; built once, cached by tag."""
    _prepare_images(request.config)
    if _State.images is None:
        pytest.fail(f"test images unavailable: {_State.images_error}", pytrace=False)
    return dict(_State.images)


@pytest.fixture
def network_factory(request: pytest.FixtureRequest, docker_client: Any) -> Iterator[Any]:
    """``network_factory(suffix="net", **sdk_kwargs) -> Network``: labelled bridge networks,
    removed (after force-disconnecting what is attached) at teardown."""
    created: list[Any] = []
    test_id = request.node.nodeid

    def make(suffix: str = "net", **kwargs: Any) -> Any:
        labels = dict(kwargs.pop("labels", None) or {})
        labels.update(harness_labels(test_id))
        net = docker_client.networks.create(
            harness_name(_short_test_name(test_id), suffix),
            driver=kwargs.pop("driver", "bridge"),
            labels=labels,
            **kwargs,
        )
        created.append(net)
        return net

    yield make
    errors = []
    for net in reversed(created):
        try:
            remove_network(docker_client, net)
        except Exception as exc:
            errors.append(f"{net.name}: {exc!r}")
    if errors:
        pytest.fail("network teardown failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def docker_network(network_factory: Any) -> Any:
    """One user-defined bridge network (SDK Network; ``.name`` for node_factory(network=...))."""
    return network_factory()


@pytest.fixture
def node_factory(
    request: pytest.FixtureRequest, docker_client: Any, harness_images: dict[str, str]
) -> Iterator[NodeFactory]:
    """Start systemd nodes; all of them are removed at teardown, pass or fail."""
    factory = NodeFactory(docker_client, request.node.nodeid, harness_images)
    request.node.stash.setdefault(_FACTORIES, []).append(factory)
    try:
        yield factory
    finally:
        errors = factory.cleanup()
    if errors:
        pytest.fail("node teardown failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def container_factory(request: pytest.FixtureRequest, docker_client: Any) -> Iterator[ContainerFactory]:
    """Start plain labelled containers through the SDK; removed at teardown."""
    factory = ContainerFactory(docker_client, request.node.nodeid)
    try:
        yield factory
    finally:
        errors = factory.cleanup()
    if errors:
        pytest.fail("container teardown failed: " + "; ".join(errors), pytrace=False)


# ------------------------------------------------------- hakuriver inside nodes


@pytest.fixture(scope="session")
def hakuriver_wheelhouse() -> Any:
    """Wheels of hakuriver (fresh from the working tree) and its dependencies."""
    from .install import build_wheelhouse

    return build_wheelhouse()


@pytest.fixture(scope="session")
def node_py_image(docker_client: Any, harness_images: dict[str, str], hakuriver_wheelhouse: Any) -> str:
    """The node image with hakuriver's dependencies in /opt/hakuriver/venv (cached by tag)."""
    from .install import ensure_node_py_image

    return ensure_node_py_image(docker_client, harness_images["node"], hakuriver_wheelhouse)


@pytest.fixture
def hakuriver_node_factory(node_factory: NodeFactory, node_py_image: str, hakuriver_wheelhouse: Any) -> Any:
    """Like node_factory, but each node has hakuriver installed in /opt/hakuriver/venv."""
    from .install import install_hakuriver

    def make(suffix: str = "node", **kwargs: Any) -> Node:
        kwargs.setdefault("image", node_py_image)
        node = node_factory(suffix, **kwargs)
        install_hakuriver(node, hakuriver_wheelhouse)
        return node

    return make
