"""`meshserve`: one command, a sub-command per service."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from encoder_service import cli as encoder_cli
    from gateway.tools import chat, gateway_command, up
    from lm_service import cli as lm_cli

    parser = argparse.ArgumentParser(
        prog="meshserve",
        description="A multimodal-first LLM inference mesh: a gRPC gateway, media encoder "
        "services and a paged-KV language model service.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MESHSERVE_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up.add_up_parser(sub)
    gateway_command.add_parser(sub)
    encoder_cli.add_parser(sub)
    lm_cli.add_parser(sub)
    chat.add_chat_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from protos.errors import MeshError

    try:
        return int(args.func(args) or 0)
    except MeshError as exc:
        # A user's mistake (bad flag value, unknown model, impossible limit): a sentence, no
        # traceback.
        print(f"meshserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
