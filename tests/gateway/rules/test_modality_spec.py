"""Modality notation, the per-architecture table, and the check of one prompt."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.rules.modalities import (
    EmptyPrompt,
    InvalidNotation,
    ModalityNotAccepted,
    ModalitySpec,
    ModalityTerm,
    TooManyItems,
)
from gateway.rules.spec_table import SPECS, spec_for
from protos.errors import InvalidRequest, LimitExceeded
from protos.modality import Modality

ROOT = Path(__file__).resolve().parents[3]
SEED_NAME = "supported_models.zh.md"
SEED_CANDIDATES = [
    Path(os.environ.get("MESHSERVE_SEED_DIR", ROOT / "seed")) / SEED_NAME,
    ROOT / "shared" / "seed" / SEED_NAME,
    ROOT.parent / "shared" / "seed" / SEED_NAME,
]
TASKS = {"generate", "embed", "classify", "score", "reward", "transcription"}
TASK_HEADING = re.compile(r"^#### .*\(`--task (\w+)`\)")


def _seed_path() -> Path:
    for path in SEED_CANDIDATES:
        if path.is_file():
            return path
    pytest.skip(f"the seed {SEED_NAME} is not in this checkout")


def _seed_multimodal_rows() -> list[tuple[str, str, str | None]]:
    """(architecture, task, input spec or None) for every row of the seed's multimodal tables."""
    text = _seed_path().read_text(encoding="utf-8")
    start = text.index("## 多模态语言模型列表")
    section = text[start : text.index("\n## ", start + 1)]
    rows: list[tuple[str, str, str | None]] = []
    task, header = "", None
    for line in section.splitlines():
        if heading := TASK_HEADING.match(line):
            task, header = heading.group(1), None
            continue
        cells = _cells(line)
        if cells is None or cells[0].startswith(":-"):
            continue
        if header is None:
            header = cells
            continue
        spec = cells[header.index("输入")] if "输入" in header else None
        rows.append((cells[0].rstrip("^"), task, spec))
    return rows


def _cells(line: str) -> list[str] | None:
    line = line.removeprefix(">").strip()
    if not line.startswith("|"):
        return None
    return [cell.strip() for cell in line.strip("|").split("|")]


def _normalized(notation: str) -> str:
    return " ".join(notation.split())  # the seed has non-breaking spaces inside some cells


def test_seed_tables_are_all_in_specs() -> None:
    rows = _seed_multimodal_rows()
    by_task = {task: sum(1 for _, t, _ in rows if t == task) for _, task, _ in rows}
    assert by_task == {"generate": 29, "embed": 3, "transcription": 1}
    for architecture, task, notation in rows:
        assert (architecture, task) in SPECS, (architecture, task)
        # Whisper's row has no input column: documented as audio only.
        expected = "A" if notation is None else _normalized(notation)
        assert SPECS[architecture, task] == expected, (architecture, task)
        if notation is not None:
            assert str(ModalitySpec.parse(notation)) == expected


def test_seed_has_non_breaking_spaces_we_parse() -> None:
    cells = [spec for _, _, spec in _seed_multimodal_rows() if spec]
    assert any("\xa0" in cell for cell in cells)
    assert ModalitySpec.parse("T + I+\xa0+ V+") == ModalitySpec.parse("T + I+ + V+")


@pytest.mark.parametrize("notation", sorted(set(SPECS.values())))
def test_every_table_spec_round_trips(notation: str) -> None:
    spec = ModalitySpec.parse(notation)
    assert str(spec) == notation
    assert ModalitySpec.parse(str(spec)) == spec
    assert spec.raw == notation


def test_table_keys_are_clean() -> None:
    assert all("^" not in arch and task in TASKS for arch, task in SPECS)
    assert spec_for("DeepseekVLV2ForCausalLM^") == spec_for("DeepseekVLV2ForCausalLM")


def test_transformers_class_names_get_their_seed_row() -> None:
    """The -hf InternVL checkpoints name transformers' class, not the seed's remote-code one."""
    assert spec_for("InternVLForConditionalGeneration") == spec_for("InternVLChatModel")
    assert str(spec_for("InternVLForConditionalGeneration")) == "T + IE+"


