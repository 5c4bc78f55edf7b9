"""Raw-socket WebSocket helpers: a handshake and frames written by hand, for clients no library would be
(one that never reads, one that sends its first frame before the handshake's answer)."""

from __future__ import annotations

import asyncio
import os
import socket

from rawhttp import split_answer
from yarl import URL

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key


def handshake_request(path: str, host: str = "seawall") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked frame (a client must mask)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode]) + length + mask + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(opcode, payload) of the next server frame (unmasked, unfragmented)."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(size)


async def connect(
    url: str, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to `url`'s host; `receive_buffer` shrinks the kernel's buffer (a slow reader)."""
    parsed = URL(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parsed.host, parsed.port))
    return await asyncio.open_connection(sock=sock, limit=2**16)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def refused_handshake(base_url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of a handshake answered with anything but 101."""
    reader, writer = await connect(base_url)
    try:
        writer.write(handshake_request(path))
        status, headers, _ = split_answer(await read_head(reader))
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
        return status, headers, body
    finally:
        writer.close()
