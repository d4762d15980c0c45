"""Typed queues over ZMQ sockets: io_struct messages as msgpack (msgspec), not pickles.

msgpack of Structs is several times cheaper than pickle for the per-step output messages
(flat int lists, no per-object reduce), and decoding checks each message against the
tagged union `io_struct.Message`, so a wrong message fails at the receiver's edge.
"""

from __future__ import annotations

from typing import Union

import msgspec
import zmq
import zmq.asyncio

from sglserve.io_struct import Message

_encoder = msgspec.msgpack.Encoder()
# Lax: a float with an integral value decodes into an int field (SamplingParams.top_k=40.0 is valid)
_decoder = msgspec.msgpack.Decoder(Message, strict=False)

Socket = Union[zmq.Socket, zmq.asyncio.Socket]


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> Message:
    return _decoder.decode(data)


class PushQueue:
    """The sending end (a PUSH socket): `put` encodes one message."""

    def __init__(self, context: zmq.Context, addr: str, bind: bool = False) -> None:
        self.socket: Socket = context.socket(zmq.PUSH)
        self.socket.bind(addr) if bind else self.socket.connect(addr)

    def put(self, msg: Message, block: bool = True) -> None:
        """Raises zmq.Again when not blocking and the queue is full."""
        self.socket.send(_encoder.encode(msg), 0 if block else zmq.NOBLOCK, copy=False)

    def close(self, linger: int = 0) -> None:
        self.socket.close(linger)


class PullQueue:
    """The receiving end (a PULL socket): `get` (or `aget` on an asyncio context) decodes one."""

    def __init__(self, context: zmq.Context, addr: str, bind: bool = True) -> None:
        self.socket: Socket = context.socket(zmq.PULL)
        self.socket.bind(addr) if bind else self.socket.connect(addr)

    def get(self, block: bool = True) -> Message:
        """Raises zmq.Again when not blocking and nothing is there."""
        return _decoder.decode(self.socket.recv(0 if block else zmq.NOBLOCK, copy=False).buffer)

    async def aget(self) -> Message:
        return _decoder.decode((await self.socket.recv(copy=False)).buffer)

    def poll(self, timeout: float) -> bool:
        """True when a message is waiting; waits up to `timeout` ms (zmq's unit)."""
        return bool(self.socket.poll(timeout))

    def close(self, linger: int = 0) -> None:
        self.socket.close(linger)