def test_parse_structure() -> None:
    spec = ModalitySpec.parse("T + I+ / T + A+ / I+ + A+")
    text = ModalityTerm(Modality.TEXT)
    image_many = ModalityTerm(Modality.IMAGE, embeds_allowed=False, multiple=True)
    audio_many = ModalityTerm(Modality.AUDIO, embeds_allowed=False, multiple=True)
    assert spec.alternatives == ((text, image_many), (text, audio_many), (image_many, audio_many))
    embeds = ModalitySpec.parse("T + IE+ + VE+ + AE+").alternatives[0]
    assert all(t.embeds_allowed and t.multiple for t in embeds[1:])
    single = ModalitySpec.parse("T + IE").alternatives[0][1]
    assert (single.embeds_allowed, single.multiple) == (True, False)


@pytest.mark.parametrize(
    ("compact", "canonical"),
    [("T+I", "T + I"), ("T+I++V+", "T + I+ + V+"), ("T/I", "T / I"), ("I++A+", "I+ + A+")],
)
def test_parse_without_spaces(compact: str, canonical: str) -> None:
    assert str(ModalitySpec.parse(compact)) == canonical


@pytest.mark.parametrize(
    ("notation", "reason"),
    [
        ("", "Empty modality spec"),
        ("   ", "Empty modality spec"),
        ("T + X", "unknown modality letter 'X'"),
        ("t + i", "unknown modality letter 't'"),
        ("TE + I", "apply to media only"),
        ("T+ + I", "apply to media only"),
        ("T + I + I", "appears twice"),
        ("T / / I", "expected a letter"),
        ("T + I+ +", "expected a letter"),
        ("T + IEE", "expected '+' or '/'"),
    ],
)
def test_bad_notation(notation: str, reason: str) -> None:
    with pytest.raises(InvalidNotation, match=re.escape(reason)) as caught:
        ModalitySpec.parse(notation)
    assert isinstance(caught.value, ValueError)


def test_spec_for_by_task() -> None:
    llava_next = "LlavaNextForConditionalGeneration"
    assert str(spec_for(llava_next)) == "T + IE+"
    assert str(spec_for(llava_next, "embed")) == "T / I"
    assert str(spec_for("Whisper", "transcription")) == "A"
    assert str(spec_for("WhisperForConditionalGeneration", "transcription")) == "A"
    # Pooling tasks without a row borrow: score -> embed -> generate.
    assert str(spec_for("Phi3VForCausalLM", "score")) == "T + I"
    assert str(spec_for("Qwen2AudioForConditionalGeneration", "classify")) == "T + A+"
    # No row at all: text-only, whatever the task.
    assert spec_for("LlamaForCausalLM").is_text_only
    assert str(spec_for("SomeRemoteCodeModel", "embed")) == "T"


def test_hf_class_names_get_their_seed_rows() -> None:
    assert (
        SPECS["Mistral3ForConditionalGeneration", "generate"]
        == SPECS["PixtralForConditionalGeneration", "generate"]
    )
    # NOTE: Phi4MM's row less I+ + A+, which the generic path cannot match HF on (see the table)
    assert str(SPECS["Phi4MultimodalForCausalLM", "generate"]) == "T + I+ / T + A+"
    assert str(SPECS["Phi4MMForCausalLM", "generate"]) == "T + I+ / T + A+ / I+ + A+"


