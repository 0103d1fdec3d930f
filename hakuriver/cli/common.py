"""What every HakuRiver console script shares.

- `CliParser`: argparse with one-line errors (`prog: error: ...`, exit 2).
- `common_options()`: the shared parent parser (`--config`, `--json`, `-v`),
  accepted before or after the subcommand.
- `execute()`: parse, run the subcommand's coroutine, and turn every
  expected failure into one line on stderr and an exit status. Never a
  traceback for user errors, bad input or an unreachable Host.
- Small formatting helpers for the human-readable tables.

Exit statuses (the same for every CLI):

    0    success
    1    failure: the Host refused the request, could not be reached, the
         config is invalid, or a waited-for task did not end `completed`
    2    usage: bad flags or values, refused locally before anything is sent
    124  `wait` / `submit --wait`: the timeout passed before every task ended
    130  interrupted (Ctrl-C)
    141  stdout was closed early (e.g. `| head`)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..config import TOKEN_ENV_VAR
from ..errors import ConfigError, HakuRiverError, ValidationError
from ..ids import parse_id
from ..logrepeats import CollapseRepeats
from ..parsing import format_size as format_size  # re-exported: the CLIs import it from here
from ..parsing import parse_since

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def exit_codes_epilog(*, waits: bool = False) -> str:
    """The `exit status:` part of a command's --help. Only a command that waits
    for tasks (`submit --wait`, `wait`) can end 124 or on a task that did not
    complete; the others do not list what they never return."""
    failure = "Host error, Host unreachable, bad config"
    failure += ", or a waited-for task did not complete)" if waits else ")"
    lines = [
        "exit status:",
        "  0    success",
        f"  1    failure ({failure}",
        "  2    usage error (bad flags or values; nothing was sent)",
    ]
    if waits:
        lines.append("  124  timeout while waiting for tasks")
    lines.append("  130  interrupted")
    return "\n".join(lines)


EXIT_CODES_EPILOG = exit_codes_epilog()
"""For commands that never wait: 0, 1, 2, 130."""
WAIT_EXIT_CODES_EPILOG = exit_codes_epilog(waits=True)
"""For `hakuriver.task` and its waiting commands: 124 as well."""

SERVICE_EPILOG = """\
exit status:
  0    stopped cleanly (SIGINT or SIGTERM)
  1    could not start (bad config, port in use) or stopped on an error
  2    usage error"""

CONFIG_HELP = (
    "config file (default: $HAKURIVER_CONFIG, then ~/.hakuriver/config.toml, then /etc/hakuriver/client.toml "
    "for clients, then built-in defaults)"
)
SERVICE_CONFIG_HELP = "config file (default: $HAKURIVER_CONFIG, then ~/.hakuriver/config.toml, then built-in defaults)"


class UsageError(Exception):
    """Bad command-line input found after parsing: one line, exit 2."""


class CliParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line: `hakuriver.task: error: ...`.

    Long options must be spelled out: argparse's prefix matching would take a
    typo such as `--core 2` as `--cores 2` and run something the user did not
    type. Subparsers are built with the parent's class, so `add_parser` gets
    the same rule.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        root = self.prog.split()[0]
        self.exit(EXIT_USAGE, f"{root}: error: {one_line(message)} (see '{self.prog} --help')\n")


def common_options(*, subcommand: bool = False) -> argparse.ArgumentParser:
    """The shared parent parser: `--config`, `--json`, `-v`.

    Add it to the top-level parser and (with `subcommand=True`) to each
    subparser, so the options work on either side of the subcommand. In
    subparsers the defaults are suppressed: otherwise a subparser's default
    would overwrite a value given before the subcommand.
    """
    parent = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if subcommand else None
    group = parent.add_argument_group("common options")
    group.add_argument("--config", metavar="PATH", default=default, help=CONFIG_HELP)
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if subcommand else False,
        help="print the API's JSON instead of tables (for scripts)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if subcommand else False,
        help="log debugging details to stderr",
    )
    return parent


def service_options() -> argparse.ArgumentParser:
    """The parent parser of the services (`hakuriver.host`, `hakuriver.runner`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="PATH", help=SERVICE_CONFIG_HELP)
    parent.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return parent


# ------------------------------------------------------------ argparse types
def task_id_arg(text: str) -> str:
    """argparse `type=` for a task id: a positive 64-bit decimal number."""
    try:
        return str(parse_id(text.strip()))
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


MAX_PAGE = 1000
"""The most tasks one `GET /api/tasks` page holds (the Host's cap): `list`
and `history` refuse a larger --limit before asking."""


def positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add_page_options(p: argparse.ArgumentParser) -> None:
    """`--limit N` and `--before ID`: one page of a task listing (`list`, `history`)."""
    p.add_argument(
        "--limit",
        type=positive_int_arg,
        default=100,
        metavar="N",
        help=f"at most N tasks (default 100, at most {MAX_PAGE})",
    )
    p.add_argument("--before", type=task_id_arg, metavar="ID", help="only tasks older than ID (the next page)")


