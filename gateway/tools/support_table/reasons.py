"""Why a seed row has no passing test: one sentence per architecture, kept by hand.

Rows whose architectures transformers lacks get their reason without an entry here (see
`render.NOT_IN_TRANSFORMERS`); every other row that no test proves needs one, or the
support-table check fails naming it. A reason goes away when a test proves the row.
"""

from __future__ import annotations

GENERIC_TOWER = "no parity test yet for the generic processor-driven tower (issue 10)"
MM_EMBED = "multimodal pooling (media in embed prompts) is not built yet (issue 10)"

REASONS: dict[str, str] = {
    # --- text, generate
    # --- multimodal, generate (the generic tower's rows are issue 10's)
    "FuyuForCausalLM": (
        "HF's FuyuProcessor fails with its PIL image processor in transformers 5.24 "
        "(FuyuImageProcessorPil.patchify_image) and its torchvision one cannot load beside this "
        "torch; the parity test skips naming that"
    ),
}
# multimodal embed rows: media in pooling prompts
MULTIMODAL_EMBED_REASON = MM_EMBED
