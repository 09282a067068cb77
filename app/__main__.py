"""``python -m app`` / ``cifar10-serve``: run uvicorn with the settings from the environment.

``python -m app keys new NAME [--append FILE]``: make an API key (app/access.py) and print it with its
line for API_KEYS_FILE (or append the line to FILE). The key is printed once and stored nowhere.
"""

import argparse
import errno
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from app.settings import SettingsProblem, get_settings

# Seconds uvicorn waits for in-flight requests after SIGTERM/SIGINT before cutting them off.
GRACEFUL_SHUTDOWN_S = 30


def _ignore_reraised_sigterm(signum: int, frame: FrameType | None) -> None:
    """Does nothing, on purpose: see main()."""


def address_problem(host: str, port: int, setting: str = "PORT") -> str | None:
    """Why uvicorn could not listen on HOST:PORT, in one line that names the setting to change; None if it can.

    Checked before uvicorn starts, which would load the model for seconds and then fail to bind with
    a bare ``[Errno 98]``. (Another process could still take the port in between; uvicorn then
    reports it itself.)"""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return (f"error: {setting} {port} is already in use on {host} (another server, or an earlier one "
                    f"still running). Stop it, or set {setting} to a free port, e.g. {setting}={port + 1} make serve.")
        if error.errno == errno.EACCES:
            return (f"error: {setting} {port} needs root privileges on this machine. Set {setting} above 1023, "
                    f"e.g. {setting}={8000 if setting == 'PORT' else 9100}.")
        return (f"error: cannot listen on HOST {host}, {setting} {port} ({error.strerror or error}). Set HOST to an "
                "address of this machine: 127.0.0.1 for this machine only, 0.0.0.0 for every interface.")
    return None


def keys_command(argv: list[str]) -> None:
    from app.access import hash_line, new_key

    parser = argparse.ArgumentParser(prog="python -m app keys", description="Make API keys for API_KEYS_FILE.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a key: print it, and its 'NAME SHA256HEX' line for API_KEYS_FILE")
    new.add_argument("name", help="who the key is for: one word, shown in the service's log when keys load")
    new.add_argument("--append", metavar="FILE", help="append the line to FILE (created, mode 0600, if missing) "
                     "instead of printing it; the service re-reads the file when it changes")
    args = parser.parse_args(argv)
    key = new_key()
    try:
        line = hash_line(args.name, key)
    except ValueError as error:
        parser.error(str(error))
    if args.append:
        try:
            # The folder too: compose mounts the folder (deploy/compose.api-keys.yml), and a fresh clone has none.
            Path(args.append).parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(args.append, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(descriptor, "a") as file:
                file.write(line + "\n")
        except OSError as error:  # the key is not printed: a key whose line was not stored would not work
            why = (f"a file is in the way of its folder {error.filename}"
                   if error.errno in (errno.EEXIST, errno.ENOTDIR) else error.strerror or str(error))
            sys.exit(f"error: cannot append to {args.append}: {why}. Pass a file you can write, or leave out --append "
                     "to print the line.")
        print(key)
        print(f"(its hash line for '{args.name}' was appended to {args.append}; the key itself is stored nowhere)",
              file=sys.stderr)
        return
    print(f"key:  {key}")
    print(f"line: {line}")
    print("Give the key to its user (it is shown once and stored nowhere); append the line to API_KEYS_FILE.",
          file=sys.stderr)


def settings_in_words() -> str:
    """Every setting as its environment variable, default and description: the --help epilog."""
    from app.settings import Settings

    lines = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "computed"
        elif field.default is None:
            default = "unset"
        else:
            default = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
        lines.append(f"  {name.upper()} (default {default}): {field.description or ''}")
    return "\n".join(lines)


def serve_command(argv: list[str]) -> None:
    """Takes no arguments: every setting is an environment variable. --help lists them; anything else is a
    usage error, rather than starting a server that ignores it."""
    prog = "python -m app" if Path(sys.argv[0]).name == "__main__.py" else Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the CIFAR-10 classifier (uvicorn). Settings come from environment variables, e.g. "
                    f"PORT=8080 {prog}; '{prog} keys new NAME' makes an API key.",
        epilog="settings (environment variables):\n" + settings_in_words())
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}. Settings are environment variables, e.g. "
                     f"PORT=8080 {prog}; --help lists them.")


def main() -> None:
    if sys.argv[1:2] == ["keys"]:
        keys_command(sys.argv[2:])
        return
    serve_command(sys.argv[1:])
    try:
        settings = get_settings()
    except SettingsProblem as problem:
        sys.exit(str(problem))  # the one line on stderr, exit status 1
    problem = address_problem(settings.host, settings.port)
    if problem is None and settings.metrics_port is not None:
        problem = address_problem(settings.host, settings.metrics_port, "METRICS_PORT")
    if problem:
        sys.exit(problem)  # the one line on stderr, exit status 1
    # uvicorn handles SIGTERM itself while it serves: it stops accepting, drains the requests in flight,
    # then restores the handler found here and raises SIGTERM again. With Python's default handler that
    # second SIGTERM would kill the process (exit status -15) after a clean stop; with this no-op the
    # process returns from uvicorn.run and exits 0, which is what orchestrators read as a clean stop.
    # (A Python handler, not SIG_IGN: worker processes would inherit an ignored SIGTERM.)
    signal.signal(signal.SIGTERM, _ignore_reraised_sigterm)
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        timeout_keep_alive=settings.keep_alive_s,
    )


if __name__ == "__main__":
    main()
