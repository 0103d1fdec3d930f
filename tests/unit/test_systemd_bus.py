"""The launcher's start over systemd's own bus: the unit's properties (pure), and the
D-Bus messages it sends and reads, checked against jeepney, a D-Bus library the
launcher itself cannot use (it runs as root on the standard library alone).

The real manager answers in tests/systemd, where every task starts this way."""

from __future__ import annotations

import os
import shlex
import socket
import threading
from collections.abc import Iterator

import pytest
from jeepney import DBusAddress, new_error, new_method_return, new_signal
from jeepney.low_level import HeaderFields, Message, Parser

from hakuriver import launcher as L

from .test_systemd_builders import CFG, plan

EVIL = ["sh", "-c", "$(id); echo ${HOME} $$ %n %i", "a;b && c", "q'\"", "new\nline", "back\\slash", "", "é ✓"]


def props_of(p: L.TaskPlan) -> dict:
    props = L.unit_properties(p, CFG, 7, 8)
    assert props is not None
    assert len({name for name, _ in props}) == len(props)
    return dict(props)


def as_systemd_runs_it(words: list[str]) -> list[str]:
    """The manager's expansion of a command's words: `$$` -> `$` (nothing else is left
    to expand when every `$` is doubled)."""
    for w in words:
        assert "$" not in w.replace("$$", ""), f"a lone $ in {w!r} would be expanded"
    return [w.replace("$$", "$") for w in words]


def test_the_unit_runs_the_task_as_its_user_with_exactly_its_environment() -> None:
    p = plan(command=EVIL, env={"FOO": "a $HOME b", "LD_PRELOAD": "/tmp/x.so"}, cores=2, memory=64 << 20)
    props = props_of(p)
    assert "User" not in props and "Environment" not in props  # see become_user
    sig, [(path, words, ignore)] = props["ExecStart"]
    assert (sig, path, ignore) == ("a(sasb)", "/usr/bin/setpriv", False)
    argv = as_systemd_runs_it(words)
    env_words = [f"{k}={v}" for k, v in p.env.items()]
    assert argv == [
        "/usr/bin/setpriv",
        "--reuid=1001",
        "--regid=1001",
        "--groups=1001",
        "--",
        "/usr/bin/env",
        "-i",
        "--chdir=/srv/shared",
        "--",
        *env_words,
        *EVIL,
    ]
    assert "LD_PRELOAD=/tmp/x.so" in env_words and "FOO=a $HOME b" in env_words
    assert props["StandardOutputFileDescriptor"] == ("h", 7) and props["StandardErrorFileDescriptor"] == ("h", 8)
    assert props["CPUQuotaPerSecUSec"] == ("t", 2_000_000) and props["MemoryMax"] == ("t", 64 << 20)
    assert props["IgnoreSIGPIPE"] == ("b", False) and props["Type"] == ("s", "exec")


def test_the_hook_is_the_same_plain_command_as_through_systemd_run() -> None:
    props = props_of(plan())
    through_run = shlex.split(L.poststop_command(123, CFG.state_dir))
    assert through_run == ["/bin/sh", f"{CFG.state_dir}/.poststop.sh", "123", CFG.state_dir]
    assert props["ExecStopPost"] == ("a(sasb)", [("/bin/sh", through_run, False)])


def test_limits_follow_the_request() -> None:
    props = props_of(plan(time_limit=5400, timeout_grace=30))
    assert props["RuntimeMaxUSec"] == ("t", 5400 * 10**6) and props["TimeoutStopUSec"] == ("t", 30 * 10**6)
    plain = props_of(plan())
    assert not {"RuntimeMaxUSec", "CPUQuotaPerSecUSec", "MemoryMax"} & set(plain)
    assert plain["TimeoutStopUSec"] == ("t", 15 * 10**6)


