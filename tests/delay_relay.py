"""A TCP relay on loopback that puts an exchange "far away": every byte is delivered a fixed one-way delay
plus a random jitter later, in each direction, so the exchange is as many milliseconds away as one needs.

Guarantees (what the rate-limit tests and benchmarks rely on):
- no byte arrives earlier than `delay` after it was read (a timer that fires early is slept on again),
  and at most `delay + jitter` plus scheduling later;
- bytes of one connection stay in order (each chunk is delivered no earlier than the one before it), as
  TCP delivers them; requests on different connections overtake each other when the jitter says so;
- `delay`, `jitter` and `stamp_shift_ms` may be changed while it runs (the path's round trip grows, the
  exchange's clock jumps): `stamp_shift_ms` is added to every 13-digit `"timestamp":<ms>` in the
  exchange's answers, as if its clock had stepped.

Used in-process by tests (`DelayRelay`) and as its own process by benchmarks:

    python tests/delay_relay.py --port 9000 --target 127.0.0.1:8090 --delay 0.015 --jitter 0.01
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import signal

STAMP = re.compile(rb'"timestamp":(\d{13})\b')


class DelayRelay:
    """Listens on 127.0.0.1 and relays every connection to `target` with the configured delays."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float = 0.015,
        jitter: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.jitter = jitter
        self.stamp_shift_ms = 0
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):  # the pumps end on their own (not cancelled: no noise)
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _one_way(self) -> float:
        return self.delay + (self._random.uniform(0.0, self.jitter) if self.jitter > 0 else 0.0)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            except OSError:
                client_writer.close()
                return
            self._writers.update((client_writer, upstream_writer))
            await asyncio.gather(
                self._pump(client_reader, upstream_writer, shift=False),
                self._pump(upstream_reader, client_writer, shift=True),
                return_exceptions=True,
            )
        finally:
            self._tasks.discard(task)
            self._writers.discard(client_writer)
            client_writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shift: bool) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, chunk = await queue.get()
                await asyncio.sleep(max(0.0, at - loop.time()))
                late = at - loop.time()
                if late > 0:  # a timer fired early: never deliver early
                    await asyncio.sleep(late + 0.0005)
                if not chunk:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                if shift and self.stamp_shift_ms:
                    chunk = STAMP.sub(lambda m: b'"timestamp":%d' % (int(m[1]) + self.stamp_shift_ms), chunk)
                writer.write(chunk)

        delivering = asyncio.ensure_future(deliver())
        last = 0.0
        try:
            while True:
                try:
                    chunk = await reader.read(65536)
                except OSError:
                    chunk = b""
                last = max(last, loop.time() + self._one_way())  # in order: never before the previous
                queue.put_nowait((last, chunk))
                if not chunk:
                    break
            await delivering
        finally:
            delivering.cancel()
            self._writers.discard(writer)
            writer.close()


async def _main(args: argparse.Namespace) -> int:
    host, _, port = args.target.rpartition(":")
    relay = DelayRelay(host, int(port), delay=args.delay, jitter=args.jitter, seed=args.seed)
    await relay.start(args.port)
    print(f"relay on {relay.url} -> {args.target}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await relay.stop()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port of the exchange")
    parser.add_argument("--delay", type=float, default=0.015, help="one-way delay, seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra one-way delay, uniform 0..jitter")
    parser.add_argument("--seed", type=int, default=None)
    raise SystemExit(asyncio.run(_main(parser.parse_args())))
