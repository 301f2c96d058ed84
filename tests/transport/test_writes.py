"""`CoalescingTransport` over a real socket pair: the writes of one loop pass leave in one
send, in order; close() sends what is held first; the peer reads every byte."""

from __future__ import annotations

import asyncio
import socket

from app.transport.writes import CoalescingTransport


class _Counting(asyncio.Protocol):
    """The server side of the pair: it only keeps its real transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport


async def pair() -> tuple[CoalescingTransport, list[bytes], socket.socket]:
    """A coalescing transport over one end of a socket pair, the list of the real transport's
    writes, and the other end."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    real, _ = await loop.connect_accepted_socket(_Counting, ours)
    writes: list[bytes] = []
    write = real.write

    def counted(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        write(data)

    real.write = counted  # type: ignore[method-assign]  # still the real write, noted
    theirs.setblocking(False)
    return CoalescingTransport(real, loop), writes, theirs


async def read_all(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(peer, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def test_one_pass_of_writes_leaves_in_one_send() -> None:
    transport, writes, peer = await pair()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert writes == []  # held until the loop's next pass
    await asyncio.sleep(0)
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.writelines([b"a", b"b"])
    await asyncio.sleep(0)
    transport.write(b"c")
    await asyncio.sleep(0)
    assert writes[1:] == [b"ab", b"c"]
    assert await read_all(peer, 43) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}abc"
    transport.close()
    peer.close()


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    transport, writes, peer = await pair()
    transport.write(b"last words")
    assert transport.get_write_buffer_size() == len(b"last words")
    transport.close()
    assert writes == [b"last words"]
    assert transport.is_closing()
    assert await read_all(peer, 100) == b"last words"  # then end of stream
    peer.close()

    transport, writes, peer = await pair()
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert writes == []
    assert await read_all(peer, 100) == b""
    peer.close()


async def test_the_real_transport_answers_for_the_connection() -> None:
    transport, _, peer = await pair()
    assert transport.get_extra_info("socket") is not None
    assert transport.is_reading()
    transport.pause_reading()
    assert not transport.is_reading()
    transport.resume_reading()
    transport.close()
    await asyncio.sleep(0)
    transport.write(b"after close")  # dropped, as the real transport would drop it
    await asyncio.sleep(0)
    assert await read_all(peer, 100) == b""  # the peer sees the end of the stream only
    peer.close()
