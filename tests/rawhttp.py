"""Raw-socket HTTP helpers for tests that send what a well-behaved client never would."""

from __future__ import annotations

import asyncio

from yarl import URL


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parsed = URL(url)
    return await asyncio.open_connection(parsed.host, parsed.port)


async def raw_request(url: str, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    reader, writer = await open_raw(url)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
