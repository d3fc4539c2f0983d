"""MQTT brokers for tests and benchmarks: a private Mosquitto process or the embedded amqtt one.

`MosquittoProcess` starts `/usr/sbin/mosquitto` on a free loopback port with its own config
(optionally a TLS listener, a password file, persistence) and can be restarted on the same
port; `AmqttBroker` runs the pure-Python broker inside the test's event loop. `make_tls` writes
a throwaway CA and a server certificate for 127.0.0.1 with the `cryptography` package.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
HOST = "127.0.0.1"


def mosquitto_available() -> bool:
    return os.access(MOSQUITTO, os.X_OK)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return True
        time.sleep(0.02)
    return False


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(directory: Path, common_name: str = HOST) -> TlsFiles:
    """A self-signed CA and a server key/certificate signed by it, valid for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vpp test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class MosquittoProcess:
    """A private Mosquitto on a free loopback port; a context manager; restartable in place."""

    kind = "mosquitto"

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        tls: TlsFiles | None = None,
        users: dict[str, str] | None = None,
        persistence: bool = False,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.host = HOST
        self.tls = tls
        self.users = users or {}
        self.persistence = persistence
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = directory / "mosquitto.log"

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} {HOST}"]
        if os.geteuid() == 0:  # as root Mosquitto would switch to its own user and lose our files
            lines.append(f"user {getpass.getuser()}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
            ]
        if self.users:
            password_file = self.directory / "passwords"
            password_file.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += [f"password_file {password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.directory}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines += list(self.extra_config)
        config = self.directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> None:
        config = self._write_config()
        for _attempt in range(50):
            with self.log_file.open("ab") as log:
                self.process = subprocess.Popen(
                    [MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
            if wait_for_port(self.port, timeout_s=5.0) and self.process.poll() is None:
                return
            # the port may still be held by the instance we just stopped: try again shortly
            self._reap()
            time.sleep(0.1)
        raise RuntimeError(f"mosquitto did not start on port {self.port}: {self.log_tail()}")

    def _reap(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def stop(self) -> None:
        """Terminate (Mosquitto saves its persistence file on SIGTERM)."""
        self._reap()

    def kill(self) -> None:
        """Kill without letting it save: a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class AmqttBroker:
    """The embedded amqtt broker (MQTT 3.1.1 only) on a free port, in the running event loop."""

    kind = "amqtt"

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.host = HOST
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        self._broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{self.port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await self._broker.start()

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def mosquitto_sub_available() -> bool:
    return shutil.which(MOSQUITTO_SUB) is not None
