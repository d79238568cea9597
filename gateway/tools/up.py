"""`meshserve up` (the whole mesh on one box) and `meshserve chat` (a gRPC client)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.tools.gateway_command import DEFAULT_PORT, http_options
from gateway.tools.stack_flags import add_stack_flags, service_argv

if TYPE_CHECKING:
    from gateway.tools.launcher import Child, Stack, StackOptions, StackPlan, StopSignal


def add_up_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "up",
        help="start the LM, encoders and gateway on this machine",
        description="Start the LM service, one encoder service per modality the model takes "
        "and the gateway as separate processes on this machine; wait until each is SERVING; "
        "restart a service that dies (--restart) while the others keep serving; on Ctrl-C or "
        "SIGTERM drain the gateway and stop everything. Every flag of `meshserve "
        "lm`, `meshserve encoder` and `meshserve gateway` is taken here and reaches each "
        "service that has it.",
    )
    g = p.add_argument_group("stack")
    g.add_argument(
        "--model", required=True, help="HF model id or local path; every service loads it"
    )
    g.add_argument("--host", default="127.0.0.1", help="address every service binds")
    g.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"the gateway's port (default {DEFAULT_PORT}; 0 = any free); backends take free ports",
    )
    g.add_argument(
        "--replicas",
        default=None,
        metavar="NAME=N[,NAME=N]",
        help="replicas per backend, e.g. image=2,lm=1 (names: lm, image, video, audio)",
    )
    g.add_argument(
        "--embedded",
        action="store_true",
        help="run the gateway, encoders and LM in this one process",
    )
    g.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on Ctrl-C/SIGTERM, how long in-flight streams may finish (default 30)",
    )
    g.add_argument(
        "--encoder-device", default=None, help="device of the encoders (default: --device)"
    )
    g.add_argument(
        "--ready-timeout",
        type=float,
        default=1800.0,
        help="seconds the services may take to load their weights (default 1800)",
    )
    g.add_argument(
        "--log-dir", default=None, help="keep the services' logs here (default: a temp folder)"
    )
    g.add_argument(
        "--restart",
        choices=("on-failure", "never"),
        default="on-failure",
        help="on-failure (default): start a service that crashes, is killed or exits non-zero "
        "again, after 1s, 2s, 4s ... up to 30s; never: leave it down. Either way the other "
        "services keep running",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="the gateway's Prometheus port; the LM and encoders take the ports after it "
        "(default: no metrics)",
    )
    add_stack_flags(p)
    p.set_defaults(func=run_up)


def stack_options(args: argparse.Namespace, replicas: Mapping[str, int]) -> StackOptions:
    """What the children of `up` get: wiring, and each service's flags as `up` was given them."""
    from gateway.tools.launcher import StackOptions, free_port

    encoder_device = {"device": args.encoder_device or args.device}
    argv = service_argv(args, overrides={"encoder": encoder_device})
    return StackOptions(
        model=args.model,
        host=args.host,
        gateway_port=args.port or free_port(args.host),
        grace_seconds=args.grace_seconds,
        replicas=replicas,
        lm_flags=argv["lm"],
        encoder_flags=argv["encoder"],
        gateway_flags=argv["gateway"],
        metrics_port=args.metrics_port,
    )


# ------------------------------------------------------------------------------------- up


def run_up(args: argparse.Namespace) -> int:
    from gateway.app import media_modalities, served_model
    from gateway.tools.launcher import parse_replicas

    try:
        replicas = parse_replicas(args.replicas)
    except ValueError as exc:
        return _fail(str(exc), code=2)
    if args.tls_cert and not args.embedded:
        return _fail(
            "--tls-cert needs --embedded here: up checks its gateway's health in plaintext; "
            "or run `meshserve gateway --tls-cert ...` yourself in front of the backends",
            code=2,
        )
    served = served_model(
        args.model,
        args.task,
        args.limit_mm_per_prompt,
        args.trust_remote_code,
        args.revision,
    )
    modalities = media_modalities(served)
    unknown = [name for name in replicas if name != "lm" and name not in modalities]
    if unknown:
        takes = ", ".join(modalities) or "no media"
        return _fail(f"--replicas {unknown[0]}: {served.architecture} takes {takes}", code=2)
    if args.embedded:
        if replicas:
            return _fail("--replicas needs separate processes; drop --embedded", code=2)
        return run_embedded(args, served)
    return run_processes(args, modalities, replicas)


def run_processes(args: argparse.Namespace, modalities: list[str], replicas: dict) -> int:
    from gateway.tools.launcher import StopSignal, free_port, make_log_dir, plan_stack

    if args.http_port == 0:  # the gateway is a child: pick its port here, to print it
        args = argparse.Namespace(**{**vars(args), "http_port": free_port(args.host)})
    plan = plan_stack(stack_options(args, replicas), modalities, lambda: free_port(args.host))
    log_dir, is_temp = make_log_dir(args.log_dir)
    stop = StopSignal().install()
    try:
        code = _run_stack(plan, log_dir, stop, args)
    finally:
        stop.restore()
    if code == 0 and is_temp:
        shutil.rmtree(log_dir, ignore_errors=True)
    elif code != 0:
        print(f"meshserve up: the services' logs are in {log_dir}", file=sys.stderr)
    return code