@pytest.mark.parametrize(
    "overrides",
    [
        {"command": ["/opt/a=b/run"]},  # env would take the program for a variable
        {"command": ["echo", "\udcff"]},  # D-Bus carries UTF-8 only
        {"env": {"X": "\ud800"}},
        {"command": ["echo", "\uffff"]},  # sd-bus refuses Unicode's noncharacters
        {"command": ["echo", "a\U0010fffe"]},
        {"env": {"X": "\ufdd0"}},
    ],
)
def test_what_the_bus_cannot_carry_goes_through_systemd_run(overrides: dict) -> None:
    # (tests/systemd runs a program whose name has a `=` that way, end to end)
    assert L.unit_properties(plan(**overrides), CFG, 7, 8) is None


def test_other_text_goes_on_the_bus() -> None:
    for text in ("\ufdcf", "\ufdf0", "\ufffd", "\U0010fffd", "tab\tnew\nline", "é ✓"):
        assert L.unit_properties(plan(command=["echo", text]), CFG, 7, 8) is not None, repr(text)


def test_the_config_names_the_bus_or_turns_it_off() -> None:
    assert CFG.systemd_bus == "/run/systemd/private"
    off = L.parse_config({**CFG.to_json(), "systemd_bus": ""})
    assert off.systemd_bus == "" and L.parse_config(off.to_json()).systemd_bus == ""
    with pytest.raises(L.Refused, match="systemd_bus"):
        L.parse_config({**CFG.to_json(), "systemd_bus": "run/x"})


# ------------------------------------------------------------------ the wire


def parse(data: bytes, fds: list[int] | None = None) -> Message:
    parser = Parser()
    parser.add_data(data, fds=fds or [])
    msg = parser.get_next_message()
    assert msg is not None and parser.get_next_message() is None  # one whole message
    return msg


def test_the_start_message_is_what_jeepney_reads() -> None:
    props = L.unit_properties(plan(command=EVIL, cores=2, time_limit=60), CFG, 7, 8)
    data, fds = L.dbus_method_call(
        5,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        ["hakuriver-task-123.service", "fail", props, []],
    )
    assert fds == [7, 8]
    msg = parse(data, fds)
    h = msg.header
    assert (h.message_type.value, h.serial) == (1, 5)
    assert {f.name: v for f, v in h.fields.items()} == {
        "path": "/org/freedesktop/systemd1",
        "interface": "org.freedesktop.systemd1.Manager",
        "member": "StartTransientUnit",
        "destination": "org.freedesktop.systemd1",
        "signature": "ssa(sv)a(sa(sv))",
        "unix_fds": 2,
    }
    name, mode, got, aux = msg.body
    assert (name, mode, aux) == ("hakuriver-task-123.service", "fail", [])
    # jeepney hands each descriptor back as the one that came with the message
    assert got == [(k, (s, _tuples(v))) for k, (s, v) in props]


def _tuples(value: object) -> object:
    if isinstance(value, list):
        return [_tuples(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_tuples(v) for v in value)
    return value


def test_a_call_without_arguments_has_no_signature_or_body() -> None:
    data, fds = L.dbus_method_call(1, "d.e", "/p", "org.freedesktop.DBus.Peer", "Ping", "", [])
    msg = parse(data)
    assert fds == [] and msg.body == () and "signature" not in {f.name for f in msg.header.fields}
    with pytest.raises(ValueError, match="takes 1 arguments"):
        L.dbus_method_call(1, "d.e", "/p", "i.f", "M", "s", [])


def test_strings_with_nul_are_refused() -> None:
    with pytest.raises(ValueError):
        L.dbus_method_call(1, "d.e", "/p", "i.f", "M", "s", ["a\0b"])


ADDR = DBusAddress("/org/freedesktop/systemd1", bus_name="org.freedesktop.systemd1", interface="i.f")


class FakeManager:
    """The other end of a socketpair, speaking the manager's side of the handshake and
    answering each call with what `answers` makes of it (jeepney's messages). Only for
    the launcher's reading of answers; the real manager is in tests/systemd."""

    def __init__(self, answers) -> None:
        self.ours, theirs = socket.socketpair()
        self.sock = theirs
        self.answers = answers
        self.seen: list[Message] = []
        self.handshake = b""
        self.serial = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.handshake.count(b"\r\n") < 3:
            self.handshake += self.sock.recv(4096)
        self.sock.sendall(b"OK 0123456789abcdef0123456789abcdef\r\nAGREE_UNIX_FD\r\n")
        parser = Parser()
        while True:
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 16)
            if not data:
                return
            parser.add_data(data, fds=fds)
            while (msg := parser.get_next_message()) is not None:
                self.seen.append(msg)
                for reply in self.answers(msg):
                    self.serial += 1
                    self.sock.sendall(reply.serialise(serial=self.serial))


