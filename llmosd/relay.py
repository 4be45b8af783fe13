"""The unix socket's front door: it accepts each connection itself, asks the kernel who is
on the other end (SO_PEERCRED), and relays the bytes to the gRPC server.

gRPC does not hand out the sockets it accepts, so it cannot tell which uid a unix client
runs as (grpc/grpc#15511, #28755). The relay can: for each accepted connection it reads the
peer's credentials, then connects to the gRPC server from a socket bound to a fresh abstract
name, which the server's `context.peer()` shows as `unix-abstract:<name>`. It records that
name with the uid before a single byte is relayed, and forgets it when the connection ends.

The gRPC server itself listens in a private directory (<state-dir>/run, 0700), so no one
reaches it but through the relay (or as the daemon's own uid or root).
"""
from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import struct
import tempfile
import threading
from pathlib import Path

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process that connected `sock`, as the kernel recorded it at connect()."""
    _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


class PeerTable:
    """Relay connections, by the name context.peer() shows for them, → the uid on the far side."""

    def __init__(self) -> None:
        self._uids: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, peer: str, uid: int) -> None:
        with self._lock:
            self._uids[peer] = uid

    def discard(self, peer: str) -> None:
        with self._lock:
            self._uids.pop(peer, None)

    def get(self, peer: str) -> int | None:
        with self._lock:
            return self._uids.get(peer)

    def __len__(self) -> int:
        with self._lock:
            return len(self._uids)


class _End(asyncio.Protocol):
    """One side of a relayed connection: what it receives is written to the other side."""

    def __init__(self, on_lost=None) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _End | None = None
        self.on_lost = on_lost

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.other.transport.is_closing():
            self.other.transport.write(data)

    def eof_received(self) -> bool:
        if self.other is None or not self.other.transport.can_write_eof():
            return False
        self.other.transport.write_eof()
        return True  # half-closed: answers may still flow the other way

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()
        if self.on_lost is not None:
            self.on_lost()

    # Flow control: when one side cannot keep up, stop reading from the other.
    def pause_writing(self) -> None:
        self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        self.other.transport.resume_reading()


class _Front(_End):
    """A client's connection to the public socket."""

    def __init__(self, relay: "UnixRelay") -> None:
        super().__init__()
        self.relay = relay
        self.early: list[bytes] = []  # what the client sent before the relay reached the server

    def data_received(self, data: bytes) -> None:
        if self.other is None:
            self.early.append(data)
        else:
            super().data_received(data)

    def link(self, back: _End) -> None:
        """Start relaying to `back`, beginning with what arrived before it."""
        self.other = back
        for data in self.early:
            back.transport.write(data)
        self.early.clear()
        self.transport.resume_reading()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # little is read until the client's uid is on record
        try:
            uid = peer_uid(transport.get_extra_info("socket"))
        except OSError:
            transport.close()
            return
        self.relay.open(self, uid)


class UnixRelay:
    """Serves `public` (a unix socket, mode `mode`) by relaying to a gRPC server on a private socket."""

    def __init__(self, public: Path, private_dir: Path, peers: PeerTable, mode: int = 0o600) -> None:
        if not hasattr(socket, "SO_PEERCRED"):
            raise OSError("this platform has no SO_PEERCRED: llmosd cannot tell who connects to its socket")
        self.public = Path(public)
        self.private_dir = Path(private_dir)
        self.peers = peers
        self.mode = mode
        self._internal: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ends: set[_End] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def internal(self) -> Path:
        """The private socket the gRPC server listens on, made ready on first use."""
        if self._internal is None:
            self._internal = _private_socket(self.private_dir)
        return self._internal

    @property
    def target(self) -> str:
        """Where the gRPC server must listen."""
        return f"unix:{self.internal}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        old = os.umask(0o177)  # born 0600, then opened as far as `mode` says
        try:
            self._server = await loop.create_unix_server(lambda: _Front(self), str(self.public))
        finally:
            os.umask(old)
        os.chmod(self.public, self.mode)

    def open(self, front: _Front, uid: int) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(front, uid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, front: _Front, uid: int) -> None:
        loop = asyncio.get_running_loop()
        name = f"llmosd-{os.getpid()}-{secrets.token_hex(8)}"
        peer = f"unix-abstract:{name}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        back = _End(lambda: self._closed(peer, back))
        back.other = front  # the server speaks first (its HTTP/2 settings)
        try:
            sock.bind("\0" + name)
            sock.setblocking(False)
            self.peers.add(peer, uid)
            await loop.sock_connect(sock, str(self.internal))
            await loop.create_unix_connection(lambda: back, sock=sock)
        except OSError:
            self.peers.discard(peer)
            sock.close()
            front.transport.close()
            return
        if front.transport.is_closing():  # the client left while we connected
            back.transport.close()
            return
        front.on_lost = lambda: self._ends.discard(front)
        self._ends.update((front, back))
        front.link(back)

    def _closed(self, peer: str, back: _End) -> None:
        self.peers.discard(peer)
        self._ends.discard(back)

    async def close(self) -> None:
        """Stop accepting, end every relayed connection, remove the private socket."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for end in list(self._ends):
            if end.transport is not None:
                end.transport.close()
        await asyncio.sleep(0)
        if self._internal is not None:
            self._internal.unlink(missing_ok=True)
            if self._internal.parent.name.startswith("llmosd-"):  # the mkdtemp fallback
                shutil.rmtree(self._internal.parent, ignore_errors=True)


def _private_socket(run: Path) -> Path:
    """grpc-<pid>.sock in `run` (0700), after removing those of daemons that are gone; a fresh
    directory under /tmp if that path would be too long for a unix socket."""
    path = run / f"grpc-{os.getpid()}.sock"
    if len(str(path).encode()) > 100:
        return Path(tempfile.mkdtemp(prefix="llmosd-")) / "grpc.sock"
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    run.chmod(0o700)
    for old in run.glob("grpc-*.sock"):
        pid = old.stem.removeprefix("grpc-")
        if pid.isdigit() and not _alive(int(pid)):
            old.unlink(missing_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
