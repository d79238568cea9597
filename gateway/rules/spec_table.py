"""The seed's multimodal tables as data: (architecture, task) -> modality notation.

`spec_for()` answers for any architecture. One without a row gets a spec derived from its
config's media sub-configs (a vision tower takes images, an audio tower audio; several items,
no precomputed embeddings), with a log line saying so: the generic, processor-driven path runs
any checkpoint transformers implements. Only a config with no media sub-config is text-only.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from gateway.rules.modalities import ModalitySpec
from protos.tasks import Task

logger = logging.getLogger("meshserve.gateway")

# The seed's multimodal tables, row by row: (architecture, task) -> spec. Architectures the seed
# marks with "^" (set through --hf-overrides) are listed without the caret.
SPECS: dict[tuple[str, Task], str] = {
    # "Text generation (--task generate)"
    ("AriaForConditionalGeneration", Task.GENERATE): "T + I+",
    ("Blip2ForConditionalGeneration", Task.GENERATE): "T + IE",
    ("ChameleonForConditionalGeneration", Task.GENERATE): "T + I",
    ("DeepseekVLV2ForCausalLM", Task.GENERATE): "T + I+",
    ("Florence2ForConditionalGeneration", Task.GENERATE): "T + I",
    ("FuyuForCausalLM", Task.GENERATE): "T + I",
    ("Gemma3ForConditionalGeneration", Task.GENERATE): "T + I+",
    ("GLM4VForCausalLM", Task.GENERATE): "T + I",
    ("H2OVLChatModel", Task.GENERATE): "T + IE+",
    ("Idefics3ForConditionalGeneration", Task.GENERATE): "T + I",
    ("InternVLChatModel", Task.GENERATE): "T + IE+",
    # transformers' class for the same seed row (InternVLChatModel above): the -hf checkpoints.
    ("InternVLForConditionalGeneration", Task.GENERATE): "T + IE+",
    ("LlavaForConditionalGeneration", Task.GENERATE): "T + IE+",
    ("LlavaNextForConditionalGeneration", Task.GENERATE): "T + IE+",
    ("LlavaNextVideoForConditionalGeneration", Task.GENERATE): "T + V",
    ("LlavaOnevisionForConditionalGeneration", Task.GENERATE): "T + I+ + V+",
    ("MiniCPMO", Task.GENERATE): "T + IE+ + VE+ + AE+",
    ("MiniCPMV", Task.GENERATE): "T + IE+ + VE+",
    ("MllamaForConditionalGeneration", Task.GENERATE): "T + I+",
    ("MolmoForCausalLM", Task.GENERATE): "T + I+",
    ("NVLM_D_Model", Task.GENERATE): "T + I+",
    ("PaliGemmaForConditionalGeneration", Task.GENERATE): "T + IE",
    ("Phi3VForCausalLM", Task.GENERATE): "T + IE+",
    ("Phi4MMForCausalLM", Task.GENERATE): "T + I+ / T + A+ / I+ + A+",
    ("PixtralForConditionalGeneration", Task.GENERATE): "T + I+",
    ("QwenVLForConditionalGeneration", Task.GENERATE): "T + IE+",
    ("Qwen2AudioForConditionalGeneration", Task.GENERATE): "T + A+",
    ("Qwen2VLForConditionalGeneration", Task.GENERATE): "T + IE+ + VE+",
    ("Qwen2_5_VLForConditionalGeneration", Task.GENERATE): "T + IE+ + VE+",
    ("UltravoxModel", Task.GENERATE): "T + AE+",
    # The seed's note: TIGER-Lab/Mantis-8B-siglip-llama3 (a LLaVA-1.5 row) runs with
    # --hf-overrides '{"architectures": ["MantisForConditionalGeneration"]}'.
    ("MantisForConditionalGeneration", Task.GENERATE): "T + IE+",
    # transformers' class names for seed rows that the seed names otherwise
    ("Mistral3ForConditionalGeneration", Task.GENERATE): "T + I+",  # the seed's Pixtral row
    # Phi4MM's row without its I+ + A+: HF projects audio differently when the prompt also has
    # images, and our encoder embeds each item alone; refused rather than silently off HF
    ("Phi4MultimodalForCausalLM", Task.GENERATE): "T + I+ / T + A+",
    # "Text embedding (--task embed)", multimodal table
    ("LlavaNextForConditionalGeneration", Task.EMBED): "T / I",
    ("Phi3VForCausalLM", Task.EMBED): "T + I",
    ("Qwen2VLForConditionalGeneration", Task.EMBED): "T + I",
    # "Transcription (--task transcription)": the seed's row has no input column. Whisper is a
    # speech-to-text encoder-decoder: the content is exactly one audio clip; the optional prompt
    # or language of a Transcribe request conditions the decoder and is not prompt content, so
    # the check runs with has_text=False. The seed names the row "Whisper"; HF configs say
    # "WhisperForConditionalGeneration". Both are listed.
    ("Whisper", Task.TRANSCRIPTION): "A",
    ("WhisperForConditionalGeneration", Task.TRANSCRIPTION): "A",
}

TEXT_ONLY = "T"

# A task without its own row borrows another task's row of the same architecture: the seed says
# any generative model converts to a pooling model (as_embedding_model, as_classification_model,
# as_reward_model), keeping its processor; score on a non-cross-encoder compares embeddings.
_FALLBACK_TASKS: dict[Task, tuple[Task, ...]] = {
    Task.GENERATE: (),
    Task.EMBED: (Task.GENERATE,),
    Task.CLASSIFY: (Task.GENERATE,),
    Task.REWARD: (Task.GENERATE,),
    Task.SCORE: (Task.EMBED, Task.GENERATE),
    Task.TRANSCRIPTION: (Task.GENERATE,),
}


# A config's media sub-configs -> the modality letter they give a derived spec. NOTE: a vision
# tower is taken to read images: videos need a row (few processors take both).
_DERIVED_LETTERS: tuple[tuple[str, str], ...] = (
    ("vision_config", "I"),
    ("vq_config", "I"),
    ("qformer_config", "I"),
    ("audio_config", "A"),
)


def spec_for(architecture: str, task: str = "generate", config: Any = None) -> ModalitySpec:
    """The modality spec of `architecture` (as in config.architectures[0]) for `task`.

    Looks up (architecture, task), then the task's fallbacks (see `_FALLBACK_TASKS`); an
    architecture with no row at all gets `derived_spec(config)` (text-only without a config).
    """
    if task not in tuple(Task):  # a programming error: --task choices come from Task
        raise ValueError(f"Unknown task {task!r}; expected one of {', '.join(Task)}")
    task = Task(task)
    name = architecture.rstrip("^")
    for candidate in (task, *_FALLBACK_TASKS[task]):
        notation = SPECS.get((name, candidate))
        if notation is not None:
            return _parse_cached(notation)
    notation = derived_spec(config)
    if notation != TEXT_ONLY:
        logger.info(
            "%s has no row in the seed's tables; its modality spec %r is derived from its "
            "config's media sub-configs",
            name,
            notation,
        )
    return _parse_cached(notation)


def derived_spec(config: Any) -> str:
    """`T + I+`, `T + A+`, `T + I+ + A+` from the config's media sub-configs; else `T`."""
    letters = []
    for field, letter in _DERIVED_LETTERS:
        if getattr(config, field, None) is not None and letter not in letters:
            letters.append(letter)
    return " + ".join(["T", *(f"{letter}+" for letter in letters)])


@functools.cache
def _parse_cached(notation: str) -> ModalitySpec:
    return ModalitySpec.parse(notation)
