"""`meshserve up`'s process manager: one child per service, health-gated start, ordered stop.

The plan (which services, which ports, which flags) is pure data built by `plan_stack`; the
`Stack` starts it as `python -m gateway.tools.cli <service> ...` children, each in its own process
group with its log in a file, waits for grpc.health.v1 SERVING, restarts a child that dies
(`gateway.tools.supervisor`) and stops the gateway first (it drains) and the backends after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import gateway
from gateway.tools.supervisor import Report, RestartPolicy, Supervisor
from protos.ports import free_port  # noqa: F401 - the stack's ports come from here

MEDIA_COMPONENTS = ("image", "video", "audio")
REPLICA_COMPONENTS = ("lm", *MEDIA_COMPONENTS)
TAIL_LINES = 20
POLL_SECONDS = 0.25
STOP_MARGIN_SECONDS = 5.0  # beyond the grace period, before SIGKILL
PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """The stack could not start or lost a service it cannot run without."""


class Interrupted(StackError):
    """SIGINT or SIGTERM arrived before every service was ready."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One child process: `python -m gateway.tools.cli <argv...>` serving on host:port."""

    name: str  # "lm", "encoder-image", "encoder-image-2", "gateway"
    component: str  # "lm", "image", "video", "audio" or "gateway"
    host: str
    port: int
    argv: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StackOptions:
    """What `up` was asked for, reduced to what the children need.

    Args:
        lm_flags / encoder_flags / gateway_flags: argv for each sub-command beyond the wiring
            (model, host, port, grace, addresses): the service's own flags as `up` was
            given them, forwarded by the service's declaration (gateway/tools/stack_flags.py).
        metrics_port: the gateway's --metrics-port; the backends take the ports after it,
            in plan order (None: no metrics endpoints).
    """

    model: str
    host: str = "127.0.0.1"
    gateway_port: int = 50051
    grace_seconds: float = 30.0
    replicas: Mapping[str, int] = field(default_factory=dict)
    lm_flags: tuple[str, ...] = ()
    encoder_flags: tuple[str, ...] = ()
    gateway_flags: tuple[str, ...] = ()
    metrics_port: int | None = None


@dataclass(frozen=True, slots=True)
class StackPlan:
    backends: tuple[ServiceSpec, ...]  # LM replicas first, then encoders
    gateway: ServiceSpec


def parse_replicas(text: str | None) -> dict[str, int]:
    """ "image=2,lm=1" -> {"image": 2, "lm": 1}; components: lm, image, video, audio."""
    replicas: dict[str, int] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        name, sep, count = entry.partition("=")
        name = name.strip()
        if not sep or name not in REPLICA_COMPONENTS or not count.strip().isdigit():
            raise ValueError(
                f"--replicas takes NAME=COUNT[,NAME=COUNT...] with NAME one of "
                f"{', '.join(REPLICA_COMPONENTS)}; got {entry!r}"
            )
        if int(count) < 1:
            raise ValueError(f"--replicas {name}={count}: every service needs at least 1")
        replicas[name] = int(count)
    return replicas


def plan_stack(
    options: StackOptions,
    modalities: Sequence[str],
    pick_port: Callable[[], int],
) -> StackPlan:
    """The services for a model: LM replicas, encoder replicas per modality, the gateway."""
    lm = _replicas(options, "lm", "lm", pick_port, _lm_argv)
    encoders = [
        spec
        for modality in modalities
        for spec in _replicas(options, modality, f"encoder-{modality}", pick_port, _encoder_argv)
    ]
    gateway_spec = _gateway_spec(options, lm, encoders)
    return _with_metrics_ports(
        StackPlan(backends=(*lm, *encoders), gateway=gateway_spec), options.metrics_port
    )


def _with_metrics_ports(plan: StackPlan, first: int | None) -> StackPlan:
    """Gives the gateway `--metrics-port first` and each backend the next port in turn."""
    if first is None:
        return plan

    def with_port(spec: ServiceSpec, port: int) -> ServiceSpec:
        return replace(spec, argv=(*spec.argv, "--metrics-port", str(port)))

    gateway = with_port(plan.gateway, first)
    backends = tuple(with_port(spec, first + 1 + i) for i, spec in enumerate(plan.backends))
    return StackPlan(backends=backends, gateway=gateway)


def _replicas(
    options: StackOptions,
    component: str,
    base_name: str,
    pick_port: Callable[[], int],
    make_argv: Callable[[StackOptions, str, int], tuple[str, ...]],
) -> list[ServiceSpec]:
    count = options.replicas.get(component, 1)
    specs = []
    for index in range(1, count + 1):
        name = base_name if count == 1 else f"{base_name}-{index}"
        port = pick_port()
        argv = make_argv(options, component, port)
        specs.append(ServiceSpec(name, component, options.host, port, argv))
    return specs