@pytest.mark.parametrize(
    ("sub_configs", "notation"),
    [
        (("vision_config",), "T + I+"),
        (("vq_config",), "T + I+"),
        (("audio_config",), "T + A+"),
        (("vision_config", "audio_config"), "T + I+ + A+"),
        ((), "T"),
    ],
)
def test_an_architecture_without_a_row_gets_a_derived_spec(
    sub_configs: tuple[str, ...], notation: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = SimpleNamespace(**{name: object() for name in sub_configs})
    with caplog.at_level("INFO", logger="meshserve.gateway"):
        spec = spec_for("NewVLMForConditionalGeneration", "generate", config)
    assert str(spec) == notation
    said = "NewVLMForConditionalGeneration has no row in the seed's tables" in caplog.text
    assert said == bool(sub_configs)


def test_spec_for_unknown_task() -> None:
    with pytest.raises(ValueError, match="Unknown task 'chat'"):
        spec_for("LlamaForCausalLM", "chat")


def _accepts(notation: str, text: bool, items: dict[str, int], **kwargs: object) -> bool:
    try:
        ModalitySpec.parse(notation).check(items, text, **kwargs)  # type: ignore[arg-type]
    except InvalidRequest:
        return False
    return True


@pytest.mark.parametrize(
    ("notation", "text", "items", "embeds", "limits", "accepted"),
    [
        # T + I: text only, image only, or both; one image; no embeddings; no video.
        ("T + I", True, {}, (), None, True),
        ("T + I", False, {"image": 1}, (), None, True),
        ("T + I", True, {"image": 1}, (), None, True),
        ("T + I", True, {"image": 2}, (), {"image": 2}, False),
        ("T + I", True, {"image": 1}, ("image",), None, False),
        ("T + I", True, {"video": 1}, (), None, False),
        ("T + I", True, {"image": 0, "video": 0}, (), None, True),
        # T + I+: several images, up to the configured limit.
        ("T + I+", True, {"image": 3}, (), {"image": 3}, True),
        ("T + I+", True, {"image": 4}, (), {"image": 3}, False),
        ("T + I+", True, {"image": 2}, (), None, False),
        # T / I: never both.
        ("T / I", True, {}, (), None, True),
        ("T / I", False, {"image": 1}, (), None, True),
        ("T / I", True, {"image": 1}, (), None, False),
        # T + IE+ + VE+: embeddings for image and video, no audio.
        ("T + IE+ + VE+", True, {"image": 2, "video": 1}, ("image", "video"), {"image": 2}, True),
        ("T + IE+ + VE+", False, {"video": 2}, ("video",), {"video": 2}, True),
        ("T + IE+ + VE+", True, {"image": 1, "audio": 1}, (), None, False),
        # Phi-4-multimodal: any two of text, images, audios; never all three; no embeddings.
        ("T + I+ / T + A+ / I+ + A+", True, {"image": 2}, (), {"image": 2}, True),
        ("T + I+ / T + A+ / I+ + A+", True, {"audio": 1}, (), None, True),
        ("T + I+ / T + A+ / I+ + A+", False, {"image": 1, "audio": 2}, (), {"audio": 2}, True),
        ("T + I+ / T + A+ / I+ + A+", True, {"image": 1, "audio": 1}, (), None, False),
        ("T + I+ / T + A+ / I+ + A+", True, {"image": 1}, ("image",), None, False),
        ("T + I+ / T + A+ / I+ + A+", True, {"video": 1}, (), None, False),
        # MiniCPM-O: everything together, all as embeddings.
        (
            "T + IE+ + VE+ + AE+",
            True,
            {"image": 2, "video": 2, "audio": 2},
            ("image", "video", "audio"),
            {"image": 2, "video": 2, "audio": 2},
            True,
        ),
        ("T + IE+ + VE+ + AE+", True, {"audio": 2}, ("audio",), None, False),
    ],
)
def test_check_combinations(
    notation: str,
    text: bool,
    items: dict[str, int],
    embeds: tuple[str, ...],
    limits: dict[str, int] | None,
    accepted: bool,
) -> None:
    assert _accepts(notation, text, items, embeds=set(embeds), limits=limits) is accepted


def _message(architecture: str, task: str, text: bool, items: dict[str, int], **kw: object) -> str:
    with pytest.raises(InvalidRequest) as caught:
        spec_for(architecture, task).check(
            items,
            text,
            architecture=architecture,
            task=task,
            **kw,  # type: ignore[arg-type]
        )
    return str(caught.value)


def test_message_unsupported_modality() -> None:
    arch = "Qwen2AudioForConditionalGeneration"
    assert _message(arch, "generate", True, {"video": 1}) == (
        "Qwen2AudioForConditionalGeneration accepts T + A+: video is not supported"
    )
    assert _message(arch, "generate", True, {"video": 1, "image": 1}) == (
        "Qwen2AudioForConditionalGeneration accepts T + A+: image and video are not supported"
    )


def test_message_combination() -> None:
    assert _message("LlavaNextForConditionalGeneration", "embed", True, {"image": 1}) == (
        "LlavaNextForConditionalGeneration (embed) accepts T / I: "
        "text and image cannot be combined in one prompt"
    )
    items = {"image": 1, "audio": 1}
    assert _message("Phi4MMForCausalLM", "generate", True, items) == (
        "Phi4MMForCausalLM accepts T + I+ / T + A+ / I+ + A+: "
        "text, image and audio cannot be combined in one prompt"
    )


def test_message_embeddings() -> None:
    arch = "Qwen2AudioForConditionalGeneration"
    assert _message(arch, "generate", True, {"audio": 1}, embeds={"audio"}) == (
        "Qwen2AudioForConditionalGeneration accepts T + A+: "
        "audio cannot be given as precomputed embeddings"
    )


def test_message_names_only_the_refused_embeddings() -> None:
    spec = ModalitySpec.parse("T + IE+ + A+")
    with pytest.raises(ModalityNotAccepted, match=r"A\+: audio cannot be given as precomputed"):
        spec.check({"image": 1, "audio": 1}, True, embeds={"image", "audio"})
    spec.check({"image": 1, "audio": 1}, True, embeds={"image"})


def test_message_spec_binds_single_item() -> None:
    """The spec, not the flag, forbids a second image: no hint to raise the flag."""
    message = _message("Blip2ForConditionalGeneration", "generate", True, {"image": 2})
    assert message == (
        "Blip2ForConditionalGeneration accepts T + IE: "
        "at most 1 image(s) may be provided in one prompt"
    )
    assert "--limit-mm-per-prompt" not in message


def test_message_limit_binds() -> None:
    arch = "Qwen2VLForConditionalGeneration"
    assert _message(arch, "generate", True, {"image": 2}) == (
        "At most 1 image(s) may be provided in one prompt; "
        "set --limit-mm-per-prompt image=N to raise it"
    )
    with pytest.raises(TooManyItems, match=r"At most 3 video\(s\)"):
        spec_for(arch).check({"video": 4}, True, limits={"video": 3})


def test_message_names_the_offending_modality_among_several() -> None:
    spec = ModalitySpec.parse("T + I+ + V")
    with pytest.raises(TooManyItems, match=r"accepts T \+ I\+ \+ V: at most 1 video"):
        spec.check({"image": 3, "video": 2}, True, limits={"image": 3, "video": 2})


def test_unknown_architecture_is_text_only() -> None:
    assert _message("FooForCausalLM", "generate", True, {"image": 1}) == (
        "FooForCausalLM accepts T: image is not supported"
    )
    spec_for("FooForCausalLM").check({}, has_text=True)  # text is fine


def test_whisper_takes_one_clip_and_no_text() -> None:
    spec = spec_for("WhisperForConditionalGeneration", "transcription")
    spec.check({"audio": 1}, has_text=False)
    with pytest.raises(ModalityNotAccepted, match="text is not supported"):
        spec.check({"audio": 1}, has_text=True)
    with pytest.raises(TooManyItems):
        spec.check({"audio": 2}, has_text=False)
    with pytest.raises(EmptyPrompt):
        spec.check({}, has_text=False)


def test_error_types_map_to_user_mistakes() -> None:
    spec = ModalitySpec.parse("T + I")
    with pytest.raises(ModalityNotAccepted) as rule:
        spec.check({"audio": 1}, True)
    with pytest.raises(TooManyItems) as count:
        spec.check({"image": 2}, True)
    assert isinstance(rule.value, InvalidRequest)
    assert isinstance(count.value, LimitExceeded)


def test_bad_item_names() -> None:
    spec = ModalitySpec.parse("T + I")
    with pytest.raises(InvalidRequest, match="Unknown modality 'smell'"):
        spec.check({"smell": 1}, True)
    with pytest.raises(ValueError, match="has_text"):
        spec.check({"text": 1}, True)
    with pytest.raises(ValueError, match="without items"):
        spec.check({}, True, embeds={"image"})


def test_modality_labels() -> None:
    assert [m.label for m in Modality] == ["text", "image", "video", "audio"]
    assert [m.letter for m in Modality] == ["T", "I", "V", "A"]
    assert Modality.from_label("video") is Modality.VIDEO
    spec = ModalitySpec.parse("T + I+ / T + AE")
    assert spec.modalities == {Modality.TEXT, Modality.IMAGE, Modality.AUDIO}
    assert spec.accepts_multiple(Modality.IMAGE) and not spec.accepts_multiple(Modality.AUDIO)
    assert spec.accepts_embeds(Modality.AUDIO) and not spec.accepts_embeds(Modality.IMAGE)
