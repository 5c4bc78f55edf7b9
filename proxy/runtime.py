"""How Seawall's processes run: the event loop they run on, the signals that stop them and the one that
reloads the config.

Shared by the CLI, the demo and the benchmarks, so none of them imports another to get it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def run_event_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` on uvloop where available: it adds 6-19% to a proxy hop (measured; docs/design.md)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def on_reload_signal(reload: Callable[[], Any]) -> Callable[[], None]:
    """Call `reload` on SIGHUP (the Unix way to tell a daemon its config changed); returns the undo."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload)

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return undo


def on_stdin_closed(callback: Callable[[], Any]) -> Callable[[], None]:
    """Call `callback` once when standard input reaches its end; returns the undo.

    A worker of `seawall run --workers N` reads a pipe from its supervisor that is never written to: it
    ends when the supervisor is gone, however it died, so a worker never outlives it holding the port."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            callback()

    loop.add_reader(fd, readable)

    def undo() -> None:
        loop.remove_reader(fd)

    return undo


def on_stop_signal(stop: Callable[[], Any]) -> Callable[[], None]:
    """Call `stop` on SIGTERM or SIGINT (what a container runtime and a terminal send); returns the undo."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)

    def undo() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    return undo


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    undo = on_stop_signal(stop.set)
    try:
        await stop.wait()
    finally:
        undo()