def non_negative_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite, non-negative number of seconds")
    return value


# ---------------------------------------------------------------- running
class Connect:
    """Loads the config (only when a command needs the Host) and builds the client.

    Commands validate their own input first and call this afterwards, so a
    bad flag is reported as a usage error even without a config file.
    """

    def __init__(self, config_path: str | None):
        self.config_path = config_path
        self.config: Any = None

    def __call__(self) -> Any:
        from ..client import HostClient
        from ..config import CONFIG_ENV_VAR, SYSTEM_CLIENT_CONFIG_PATH, TOKEN_ENV_VAR, load_config
        from .credentials import read_personal_token

        config = load_config(self.config_path, client=True)
        self.config = config
        token = config.auth.client_token() or read_personal_token()
        if not token:
            if config.source:
                raise ConfigError(
                    f"no API token in {config.source}: run 'hakuriver.client login' with the token your admin "
                    f"gave you (hakuriver.admin user add/token), or set ${TOKEN_ENV_VAR}"
                )
            raise ConfigError(
                f"no config file found (--config, ${CONFIG_ENV_VAR}, ~/.hakuriver/config.toml, "
                f"{SYSTEM_CLIENT_CONFIG_PATH}) and no ${TOKEN_ENV_VAR}; run 'hakuriver.init config --client' "
                "or pass --config"
            )
        from ..tls import client_context

        return HostClient(config.host_url, token, ssl_context=client_context(config.tls))


Handler = Callable[[argparse.Namespace, Connect], Coroutine[Any, Any, int]]


def execute(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse `argv`, run `args.func(args, connect)`, map failures to exit statuses."""
    prog = parser.prog.split()[0]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if getattr(args, "verbose", False):
        logging.basicConfig(
            level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    connect = Connect(getattr(args, "config", None))
    handler: Handler = args.func
    try:
        return asyncio.run(handler(args, connect))
    except UsageError as exc:
        return fail(prog, str(exc), EXIT_USAGE)
    except ValidationError as exc:  # a local parser refused a flag's value
        return fail(prog, exc.message, EXIT_USAGE)
    except HakuRiverError as exc:
        message = exc.message
        if exc.status == 401 and exc.code == "unauthorized":
            source = getattr(connect.config, "source", None) or "the config"
            message += f" (check ${TOKEN_ENV_VAR} or auth.token in {source})"
        if getattr(args, "verbose", False):
            message += f" [{type(exc).__name__}, code={exc.code}, status={exc.status}]"
        return fail(prog, message, EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug, or an answer this CLI does not understand
        if getattr(args, "verbose", False):
            raise
        return fail(prog, f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", EXIT_FAILURE)


def fail(prog: str, message: str, status: int = EXIT_FAILURE) -> int:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return status


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that
    # flush does not raise a second BrokenPipeError with a traceback.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# ------------------------------------------------------------------ output
def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


_CONTROL_CHARS = {i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\t"): "\\t",
    ord("\r"): "\\r",
}


def printable(text: str) -> str:
    """`text` with control characters written as escapes (`\\n`, `\\t`, `\\x1b`).

    A cell of a table, or a line of `status`, holds what a user typed (a
    multi-line `python -c` script, a node or environment name): a raw newline
    would break the row in two and an escape sequence would drive the
    terminal. Backslashes are left alone, so this is for display only.
    """
    return text.translate(_CONTROL_CHARS)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain left-aligned table, columns two spaces apart, no trailing blanks,
    one line per row whatever the cells hold (see `printable`)."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None or c == "" else printable(str(c)) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def format_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def format_ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    delta = max(0.0, (time.time() if now is None else now) - ts)
    if delta < 60:
        return f"{delta:.0f}s ago"
    if delta < 3600:
        return f"{delta // 60:.0f}m ago"
    if delta < 86400:
        return f"{delta // 3600:.0f}h ago"
    return f"{delta // 86400:.0f}d ago"


def format_command(argv: Sequence[str], width: int | None = None) -> str:
    """An argv list shown shell-quoted, on one line (for display only; never executed).
    Control characters are escaped before truncating, so `width` holds."""
    text = printable(shlex.join(argv)) if argv else "-"
    if width is not None and len(text) > width:
        text = text[: max(width - 3, 1)] + "..."
    return text


def format_cpus(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 3, 8] -> "0-3,8"."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts) or "-"


# --------------------------------------------------------------- services
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


LOG_FILE_MODE = 0o640
"""A service's log file: it may quote request lines (a token, in the worst case)."""


def _not_world_readable(path: str) -> None:
    """Create the log file LOG_FILE_MODE, or take others' access away from an old one."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
    try:
        mode = os.fstat(fd).st_mode & 0o7777
        if mode & 0o007:
            os.fchmod(fd, mode & ~0o007)
    finally:
        os.close(fd)


def setup_service_logging(verbose: bool, log_file: str) -> None:
    """stderr always (journald picks it up), plus `log_file` when set; identical
    records in a burst are written once with a count (`logrepeats`)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        path = os.path.expanduser(log_file)
        try:
            _not_world_readable(path)
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot open log file {path}: {exc.strerror or exc}") from None
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redact_secrets)
    # One handler on the root: repeats of a record are written once, with a count.
    root.addHandler(CollapseRepeats(handlers))
    if not verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\\\"]+")


