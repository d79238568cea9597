"""Flags as data: the argv a Flag forwards for a value, and what a Flag may not be."""

from __future__ import annotations

import argparse

import pytest

from protos.flags import add_flags, flag, forward, json_object, parse_bytes

FLAGS = (
    flag("--dtype", choices=("auto", "float32"), default="float32"),
    flag("--cache-bytes", type=parse_bytes, default=256),
    flag("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false"),
    flag("--trust-remote-code", action="store_true"),
    flag("--hf-overrides", type=json_object, default={}),
    flag("--encoder", action="append", default=[]),
)


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, FLAGS)
    return parser.parse_args(list(argv))


def test_defaults_forward_nothing() -> None:
    assert forward(FLAGS, vars(parsed())) == ()


def test_forwarded_argv_parses_back_to_the_same_values() -> None:
    given = parsed(
        "--dtype", "auto", "--cache-bytes", "1KiB", "--no-enable-prefix-caching",
        "--trust-remote-code", "--hf-overrides", '{"a": [1, 2]}',
        "--encoder", "x", "--encoder", "y",
    )  # fmt: skip
    argv = forward(FLAGS, vars(given))
    assert argv[:4] == ("--dtype", "auto", "--cache-bytes", "1024")
    assert parsed(*argv) == given


def test_a_value_outside_the_choices_is_not_forwarded() -> None:
    (dtype,) = FLAGS[:1]
    assert dtype.argv("bfloat16") == () and dtype.argv("auto") == ("--dtype", "auto")


def test_dest_and_default_follow_argparse() -> None:
    no_cache, trust = FLAGS[2], FLAGS[3]
    assert (no_cache.dest, no_cache.default) == ("enable_prefix_caching", True)
    assert (trust.dest, trust.default) == ("trust_remote_code", False)


@pytest.mark.parametrize(
    ("names", "options"), [(("model",), {}), (("--model",), {"required": True})]
)
def test_positional_and_required_options_are_wiring_not_flags(
    names: tuple[str, ...], options: dict
) -> None:
    with pytest.raises(ValueError):
        flag(*names, **options)