@pytest.fixture
def bus_to() -> Iterator:
    made: list[FakeManager] = []

    def connect(answers):
        fake = FakeManager(answers)
        made.append(fake)
        return L.SystemdBus("/run/systemd/private", timeout=10, sock=fake.ours), fake

    yield connect
    for fake in made:
        fake.ours.close()  # its reader then sees the end, and returns
        fake.thread.join(timeout=10)
        fake.sock.close()


def member(msg: Message) -> str:
    return msg.header.fields.get(HeaderFields.member, "")


def test_a_start_is_sent_with_its_descriptors_and_a_signal_before_the_answer_is_skipped(bus_to) -> None:
    def answers(msg: Message) -> list:
        if member(msg) == "Ping":
            return [new_method_return(msg)]
        return [new_signal(ADDR, "JobNew", "uos", (1, "/job/1", "x")), new_method_return(msg, "o", ("/job/1",))]

    bus, fake = bus_to(answers)
    uid = str(os.geteuid()).encode().hex().encode()
    assert fake.handshake == b"\0AUTH EXTERNAL " + uid + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"
    r, w = os.pipe()
    try:
        bus.start_transient_unit("hakuriver-task-5.service", [("StandardOutputFileDescriptor", ("h", w))])
        start = fake.seen[-1]
        assert start.body[0] == "hakuriver-task-5.service"
        passed = start.body[2][0][1][1]
        assert passed != w  # a new descriptor, received
        os.write(passed, b"through the descriptor")
        assert os.read(r, 100) == b"through the descriptor"
        os.close(passed)
    finally:
        os.close(r)
        os.close(w)
        bus.close()
    assert [member(m) for m in fake.seen] == ["Ping", "StartTransientUnit"]


def test_an_error_answer_is_a_bus_error_with_its_name_and_text(bus_to) -> None:
    def answers(msg: Message) -> list:
        if member(msg) == "Ping":
            return [new_method_return(msg)]
        return [new_error(msg, "org.freedesktop.systemd1.UnitExists", "s", ("Unit x.service was already loaded",))]

    bus, _ = bus_to(answers)
    try:
        with pytest.raises(L.BusError) as caught:
            bus.start_transient_unit("x.service", [])
    finally:
        bus.close()
    assert caught.value.name == "org.freedesktop.systemd1.UnitExists"
    assert caught.value.text == "Unit x.service was already loaded"


def test_signals_without_an_answer_do_not_stretch_the_call_past_its_deadline(bus_to) -> None:
    # Every 0.1 s a signal, never the answer: each read succeeds, so only a deadline for
    # the whole call (not one per read) ends it.
    stop = threading.Event()

    def answers(msg: Message) -> Iterator[Message]:
        if member(msg) == "Ping":
            yield new_method_return(msg)
            return
        while not stop.wait(0.1):
            yield new_signal(ADDR, "UnitNew", "so", ("x.service", "/unit/x"))

    bus, _ = bus_to(answers)
    bus.timeout = 1.0
    try:
        with pytest.raises(TimeoutError):
            bus.start_transient_unit("x.service", [])
    finally:
        stop.set()
        bus.close()