def _run_stack(plan: StackPlan, log_dir: Path, stop: StopSignal, args: argparse.Namespace) -> int:
    from gateway.tools.launcher import Interrupted, Stack, StackError, println
    from gateway.tools.supervisor import Restart, RestartPolicy

    stack = Stack(plan, log_dir, stop, RestartPolicy(Restart(args.restart)))
    names = ", ".join(child.spec.name for child in stack.children)
    println(f"meshserve up: starting {names} (model {args.model})", sys.stderr)
    try:
        with _progress(len(stack.children)) as progress:
            stack.start(args.ready_timeout, progress)
        _print_ready(stack, args)
        is_clean = stack.watch(lambda text: println(f"meshserve up: {text}", sys.stderr))
    except Interrupted:
        is_clean = True
    except StackError as exc:
        _fail(str(exc), code=1)
        is_clean = False
    finally:
        println(
            f"meshserve up: stopping (gateway drains up to {args.grace_seconds:g}s)", sys.stderr
        )
        stack.stop(args.grace_seconds)
    println("meshserve up: stopped", sys.stderr)
    return 0 if is_clean and stack.num_deaths == 0 else 1


class _progress:
    """A tqdm bar over services becoming SERVING (a plain line when stderr is no terminal)."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.started = time.monotonic()
        self.bar = tqdm(
            total=total,
            desc="loading weights",
            unit="service",
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
        )

    def __enter__(self) -> _progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def __call__(self, child: Child | None) -> None:
        if child is None:
            self.bar.refresh()
            return
        self.bar.set_postfix_str(f"{child.spec.name} SERVING", refresh=False)
        self.bar.update(1)
        if self.bar.disable:
            elapsed = time.monotonic() - self.started
            print(f"  {child.spec.name} SERVING ({elapsed:.1f}s)", file=sys.stderr, flush=True)


def _print_ready(stack: Stack, args: argparse.Namespace) -> None:
    from gateway.tools.launcher import describe, println

    for child in stack.children:
        println(describe(child.spec, child.pid, args.model))
    println(
        f"meshserve up: gateway on {stack.gateway.spec.address}{_http_note(args)}  "
        "(Ctrl-C or SIGTERM drains and stops every service)"
    )


def _http_note(args: argparse.Namespace) -> str:
    if args.http_port is None:
        return ""
    return f"  OpenAI HTTP API on http://{args.host}:{args.http_port}/v1"


def _fail(message: str, code: int) -> int:
    print(f"meshserve up: error: {message}", file=sys.stderr, flush=True)
    return code


# ------------------------------------------------------------------------------- embedded


def run_embedded(args: argparse.Namespace, served: Any) -> int:
    from gateway.app import build_orchestrator, local_backends, media_modalities
    from gateway.tools.gateway_command import server_options
    from lm_service.cli import engine_config_from_args

    try:
        options = server_options(args)  # a bad key or TLS file, before any weights load
    except (OSError, ValueError) as exc:
        return _fail(str(exc), code=2)
    encoders = ", ".join(media_modalities(served)) or "no"
    print(f"meshserve up --embedded: loading the LM and {encoders} encoder(s) in this process")
    encoder_backend, lm_backend = local_backends(
        engine_config_from_args(args),
        served,
        encoder_dtype="float32" if args.dtype == "auto" else args.dtype,
        encoder_device=args.encoder_device or args.device,
        cache_bytes=args.cache_bytes,
        override_pooler_config=getattr(args, "override_pooler_config", None),
        mm_processor_kwargs=getattr(args, "mm_processor_kwargs", None),
    )
    orchestrator = build_orchestrator(
        served,
        encoder_backend,
        lm_backend,
        trust_remote_code=args.trust_remote_code,
        media_store_bytes=args.media_store_bytes,
        stream_interval=args.stream_interval,
    )
    port = args.port
    if port == 0:
        from gateway.tools.launcher import free_port

        port = free_port(args.host)
    http = http_options(args)
    if http is not None and http.port == 0:
        from gateway.tools.launcher import free_port

        http = dataclasses.replace(http, port=free_port(args.host))
    asyncio.run(
        _serve_embedded(
            orchestrator, args.host, port, args.grace_seconds, args.cache_bytes, http, options
        )
    )
    return 0


async def _serve_embedded(
    orchestrator: Any,
    host: str,
    port: int,
    grace: float,
    cache_bytes: int,
    http: Any,
    options: Mapping[str, Any],
) -> None:
    from gateway.app import serve
    from gateway.tools.launcher import format_bytes

    ready = asyncio.Event()
    server = asyncio.create_task(
        serve(orchestrator, host, port, grace, ready=ready, http=http, **options)
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        await server  # raises why the server could not start
        return
    info = await orchestrator.lm.info()
    served = orchestrator.served
    print(
        f"  {'embedded':<16} {f'{host}:{port}':<21} pid {os.getpid():<7} "
        f"model={served.model}  arch={served.architecture}  "
        f"kv_blocks={info.num_blocks} x {info.block_size} tokens  "
        f"encoders={','.join(orchestrator.encoders.modalities()) or 'none'}  "
        f"cache={format_bytes(cache_bytes)} each",
        flush=True,
    )
    http_note = "" if http is None else f"  OpenAI HTTP API on http://{host}:{http.port}/v1"
    print(
        f"meshserve up: gateway on {host}:{port}{http_note}  (Ctrl-C or SIGTERM drains and stops)"
    )
    await server
