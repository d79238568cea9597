"""Why a seed row has no passing test: one sentence per architecture, kept by hand.

Rows whose architectures transformers lacks get their reason without an entry here (see
`render.NOT_IN_TRANSFORMERS`); every other row that no test proves needs one, or the
support-table check fails naming it. A reason goes away when a test proves the row.
"""

from __future__ import annotations

MLA = (
    "MLA: its value head dim differs from the query/key head dim and the paged cache assumes "
    "one (issue 14, item 2, on another branch)"
)
ALIBI = (
    "ALiBi in its own attention code, not transformers' attention interface: needs ALiBi in "
    "the paged kernels and a native implementation (issue 14, item 3, on another branch)"
)
ENCODER_DECODER = (
    "encoder-decoder with media: the engine's cross-attention runs Whisper, BART and "
    "Florence-2; Mllama's tiled vision tower and gated cross-attention layers are not built "
    "yet (issue 13)"
)
GENERIC_TOWER = "no parity test yet for the generic processor-driven tower (issue 10)"
MM_EMBED = "multimodal pooling (media in embed prompts) is not built yet (issue 10)"

REASONS: dict[str, str] = {
    # --- text, generate
    "BloomForCausalLM": ALIBI,
    "MPTForCausalLM": ALIBI,
    "FalconForCausalLM": ALIBI + "; Falcon's rotary variant too",
    "DeepseekV2ForCausalLM": MLA,
    "DeepseekV3ForCausalLM": MLA,
    "MiniCPM3ForCausalLM": MLA,
    # --- multimodal, generate (the generic tower's rows are issue 10's)
    "MllamaForConditionalGeneration": ENCODER_DECODER,
}
# multimodal embed rows: media in pooling prompts
MULTIMODAL_EMBED_REASON = MM_EMBED
