"""Command-line flags and argparse types every service shares."""

from __future__ import annotations

import argparse
import json


def add_server_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    """--host, --port and --grace-seconds, the same for every service."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"port (default {default_port}; 0 = any free)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight calls may finish (default 30)",
    )


def parse_bytes(text: str) -> int:
    """ "2GiB", "512MiB", "1e9" or "1048576" -> bytes."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    lowered = text.strip().lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * factor)
    return int(float(lowered))


def json_object(text: str) -> dict:
    """argparse type for flags that take a JSON object (--hf-overrides, ...)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"key\": 1}}', got {text!r}"
        )
    return value