def redact_secrets(record: logging.LogRecord) -> bool:
    """A log filter: whatever logs a request line or header (aiohttp's parser
    errors quote the raw header) shows `Bearer <redacted>`, never the token."""
    message = record.getMessage()
    if "earer" in message:
        record.msg, record.args = _BEARER.sub(r"\1<redacted>", message), None
    if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
        text = str(record.exc_info[1])
        if "earer" in text:
            record.exc_text = _BEARER.sub(r"\1<redacted>", logging.Formatter().formatException(record.exc_info))
    return True


def serve(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    factory: Callable[[Any], Any],
    bind: Callable[[Any], tuple[str, int]],
    log_file: Callable[[Any], str],
) -> int:
    """Run a service (`hakuriver.host`, `hakuriver.runner`) until SIGINT/SIGTERM.

    `factory(config)` imports and calls the service's `create_app`; `bind`
    and `log_file` pick the address and log file from the config. The
    server applies the `[network]` connection limits (`run_service`). With
    `tls.enabled` it serves HTTPS, its [tls] files checked before anything
    starts; without, it logs one warning that the API is plain HTTP. Config
    errors, a port already in use and other expected failures print one
    line and exit 1.
    """
    from ..config import load_config
    from ..connlimits import ConnectionLimits

    prog = parser.prog.split()[0]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    log = logging.getLogger(f"hakuriver.{prog.rpartition('.')[2]}")
    try:
        config = load_config(args.config)
        setup_service_logging(args.verbose, log_file(config))
        host, port = bind(config)
        ssl_context = _service_tls(config, log)
        app = factory(config)
        log.info(
            "%s starting on %s:%d over %s (config: %s)",
            prog,
            host,
            port,
            "HTTPS" if ssl_context is not None else "plain HTTP",
            config.source or "built-in defaults",
        )
        try:
            run_service(app, host, port, ssl_context=ssl_context, limits=ConnectionLimits.from_config(config))
        except OSError as exc:
            raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    except HakuRiverError as exc:
        return fail(prog, exc.message, EXIT_FAILURE)
    except ImportError as exc:
        return fail(prog, f"cannot load the service: {exc}", EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:
        log.exception("%s stopped on an unexpected error", prog)
        return EXIT_FAILURE
    log.info("%s stopped", prog)
    return EXIT_OK


def run_service(app: Any, host: str, port: int, *, ssl_context: Any, limits: Any) -> None:
    """Serve `app` on `host`:`port` until SIGINT/SIGTERM, like `web.run_app`,
    but through `connlimits.GuardedSite` (connections counted per address and
    in all, refused beyond `limits`) with aiohttp's keep-alive timeout set from
    `limits`. OSError: the port cannot be bound (the app is cleaned up first)."""
    from aiohttp import web
    from aiohttp.web_runner import GracefulExit

    from ..connlimits import CONNECTION_LIMITER, ConnectionLimiter, GuardedSite, fit_to_fd_limit

    limiter = ConnectionLimiter(fit_to_fd_limit(limits))
    app[CONNECTION_LIMITER] = limiter

    async def main() -> None:
        runner = web.AppRunner(app, handle_signals=True, keepalive_timeout=limiter.limits.keepalive_timeout)
        await runner.setup()
        try:
            await GuardedSite(runner, host, port, limiter, ssl_context=ssl_context).start()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not task.done():
            task.cancel()  # runs main's cleanup
            with contextlib.suppress(asyncio.CancelledError, GracefulExit):
                loop.run_until_complete(task)
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


def exit_service(code: int) -> None:
    """End a service process with `code`. After a failed start a worker thread
    (the database's) may still be alive and would keep the process from exiting,
    hung and not listening, where systemd's Restart= never fires: a service that
    failed ends at once."""
    if code == EXIT_OK:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _service_tls(config: Any, log: logging.Logger) -> Any:
    """The server's SSL context, every [tls] file checked now (ConfigError: one
    line); None, with one warning, when TLS is off."""
    from ..tls import PLAIN_HTTP_WARNING, service_contexts

    if not config.tls.enabled:
        log.warning(PLAIN_HTTP_WARNING)
        return None
    server, _client = service_contexts(config)
    log.info(
        "HTTPS with tls.cert_file %s; peers verified against %s",
        config.tls.cert_file,
        config.tls.ca_file or "the system's trust store (tls.ca_file is empty)",
    )
    return server


def since_arg(text: str) -> float:
    """`--since DATE` for argparse: an ISO date or date-time (local time),
    `7d`/`24h`/`90m` ago, or epoch seconds, as epoch seconds; a bad one is a
    one-line usage error."""
    try:
        return parse_since(text, time.time())
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
