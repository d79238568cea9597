"""`meshserve up` takes every flag of `lm`, `encoder` and `gateway` and hands it to each service
that has it. Checked against the services' real parsers: a flag added to a service but not to
its declaration (LM_FLAGS, ENCODER_FLAGS, GATEWAY_FLAGS) fails here."""

from __future__ import annotations

import argparse

import pytest

from gateway.tools.cli import build_parser
from gateway.tools.gateway_command import positive_int, positive_seconds
from gateway.tools.launcher import plan_stack
from gateway.tools.stack_flags import stack_flags
from gateway.tools.up import stack_options
from protos.flags import flag, json_object, parse_bytes
from protos.sched import parse_pin_cpu

SERVICE_ARGV = {
    "lm": ("lm", "--model", "m"),
    "encoder": ("encoder", "--modality", "image", "--model", "m"),
    "gateway": ("gateway", "--model", "m", "--lm", "127.0.0.1:1"),
}
# The launcher sets these for each child; they are never taken from the user's flags.
WIRING = {
    "--model",
    "--host",
    "--port",
    "--grace-seconds",
    "--metrics-port",
    "--modality",
    "--lm",
    "--encoder",
}
UP_ONLY = (
    "--replicas",
    "--embedded",
    "--encoder-device",
    "--ready-timeout",
    "--log-dir",
    "--restart",
)
SAMPLE_VALUES = {
    int: "7",
    float: "2.5",
    parse_bytes: "3MiB",
    json_object: '{"sample": 1}',
    positive_seconds: "2.5",
    positive_int: "3",
    parse_pin_cpu: "off",
    None: "sample",
}


def sub_parser(command: str) -> argparse.ArgumentParser:
    subparsers = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return subparsers.choices[command]


def options_of(command: str) -> dict[str, argparse.Action]:
    """option string -> its action, for every option of `meshserve COMMAND` but --help."""
    parser = sub_parser(command)
    return {
        a.option_strings[0]: a for a in parser._actions if a.option_strings and a.dest != "help"
    }


SERVICE_OPTIONS = {service: options_of(service) for service in SERVICE_ARGV}
FORWARDED = [
    (service, option)
    for service, options in SERVICE_OPTIONS.items()
    for option in options
    if option not in WIRING
]


def sample_argv(option: str) -> list[str]:
    """`option` with a value other than its default that every service having it accepts."""
    actions = [options[option] for options in SERVICE_OPTIONS.values() if option in options]
    if actions[0].nargs == 0:  # a switch
        return [option]
    choices = [set(action.choices) for action in actions if action.choices]
    if choices:
        common = set.intersection(*choices) - {action.default for action in actions}
        assert common, f"{option}: no value other than the default that every service takes"
        return [option, sorted(common)[0]]
    kind = actions[0].type
    assert kind in SAMPLE_VALUES, f"{option}: give the test a sample value of type {kind!r}"
    return [option, SAMPLE_VALUES[kind]]


def planned_argv(*up_argv: str) -> dict[str, tuple[str, ...]]:
    """service -> the argv `up --model m UP_ARGV` plans for it (one LM, one image encoder)."""
    args = build_parser().parse_args(["up", "--model", "m", *up_argv])
    ports = iter(range(43000, 43100))
    plan = plan_stack(stack_options(args, replicas={}), ["image"], lambda: next(ports))
    lm, encoder = plan.backends
    return {"lm": lm.argv, "encoder": encoder.argv, "gateway": plan.gateway.argv}


@pytest.mark.parametrize(("service", "option"), FORWARDED, ids=[f"{s}{o}" for s, o in FORWARDED])
def test_every_service_flag_given_to_up_reaches_that_service(service: str, option: str) -> None:
    assert option in options_of("up"), f"up lacks {option}: declare it in the {service} FLAGS"
    argv = sample_argv(option)
    dest = SERVICE_OPTIONS[service][option].dest
    parser = build_parser()
    planned = parser.parse_args(list(planned_argv(*argv)[service]))
    direct = parser.parse_args([*SERVICE_ARGV[service], *argv])
    assert getattr(planned, dest) == getattr(direct, dest), planned_argv(*argv)[service]
    default = getattr(parser.parse_args(list(SERVICE_ARGV[service])), dest)
    assert getattr(direct, dest) != default  # the sample really sets something


@pytest.mark.parametrize("service", SERVICE_ARGV)
def test_the_launcher_sets_every_wiring_flag_of_a_service(service: str) -> None:
    planned = planned_argv("--metrics-port", "9400")[service]
    wiring = [option for option in SERVICE_OPTIONS[service] if option in WIRING]
    assert [option for option in wiring if option not in planned] == []


def test_metrics_ports_follow_the_gateway_s() -> None:
    planned = planned_argv("--metrics-port", "9400")
    ports = {service: argv[argv.index("--metrics-port") + 1] for service, argv in planned.items()}
    assert ports == {"gateway": "9400", "lm": "9401", "encoder": "9402"}
    assert all("--metrics-port" not in argv for argv in planned_argv().values())


def test_up_without_flags_forwards_nothing_but_the_wiring() -> None:
    for service, argv in planned_argv().items():
        options = [token for token in argv if token.startswith("--")]
        assert set(options) <= WIRING, (service, argv)


def test_up_keeps_its_own_flags() -> None:
    up_argv = ["--replicas", "lm=1", "--embedded", "--ready-timeout", "5", "--log-dir", "/tmp/x"]
    planned = planned_argv(*up_argv, "--encoder-device", "cuda:1", "--port", "50099")
    for service, argv in planned.items():
        assert not set(argv) & set(UP_ONLY), (service, argv)
    encoder, lm = planned["encoder"], planned["lm"]
    assert encoder[encoder.index("--device") + 1] == "cuda:1" and "--device" not in lm
    gateway = planned["gateway"]
    assert gateway[gateway.index("--port") + 1] == "50099"


def test_a_value_only_the_lm_takes_stays_with_the_lm() -> None:
    planned = planned_argv("--dtype", "auto", "--device", "cuda:0")
    lm, encoder, gateway = planned["lm"], planned["encoder"], planned["gateway"]
    assert lm[lm.index("--dtype") + 1] == "auto" and "--dtype" not in encoder
    # the gateway runs no model (transcription's decoder runs in the LM service too)
    assert "--dtype" not in gateway and "--device" not in gateway
    assert lm[lm.index("--device") + 1] == encoder[encoder.index("--device") + 1] == "cuda:0"


def test_shared_flags_merge_their_choices() -> None:
    lm = flag("--dtype", choices=("auto", "float32"), default="float32")
    encoder = flag("--dtype", choices=("float32", "bfloat16"), default="float32")
    (merged,) = stack_flags({"lm": (lm,), "encoder": (encoder,)})
    assert merged.services == ("lm", "encoder")
    assert merged.flag.choices == ("auto", "float32", "bfloat16")


def test_services_that_disagree_on_a_default_cannot_share_a_flag() -> None:
    lm = flag("--device", default="cpu")
    encoder = flag("--device", default="cuda")
    with pytest.raises(ValueError, match="--device is declared differently"):
        stack_flags({"lm": (lm,), "encoder": (encoder,)})


def test_up_refuses_tls_for_a_gateway_it_checks_in_plaintext(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["up", "--model", "m", "--tls-cert", "c", "--tls-key", "k"])
    assert args.func(args) == 2
    assert "--tls-cert needs --embedded" in capsys.readouterr().err
