"""Running commands in a guest over SSH (paramiko, labkit's own key)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import paramiko

from labkit.errors import GuestError, GuestUnavailableError
from labkit.guest.result import BoundedBuffer, Result

# paramiko logs a traceback for every refused or silent server; labkit reports those as one clear GuestError.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class SshUnreachable(GuestUnavailableError):
    """SSH could not be reached or refused labkit's key; the console may still work."""


class SshTransport:
    """One SSH connection to one guest, opened on first use and reused for every command."""

    name = "ssh"

    def __init__(self, host: str, port: int, key_path: Path, user: str = "root", connect_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.key_path = key_path
        self.user = user
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None

    def _connect(self, timeout: float) -> paramiko.SSHClient:
        if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
            return self._client
        limit = min(self.connect_timeout, timeout)  # a call's own timeout bounds the connection too
        client = paramiko.SSHClient()
        # The port is a loopback forward to our own guest, whose host key is made on its first boot: nothing to pin yet.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                self.host, self.port, username=self.user,
                pkey=paramiko.Ed25519Key.from_private_key_file(str(self.key_path)),
                timeout=limit, banner_timeout=limit, auth_timeout=limit,
                look_for_keys=False, allow_agent=False,
            )
        except (OSError, paramiko.SSHException) as err:
            client.close()
            raise SshUnreachable(f"SSH to {self.user}@{self.host}:{self.port} failed: {err}") from err
        self._client = client
        return client

    def run(self, command: str, timeout: float = 60.0, stdin: bytes = b"") -> Result:
        started = time.monotonic()
        client = self._connect(timeout)
        try:
            channel = client.get_transport().open_session(timeout=self.connect_timeout)  # type: ignore[union-attr]
            channel.settimeout(0.5)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
        except (OSError, paramiko.SSHException) as err:
            self.close()
            raise SshUnreachable(f"SSH session to {self.host}:{self.port} failed: {err}") from err
        out, err_buf = BoundedBuffer(), BoundedBuffer()
        deadline = started + timeout
        try:
            while not channel.exit_status_ready() or channel.recv_ready() or channel.recv_stderr_ready():
                if time.monotonic() > deadline:
                    raise GuestError(f"command timed out after {timeout:g} s over SSH: {command[:80]!r}")
                if channel.recv_ready():
                    out.write(channel.recv(65536))
                elif channel.recv_stderr_ready():
                    err_buf.write(channel.recv_stderr(65536))
                else:
                    time.sleep(0.005)
            code = channel.recv_exit_status()
        finally:
            channel.close()
        return Result(code, out.getvalue(), err_buf.getvalue(), time.monotonic() - started, self.name,
                      out.truncated or err_buf.truncated)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