def _common_argv(options: StackOptions, port: int) -> tuple[str, ...]:
    return (
        "--host",
        options.host,
        "--port",
        str(port),
        "--grace-seconds",
        f"{options.grace_seconds:g}",
    )


def _lm_argv(options: StackOptions, component: str, port: int) -> tuple[str, ...]:
    common = _common_argv(options, port)
    return ("lm", "--model", options.model, *common, *options.lm_flags)


def _encoder_argv(options: StackOptions, modality: str, port: int) -> tuple[str, ...]:
    common = _common_argv(options, port)
    return (
        "encoder",
        "--modality",
        modality,
        "--model",
        options.model,
        *common,
        *options.encoder_flags,
    )


def _gateway_spec(
    options: StackOptions, lm: Sequence[ServiceSpec], encoders: Sequence[ServiceSpec]
) -> ServiceSpec:
    encoder_flags: list[str] = []
    for modality in dict.fromkeys(spec.component for spec in encoders):
        addresses = ",".join(s.address for s in encoders if s.component == modality)
        encoder_flags += ["--encoder", f"{modality}={addresses}"]
    argv = (
        "gateway",
        "--model",
        options.model,
        "--lm",
        ",".join(spec.address for spec in lm),
        *encoder_flags,
        *_common_argv(options, options.gateway_port),
        *options.gateway_flags,
    )
    return ServiceSpec("gateway", "gateway", options.host, options.gateway_port, argv)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if `up` itself dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(gateway.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A running service: its process (own process group) and its log file."""

    def __init__(self, spec: ServiceSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.is_reported = False

    def start(self) -> None:
        """Starts the process; a restarted child's log goes on in the same file."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.tools.cli", *self.spec.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                start_new_session=True,  # Ctrl-C reaches `up` only; it stops us in order
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else -1

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        """Signals the child's whole process group (it may have helpers of its own)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def kill_leftovers(self) -> None:
        """SIGKILL to what is left of a dead child's process group (helpers of its own)."""
        self.signal(signal.SIGKILL)

    def is_serving(self) -> bool:
        from protos.channels import health_status

        return health_status(self.spec.address, timeout=0.5) == "SERVING"

    def wait(self, timeout: float) -> bool:
        """True once the child has exited (within `timeout` seconds)."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def tail(self, num_lines: int = TAIL_LINES) -> list[str]:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return [line.rstrip("\n") for line in deque(log, maxlen=num_lines)]
        except OSError:
            return []

    def describe_exit(self) -> str:
        code = self.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code and code < 0 else ""
        return how or f"exited with status {code}"


class StopSignal:
    """SIGINT/SIGTERM/SIGHUP -> an event (a second one also sets `force`). Main thread only."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.force = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            self.force.set()
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Stack:
    """Starts, watches (restarting the children that die, as `policy` says) and stops the
    children of a `StackPlan`."""

    def __init__(
        self,
        plan: StackPlan,
        log_dir: Path,
        stop: StopSignal,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.plan = plan
        self.log_dir = log_dir
        self.stop_signal = stop
        self.backends = [Child(spec, log_dir) for spec in plan.backends]
        self.gateway = Child(plan.gateway, log_dir)
        self.supervisor = Supervisor(self.children, policy or RestartPolicy(), self.death_report)

    @property
    def children(self) -> list[Child]:
        return [*self.backends, self.gateway]

    @property
    def num_deaths(self) -> int:
        return self.supervisor.num_deaths

    def start(self, timeout: float, progress: Callable[[Child | None], None]) -> None:
        """Backends first (the gateway asks the LM about itself at start), then the gateway."""
        deadline = time.monotonic() + timeout
        for child in self.backends:
            child.start()
        self._wait_serving(self.backends, deadline, progress)
        self.gateway.start()
        self._wait_serving([self.gateway], deadline, progress)

    def _wait_serving(
        self, children: Sequence[Child], deadline: float, progress: Callable[[Child | None], None]
    ) -> None:
        from protos.channels import channel, health_status

        pending = {child.spec.name: (child, channel(child.spec.address)) for child in children}
        try:
            while pending:
                self._raise_if_any_died()
                for name, (child, ch) in list(pending.items()):
                    if health_status(ch, timeout=1.0) == "SERVING":
                        del pending[name]
                        ch.close()
                        progress(child)
                if self.stop_signal.event.is_set():
                    raise Interrupted("stopped before every service was ready")
                if time.monotonic() > deadline:
                    raise StackError(f"not SERVING in time: {', '.join(pending)}")
                if pending:
                    progress(None)  # a tick: the bar's clock moves while weights load
                    self.stop_signal.event.wait(POLL_SECONDS)
        finally:
            for _, ch in pending.values():
                ch.close()

    def _raise_if_any_died(self) -> None:
        for child in self.children:
            if child.process is not None and not child.is_alive():
                raise StackError(self.death_report(child, " while the stack was starting"))

    def watch(self, report: Report) -> bool:
        """Blocks until a stop signal (True), or until no child runs or is due a restart
        (False). A child that dies is reported and restarted; the others keep serving."""
        while not self.stop_signal.event.wait(POLL_SECONDS):
            self.supervisor.tick(report)
            if not self.supervisor.has_work:
                return False
        self.supervisor.tick(report, may_restart=False)  # a death just before the stop counts
        return True

    def death_report(self, child: Child, context: str) -> str:
        """`name (pid N) was killed by SIGKILL<context>`, then the last lines of its log; a
        context is "; what happens next" or " while ..."."""
        lines = [f"{child.spec.name} (pid {child.pid}) {child.describe_exit()}{context}"]
        lines.append(f"  last lines of {child.log_path}:")
        lines += [f"    {line}" for line in child.tail()] or ["    (empty log)"]
        return "\n".join(lines)

    def stop(self, grace_seconds: float, margin: float = STOP_MARGIN_SECONDS) -> None:
        """Gateway first (it drains in-flight streams), then every backend; SIGKILL stragglers."""
        _stop_group([self.gateway], grace_seconds + margin, self.stop_signal.force)
        _stop_group(self.backends, grace_seconds + margin, self.stop_signal.force)


def _stop_group(children: Sequence[Child], timeout: float, force: threading.Event) -> None:
    alive = [child for child in children if child.is_alive()]
    for child in alive:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in alive:
        while not child.wait(min(POLL_SECONDS, deadline - time.monotonic())):
            if force.is_set() or time.monotonic() >= deadline:
                child.signal(signal.SIGKILL)
                child.wait(5.0)
                break
    for child in children:
        child.signal(signal.SIGKILL)  # helpers left in the group, if any


def make_log_dir(path: str | None) -> tuple[Path, bool]:
    """The given folder, or a new temporary one; and whether it is temporary."""
    if path:
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder, False
    import tempfile

    return Path(tempfile.mkdtemp(prefix="meshserve-up-")), True


def describe(spec: ServiceSpec, pid: int, model: str, timeout: float = 5.0) -> str:
    """One ready line: name, address, pid, model and the service's capacity (from GetInfo)."""
    import grpc

    from protos.channels import channel

    describe_info = {"lm": _describe_lm, "gateway": _describe_gateway}.get(
        spec.component, _describe_encoder
    )
    with channel(spec.address) as ch:
        try:
            detail = describe_info(ch, timeout)
        except grpc.RpcError as exc:
            detail = f"(GetInfo failed: {exc.code().name})"
    return f"  {spec.name:<16} {spec.address:<21} pid {pid:<7} model={model}  {detail}"


def _describe_lm(ch: Any, timeout: float) -> str:
    from protos.meshserve.v1 import lm_pb2, lm_pb2_grpc

    info = lm_pb2_grpc.LanguageModelStub(ch).GetInfo(lm_pb2.GetLMInfoRequest(), timeout=timeout)
    return (
        f"impl={info.model_impl}  dtype={info.dtype}  "
        f"kv_blocks={info.num_blocks} x {info.block_size} tokens "
        f"({info.num_blocks * info.block_size} tokens)"
    )


def _describe_encoder(ch: Any, timeout: float) -> str:
    from protos.meshserve.v1 import encoder_pb2, encoder_pb2_grpc

    stub = encoder_pb2_grpc.EncoderStub(ch)
    info = stub.GetInfo(encoder_pb2.GetEncoderInfoRequest(), timeout=timeout)
    return f"dtype={info.dtype}  cache={format_bytes(info.cache.max_bytes)}"


def _describe_gateway(ch: Any, timeout: float) -> str:
    from protos.meshserve.v1 import gateway_pb2, gateway_pb2_grpc

    stub = gateway_pb2_grpc.GatewayStub(ch)
    info = stub.GetModelInfo(gateway_pb2.GetModelInfoRequest(), timeout=timeout)
    limits = ",".join(f"{k}={v}" for k, v in sorted(info.limit_mm_per_prompt.items()))
    return f"arch={info.architecture}  spec={info.modality_spec!r}  limits={limits or 'none'}"


def format_bytes(num_bytes: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if num_bytes >= size:
            return f"{num_bytes / size:.4g} {unit}"
    return f"{num_bytes} B"


def println(text: str, stream: IO[str] | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)
