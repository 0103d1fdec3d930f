"""`hakuriver.docker`: environments, the containers HakuRiver tasks run in.

    hakuriver.docker create-container python:3.12-slim myenv   # an environment container on the Host
    hakuriver.docker shell myenv                               # a terminal in it (pip install ...)
    hakuriver.docker create-tar myenv                          # a new version, for every runner
    hakuriver.task submit --container myenv -- python3 train.py

Everything goes through the Host's API; nothing here talks to Docker. Names
are checked locally with the Host's own rule (lower-case, what Docker accepts
as a repository name) before anything is sent. Long operations print the
Host's progress lines on stderr.

`shell` puts the local terminal in raw mode and relays bytes both ways over
a websocket (binary frames); a window-size change becomes a `resize` control
message (a text frame, JSON). Ctrl-C, Ctrl-Z and Ctrl-D are plain bytes for
the remote terminal. The local terminal is restored however the session
ends, and the exit status is the remote program's. A piped stdin
(`echo cmd | hakuriver.docker shell NAME`) ends as end of input does on a
terminal, with Ctrl-D (see `EndOfInput`), so the remote shell exits with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import HakuRiverError
from ..parsing import validate_env_name
from .common import (
    EXIT_CODES_EPILOG,
    EXIT_OK,
    CliParser,
    Connect,
    UsageError,
    common_options,
    execute,
    format_size,
    format_time,
    non_negative_int_arg,
    print_json,
    printable,
    table,
)

PROG = "hakuriver.docker"
EOF_BYTE = b"\x04"
"""What a closed stdin (not a terminal) becomes on the remote terminal: Ctrl-D."""
EOF_REPEAT = 0.5
EOF_REPEAT_MAX = 20
"""Seconds between two Ctrl-Ds after the end of a piped stdin, until the program ends."""
READ_SIZE = 65536
PROGRESS_EVERY = 5.0
"""Seconds between two counting lines (`[upload] sent N MiB`) when stderr is not a
terminal: a log or CI output gets a line every few seconds, not one per MiB."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser. Pure: reads no config, environment, network or files."""
    parser = CliParser(
        prog=PROG,
        description="Manage HakuRiver environments: the environment containers on the Host and the versioned "
        "tarballs in shared storage that every runner loads before a task with --container NAME.",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = _subparser(sub, "list-containers", "list the environment containers on the Host")
    p.set_defaults(func=_cmd_list_containers)

    p = _subparser(sub, "create-container", "create and start an environment container from an image on the Host")
    p.add_argument("image", metavar="IMAGE", help="an image present on the Host, e.g. python:3.12-slim")
    _name(p)
    p.add_argument(
        "--pull",
        action="store_true",
        help="pull IMAGE on the Host if it is not there (by default nothing is ever pulled)",
    )
    p.set_defaults(func=_cmd_create_container)

    for action, text in (
        ("start", "start a stopped environment container"),
        ("stop", "stop an environment container (its changes are kept)"),
        ("delete", "delete an environment container (its tarballs are kept)"),
    ):
        p = _subparser(sub, f"{action}-container", text)
        _name(p)
        p.set_defaults(func=_cmd_container_action, action=action)

    p = _subparser(
        sub,
        "shell",
        "open an interactive terminal in a running environment container",
        usage=f"{PROG} shell [options] NAME [-- COMMAND [ARG ...]]",
    )
    _name(p)
    p.add_argument(
        "command_argv",
        nargs=argparse.REMAINDER,
        metavar="COMMAND",
        help="program to run instead of a login shell (bash, else sh), after '--'",
    )
    p.set_defaults(func=_cmd_shell)

    p = _subparser(sub, "create-tar", "commit an environment container as a new version and save its tarball")
    _name(p)
    p.set_defaults(func=_cmd_create_tar)

    p = _subparser(sub, "list-tars", "list the environment tarballs in shared storage")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this environment")
    p.set_defaults(func=_cmd_list_tars)

    p = _subparser(sub, "delete-tar", "delete an environment's tarballs (all versions, or one)")
    _name(p)
    p.add_argument("--version", type=non_negative_int_arg, metavar="VERSION", help="only this version")
    p.set_defaults(func=_cmd_delete_tar)

    p = _subparser(sub, "import-image", "make a new version of an environment from an image on the Host")
    p.add_argument("image", metavar="LOCAL_IMAGE", help="an image present on the Host")
    _name(p)
    p.add_argument("--pull", action="store_true", help="pull LOCAL_IMAGE on the Host if it is not there")
    p.set_defaults(func=_cmd_import_image)

    p = _subparser(sub, "import-tar", "make a new version of an environment from a 'docker save' tarball (uploaded)")
    p.add_argument("file", metavar="FILE", help="an image tarball on this machine, as 'docker save' writes it")
    _name(p)
    p.set_defaults(func=_cmd_import_tar)
    return parser


def _subparser(sub: Any, name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text[:1].upper() + help_text[1:] + ".",
        parents=[common_options(subcommand=True)],
        **kwargs,
    )


def _name(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name", metavar="NAME", help="environment name: lower-case letters, digits and '.', '_' or '-' between them"
    )


class ProgressPrinter:
    """Shows an operation's progress events on `stream` (stderr).

    Most events are one line each (`[load] loading the tarball ...`). Counting
    events, those with a `bytes` figure (the upload, the Host's save), arrive
    every MiB or every second: on a terminal they rewrite one line in place;
    elsewhere a stage's count is printed when the stage starts, then at most
    once every `every` seconds, and its last figure when the stage ends (the
    next stage, or `close()`), so a 160 MiB upload is a few lines, not 160.
    """

    def __init__(
        self,
        stream: Any,
        *,
        tty: bool | None = None,
        every: float = PROGRESS_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self.every = every
        self.clock = clock
        self._stage: str | None = None  # the stage of the counting line in progress
        self._printed_at = 0.0
        self._held: str | None = None  # its newest line, not printed yet (not a terminal)
        self._open_line = False  # a terminal line waits for its newline

    def __call__(self, event: dict[str, Any]) -> None:
        stage = str(event.get("stage", ""))
        line = printable(f"[{stage}] {event.get('message', '')}")
        if "bytes" not in event:
            self._end_count()
            self._write(line + "\n")
            return
        if stage != self._stage:
            self._end_count()
            self._stage = stage
        elif not self.tty and self.clock() - self._printed_at < self.every:
            self._held = line
            return
        if self.tty:
            self._write("\r\x1b[K" + line)
            self._open_line = True
        else:
            self._write(line + "\n")
            self._held = None
        self._printed_at = self.clock()

    def close(self) -> None:
        """End the counting line in progress (its last figure, or the terminal's newline)."""
        self._end_count()

    def _end_count(self) -> None:
        if self._open_line:
            self._write("\n")
            self._open_line = False
        elif self._held is not None:
            self._write(self._held + "\n")
        self._held = None
        self._stage = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _progress(args: argparse.Namespace) -> Iterator[ProgressPrinter]:
    printer = ProgressPrinter(sys.stderr)
    try:
        yield printer
    finally:
        printer.close()


def _print_result(args: argparse.Namespace, result: dict[str, Any], line: str) -> int:
    if args.json:
        print_json(result)
    else:
        print(line)
    return EXIT_OK


# --------------------------------------------------------------- containers
async def _cmd_list_containers(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.list_env_containers()
    if args.json:
        print_json(result)
        return EXIT_OK
    rows = [(c["name"], c["status"], c.get("id"), c.get("image")) for c in result["containers"]]
    print(table(("NAME", "STATUS", "CONTAINER", "IMAGE"), rows))
    return EXIT_OK


async def _cmd_create_container(args: argparse.Namespace, connect: Connect) -> int:
    validate_env_name(args.name)
    async with connect() as host:
        with _progress(args) as progress:
            result = await host.create_env_container(args.name, args.image, pull=args.pull, progress=progress)
    return _print_result(args, result, f"{result['name']}  {result['status']}  ({result['container']})")


async def _cmd_container_action(args: argparse.Namespace, connect: Connect) -> int:
    validate_env_name(args.name)
    async with connect() as host:
        method = {
            "start": host.start_env_container,
            "stop": host.stop_env_container,
            "delete": host.delete_env_container,
        }[args.action]
        result = await method(args.name)
    return _print_result(args, result, f"{args.name}  {result.get('status', 'deleted')}")


# ------------------------------------------------------------------ tarballs
async def _cmd_create_tar(args: argparse.Namespace, connect: Connect) -> int:
    validate_env_name(args.name)
    async with connect() as host:
        with _progress(args) as progress:
            result = await host.create_tarball(args.name, progress=progress)
    return _print_result(args, result, _version_line(result))


def _version_line(result: dict[str, Any]) -> str:
    line = f"{result['name']}  version {result['version']}  {result['file']}  {format_size(result.get('size'))}"
    if result.get("removed"):
        line += f"  (removed {', '.join(result['removed'])})"
    return line


async def _cmd_list_tars(args: argparse.Namespace, connect: Connect) -> int:
    if args.name:
        validate_env_name(args.name)
    async with connect() as host:
        result = await host.list_tarballs(args.name)
    if args.json:
        print_json(result)
        return EXIT_OK
    rows, seen = [], set()
    for t in result["tarballs"]:
        newest = t["name"] not in seen
        seen.add(t["name"])
        rows.append(
            (
                t["name"],
                t["version"],
                format_time(t["version"]),
                format_size(t["size"]),
                "yes" if newest else "no",
                t["file"],
            )
        )
    print(table(("NAME", "VERSION", "CREATED", "SIZE", "NEWEST", "FILE"), rows))
    return EXIT_OK


async def _cmd_delete_tar(args: argparse.Namespace, connect: Connect) -> int:
    validate_env_name(args.name)
    async with connect() as host:
        result = await host.delete_tarball(args.name, args.version)
    return _print_result(args, result, "\n".join(f"deleted {t['file']}" for t in result["deleted"]))


async def _cmd_import_image(args: argparse.Namespace, connect: Connect) -> int:
    validate_env_name(args.name)
    async with connect() as host:
        with _progress(args) as progress:
            result = await host.import_image(args.name, args.image, pull=args.pull, progress=progress)
    return _print_result(args, result, _version_line(result))


async def _cmd_import_tar(args: argparse.Namespace, connect: Connect) -> int:
    validate_env_name(args.name)
    if not os.path.isfile(args.file):
        raise UsageError(f"{args.file} is not a file")
    async with connect() as host:
        await _check_engine(host)
        with _progress(args) as progress:
            result = await host.import_tar(args.name, args.file, progress=progress)
    return _print_result(args, result, _version_line(result))


async def _check_engine(host: Any) -> None:
    """Refuse before uploading when the Host cannot use Docker: the Host reads the
    whole body before it loads it, so a GiB tarball would travel only to be
    refused. Listing the environment containers is one cheap engine call."""
    try:
        await host.list_env_containers()
    except HakuRiverError as exc:
        if exc.code != "docker":
            raise
        raise HakuRiverError(f"{exc.message} (nothing was uploaded)", code=exc.code, status=exc.status) from None


# --------------------------------------------------------------------- shell
@dataclass(frozen=True)
class ServerMessage:
    """A control message from the Host: `exit` (with the program's status) or `error`."""

    kind: str
    code: int | None = None
    message: str = ""


def resize_message(rows: int, cols: int) -> str:
    """The text frame announcing the local terminal's size. Pure."""
    return json.dumps({"type": "resize", "rows": int(rows), "cols": int(cols)}, separators=(",", ":"))


def parse_server_message(text: str) -> ServerMessage:
    """A text frame from the Host. Pure; unknown messages are kind 'unknown'."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ServerMessage("unknown", message=text[:200])
    if not isinstance(msg, dict):
        return ServerMessage("unknown", message=text[:200])
    kind = msg.get("type")
    if kind == "exit":
        code = msg.get("code")
        return ServerMessage("exit", code if isinstance(code, int) and not isinstance(code, bool) else None)
    if kind == "error":
        return ServerMessage("error", message=str(msg.get("message", "")))
    return ServerMessage("unknown", message=text[:200])


def exit_status(code: int | None) -> int:
    """The CLI's exit status for a remote exit code (None: unknown, 1). Pure."""
    if code is None:
        return 1
    return code if 0 <= code <= 255 else 1


def shell_command(argv: list[str]) -> list[str] | None:
    """The remote program from `shell NAME -- CMD ...` (None: the default login shell). Pure."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    if argv and not argv[0]:
        raise UsageError("the program (the first word after '--') must not be empty")
    return list(argv) or None


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on `fd`, or of the environment's idea of one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        size = shutil.get_terminal_size()
    return max(1, size.lines), max(1, size.columns)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on `fd` (a terminal) for the duration; always restored."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[n:]


class EndOfInput:
    """Called at the end of the local stdin: Ctrl-D for the remote terminal, repeated.

    The remote program reads a terminal, which has no "closed" state: a closed
    stdin becomes Ctrl-D, the terminal's end of input. One is not enough: input
    sent ahead reaches the terminal before the shell reads it, in canonical
    mode, and a Ctrl-D consumed there is lost when bash's readline switches the
    terminal to raw mode (F9: `echo cmd | shell NAME` hung at the prompt). So,
    as every read of a closed pipe sees end of input, a Ctrl-D goes out every
    EOF_REPEAT seconds until the session ends (`relay` cancels `task`), at most
    EOF_REPEAT_MAX times: those a busy program has not read yet wait in the
    terminal's input queue, which must not fill up.
    """

    def __init__(self, outgoing: asyncio.Queue[bytes | str | None]):
        self.outgoing = outgoing
        self.task: asyncio.Future[None] | None = None

    def __call__(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._repeat())

    async def _repeat(self) -> None:
        for _ in range(EOF_REPEAT_MAX):
            self.outgoing.put_nowait(EOF_BYTE)
            await asyncio.sleep(EOF_REPEAT)


async def relay(ws: Any, in_fd: int, out_fd: int, *, interactive: bool) -> int:
    """Relay a terminal session until the remote program ends; its exit status."""
    from aiohttp import WSMsgType

    loop = asyncio.get_running_loop()
    outgoing: asyncio.Queue[bytes | str | None] = asyncio.Queue()
    stdin_open = True

    def on_stdin() -> None:
        nonlocal stdin_open
        try:
            data = os.read(in_fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            outgoing.put_nowait(data)
            return
        loop.remove_reader(in_fd)
        stdin_open = False
        at_end_of_input()

    def on_winch() -> None:
        outgoing.put_nowait(resize_message(*terminal_size(out_fd if interactive else in_fd)))

    async def sender() -> None:
        while (item := await outgoing.get()) is not None:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_str(item)

    async def read_file() -> None:  # stdin is a regular file, which epoll cannot watch
        while data := await asyncio.to_thread(os.read, in_fd, READ_SIZE):
            outgoing.put_nowait(data)
        at_end_of_input()

    at_end_of_input = EndOfInput(outgoing)

    file_reader: asyncio.Future[None] | None = None
    try:
        loop.add_reader(in_fd, on_stdin)
    except PermissionError:
        stdin_open = False
        file_reader = asyncio.ensure_future(read_file())
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGWINCH, on_winch)
    send_task = asyncio.ensure_future(sender())
    code: int | None = None
    error: str | None = None
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                _write_all(out_fd, msg.data)
            elif msg.type == WSMsgType.TEXT:
                parsed = parse_server_message(msg.data)
                if parsed.kind == "exit":
                    code = parsed.code
                    break
                if parsed.kind == "error":
                    error = parsed.message
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                break
            if send_task.done():
                break
    finally:
        if stdin_open:
            loop.remove_reader(in_fd)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGWINCH)
        for task in (send_task, file_reader, at_end_of_input.task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    if code is None:
        raise HakuRiverError(error or "the shell connection closed before the program ended", code="shell")
    return exit_status(code)


async def _cmd_shell(args: argparse.Namespace, connect: Connect) -> int:
    validate_env_name(args.name)
    command = shell_command(list(args.command_argv))
    try:
        in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    except (OSError, ValueError) as exc:  # io.UnsupportedOperation is both
        raise UsageError(f"shell needs a standard input and output with file descriptors ({exc})") from None
    interactive = os.isatty(in_fd) and os.isatty(out_fd)
    rows, cols = terminal_size(out_fd)
    sys.stdout.flush()
    async with connect() as host:
        ws = await host.open_shell(
            args.name, command=command, rows=rows, cols=cols, term=os.environ.get("TERM") or "xterm"
        )
        async with ws:
            if not interactive:
                return await relay(ws, in_fd, out_fd, interactive=False)
            with raw_terminal(in_fd):
                return await relay(ws, in_fd, out_fd, interactive=True)


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    return execute(build_parser(), argv)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
