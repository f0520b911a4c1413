"""The control socket: one JSON request per line, one JSON answer per line, over a UNIX socket.

{"command": "status"}  ->  {"ok": true, "status": {...}}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    pass


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            # A socket left by a crashed run answers nothing: replace it; a live one: refuse.
            if _answers(self.path):
                raise ControlError(f"{self.path}: another director is already listening there")
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._client, path=str(self.path), limit=MAX_REQUEST
        )
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                    raise ValueError("a request is an object with a string 'command'")
                answer = await self.handler(request)
            except (ValueError, ControlError) as exc:
                answer = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def request(path: str, command: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Client side, blocking (the CLI)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ControlError(f"cannot reach the director at {path}: {exc.strerror}") from None
        sock.sendall(json.dumps(command).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise ControlError("malformed answer from the director")
    return answer
