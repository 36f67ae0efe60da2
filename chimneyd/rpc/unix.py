"""The RPC port on a unix socket: created with a fixed mode, never taken from a live daemon, and
removed at exit only if it is still the one we made.

Unix-socket clients need no token (the file's mode is the access control), so the mode must not
come from the umask: the socket is bound under a umask that yields exactly `mode` (it is created
with it, no chmod window). A socket already at the path is probed first: if something answers, a
live daemon owns it and we refuse to start; if nothing does, it is stale and is replaced. Any
other kind of file is left alone (bind then fails). We remember the device and inode of the
socket we created and unlink the path at exit only while it still names that inode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass

PROBE_TIMEOUT_S = 1.0


class SocketInUse(OSError):
    """A live server answers on the unix socket path."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True, slots=True)
class BoundUnixSocket:
    sock: socket.socket
    path: str
    dev: int
    ino: int

    def unlink_if_ours(self) -> bool:
        """Remove the path if it still names the socket we created. True if removed."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            return False
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            return True
        return False


def bind_unix(path: str, mode: int, backlog: int) -> BoundUnixSocket:
    """A listening unix socket at `path` with exactly `mode`. Raises `SocketInUse` when a live
    server answers there, OSError when the path is taken by something else or bind fails."""
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind creates the file as 0777 & ~umask: this umask gives `mode` from the start
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        st = os.lstat(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return BoundUnixSocket(sock, path, st.st_dev, st.st_ino)


def _clear_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        return  # not a socket: never removed to make room; bind reports EADDRINUSE
    if _answers(path):
        raise SocketInUse(
            errno.EADDRINUSE,
            f"unix:{path}: another server is listening on this socket; not replacing it",
        )
    # stale: nobody listens. Remove it only if it is still the file we looked at.
    with contextlib.suppress(OSError):
        again = os.lstat(path)
        if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):
            os.unlink(path)


def _answers(path: str) -> bool:
    """Whether a server accepts connections on the socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False  # a socket file with no listener behind it
    except OSError:
        # EAGAIN (its backlog is full), EACCES (someone else's) or a timeout: something is
        # there that we cannot rule out as live
        return True
    finally:
        probe.close()
    return True


__all__ = ["BoundUnixSocket", "SocketInUse", "bind_unix"]
