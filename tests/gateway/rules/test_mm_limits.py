"""limit_mm_per_prompt: parsing the flag and checking it against the modality spec at start-up."""

from __future__ import annotations

import pytest

from gateway.rules.limits import InvalidLimit, parse_limit_mm_per_prompt, validate_limits
from gateway.rules.modalities import ModalitySpec, TooManyItems
from gateway.rules.spec_table import spec_for
from protos.errors import InvalidRequest


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("image=4,video=1", {"image": 4, "video": 1}),
        (" image = 4 , audio=0 ,", {"image": 4, "audio": 0}),
        ("IMAGE=2", {"image": 2}),
        ('{"image": 2, "video": 1}', {"image": 2, "video": 1}),
        ({"image": 2}, {"image": 2}),
        ({"video": "3"}, {"video": 3}),
        ("", {}),
        (None, {}),
    ],
)
def test_parse(value: object, expected: dict[str, int]) -> None:
    assert parse_limit_mm_per_prompt(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("image", "expected MODALITY=N"),
        ("image=x", "image must be an integer"),
        ("image=1.5", "image must be an integer"),
        ("image=-1", "image must be 0 or more"),
        ("smell=1", "unknown modality 'smell'"),
        ("text=2", "unknown modality 'text'"),
        ("image=1,image=2", "image is given twice"),
        ("{not json", "is not valid JSON"),
        ("{}", None),
        ({"image": True}, "image must be an integer"),
        ({"image": 1.5}, "image must be an integer"),
    ],
)
def test_parse_refuses(value: object, reason: str | None) -> None:
    if reason is None:
        assert parse_limit_mm_per_prompt(value) == {}  # type: ignore[arg-type]
        return
    with pytest.raises(InvalidLimit, match=reason) as caught:
        parse_limit_mm_per_prompt(value)  # type: ignore[arg-type]
    assert isinstance(caught.value, InvalidRequest) and isinstance(caught.value, ValueError)


def test_parse_refuses_json_that_is_not_an_object() -> None:
    with pytest.raises(InvalidLimit, match="expected a JSON object"):
        parse_limit_mm_per_prompt('[{"image": 1}]')


def test_defaults_follow_the_spec() -> None:
    assert validate_limits(ModalitySpec.parse("T + I")) == {"image": 1, "video": 0, "audio": 0}
    assert validate_limits(spec_for("MiniCPMO"), None) == {"image": 1, "video": 1, "audio": 1}
    assert validate_limits(spec_for("LlamaForCausalLM"), "") == {
        "image": 0,
        "video": 0,
        "audio": 0,
    }


def test_raised_limits_where_the_spec_allows_several() -> None:
    spec = spec_for("Qwen2VLForConditionalGeneration")
    assert validate_limits(spec, "image=4") == {"image": 4, "video": 1, "audio": 0}
    assert validate_limits(spec, {"video": 0}) == {"image": 1, "video": 0, "audio": 0}
    # Phi-4-multimodal: A+ appears in some alternative, so several audios are fine.
    assert validate_limits(spec_for("Phi4MMForCausalLM"), "audio=3")["audio"] == 3


def test_refuses_several_where_the_spec_allows_one() -> None:
    with pytest.raises(InvalidLimit) as caught:
        validate_limits(
            spec_for("Blip2ForConditionalGeneration"), "image=2", "Blip2ForConditionalGeneration"
        )
    assert str(caught.value) == (
        "Blip2ForConditionalGeneration accepts T + IE: one image per prompt at most, "
        "so --limit-mm-per-prompt image=2 is not possible"
    )


def test_refuses_a_modality_the_model_lacks() -> None:
    arch = "Qwen2AudioForConditionalGeneration"
    with pytest.raises(InvalidLimit) as caught:
        validate_limits(spec_for(arch), "image=1", arch)
    assert str(caught.value) == (
        "Qwen2AudioForConditionalGeneration accepts T + A+: "
        "--limit-mm-per-prompt image=1 is not possible, it takes no image"
    )
    assert validate_limits(spec_for(arch), "image=0", arch)["image"] == 0


def test_refuses_negative_and_unknown() -> None:
    spec = spec_for("Qwen2VLForConditionalGeneration")
    with pytest.raises(InvalidLimit, match="0 or more"):
        validate_limits(spec, {"image": -1})
    with pytest.raises(InvalidLimit, match="unknown modality 'pointcloud'"):
        validate_limits(spec, {"pointcloud": 1})


def test_names_the_task_in_messages() -> None:
    arch = "LlavaNextForConditionalGeneration"
    with pytest.raises(InvalidLimit, match=r"^LlavaNextForConditionalGeneration \(embed\) accepts"):
        validate_limits(spec_for(arch, "embed"), "image=2", arch, task="embed")


def test_effective_limits_drive_the_check() -> None:
    arch = "LlavaOnevisionForConditionalGeneration"
    spec = spec_for(arch)
    limits = validate_limits(spec, "image=3,video=0", arch)
    spec.check({"image": 3}, True, limits=limits, architecture=arch)
    with pytest.raises(TooManyItems, match=r"At most 3 image\(s\).*image=N to raise it"):
        spec.check({"image": 4}, True, limits=limits, architecture=arch)
    with pytest.raises(TooManyItems, match=r"At most 0 video\(s\).*video=N to raise it"):
        spec.check({"video": 1}, True, limits=limits, architecture=arch)
