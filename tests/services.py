"""Start real meshserve service processes on loopback for e2e tests, and always stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protos.channels import channel, health_status
from protos.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    command: str
    args: tuple[str, ...] = ()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start(
    command: str,
    args: Sequence[str],
    timeout: float = 120.0,
    root_certificates: bytes | None = None,
) -> Service:
    """`meshserve COMMAND ARGS --port <free>`; returns once health says SERVING (asked over
    TLS with `root_certificates`, for a service started with --tls-cert)."""
    (service,) = start_many([(command, args)], timeout, root_certificates)
    return service


def start_many(
    commands: Sequence[tuple[str, Sequence[str]]],
    timeout: float = 120.0,
    root_certificates: bytes | None = None,
) -> list[Service]:
    """Starts every service at once (they load in parallel) and waits until all are SERVING;
    stops them all if one fails."""
    services = [_spawn(command, args) for command, args in commands]
    try:
        for service in services:
            _wait_serving(service, timeout, root_certificates)
    except BaseException:
        for service in services:
            service.stop()
        raise
    return services


def restart(service: Service, timeout: float = 120.0) -> Service:
    """The same service again on the same port (after it died or was stopped)."""
    service.stop()
    port = int(service.address.rsplit(":", 1)[1])
    again = _spawn(service.command, service.args, port)
    try:
        _wait_serving(again, timeout, None)
    except BaseException:
        again.stop()
        raise
    return again


def _spawn(command: str, args: Sequence[str], port: int | None = None) -> Service:
    port = port or free_port()
    log = Path(tempfile.mkstemp(prefix=f"meshserve-{command}-", suffix=".log")[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.tools.cli", command, *args, "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    return Service(process, f"127.0.0.1:{port}", log, command, tuple(args))


def _wait_serving(service: Service, timeout: float, root_certificates: bytes | None) -> None:
    process, command = service.process, service.command
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"meshserve {command} exited early:\n{service.log_tail()}")
        with channel(service.address, root_certificates) as ch:
            if health_status(ch, timeout=1.0) == "SERVING":
                return
        time.sleep(0.2)
    raise TimeoutError(f"meshserve {command} not SERVING after {timeout}s:\n{service.log_tail()}")
