"""Turns one scheduled step into flat tensors, runs the model and returns sampling logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from kernels.cross_attention import CrossAttentionMetadata
from kernels.forward_context import ForwardContext, forward_context
from kernels.metadata import AttentionMetadata
from lm_service.models.state_step import StateStep

# (conv_states, ssm_states): per Mamba layer [num_slots, ...]; see lm_service.engine.state_cache
StateCaches = tuple[list[torch.Tensor], list[torch.Tensor]]


class StepInputs(NamedTuple):
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, or [3, T] for M-RoPE
    attn_metadata: AttentionMetadata
    # (rows in the flat batch [n], their embeddings [n, hidden])
    mm_rows: list[tuple[torch.Tensor, torch.Tensor]]
    sample_rows: list[int]  # flat row of the last token of each sampling request
    sample_index: list[int]  # index into `scheduled` of each sampling request


class ModelRunner:
    """Owns the model, its KV caches, (SSM / hybrid models) its state caches and
    (encoder-decoder models) its cross-attention caches; executes one flattened step at a time."""

    def __init__(
        self,
        model: torch.nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        device: torch.device,
        state_caches: StateCaches | None = None,
        cross_kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.state_caches = state_caches
        self.cross_kv_caches = cross_kv_caches or []
        self.block_size = block_size
        self.device = device
        self.uses_mrope = bool(getattr(model, "uses_mrope", False))

    @torch.inference_mode()
    def execute(self, scheduled: Sequence[object]) -> tuple[torch.Tensor, list[int]]:
        """Runs the model over `scheduled` (ScheduledRequest items).

        Returns:
            logits [num_sampling, vocab] float32 and, for each row, its index in `scheduled`.
        """
        inputs = self.prepare(scheduled)
        embeds = self._inputs_embeds(inputs)
        ctx = ForwardContext(
            attn_metadata=inputs.attn_metadata,
            kv_caches=self.kv_caches,
            state=self._state_step(scheduled),
            cross_metadata=self._cross_metadata(scheduled),
            cross_kv_caches=self.cross_kv_caches,
        )
        with forward_context(ctx):
            hidden = self.model(
                None if embeds is not None else inputs.input_ids,
                inputs.positions,
                inputs_embeds=embeds,
            )  # [T, hidden]
        if not inputs.sample_rows:
            return hidden.new_empty((0, 0), dtype=torch.float32), []
        rows = torch.tensor(inputs.sample_rows, device=hidden.device)
        logits = self.model.compute_logits(hidden.index_select(0, rows))
        return logits, inputs.sample_index

    def _cross_metadata(self, scheduled: Sequence[object]) -> CrossAttentionMetadata | None:
        """Each request's encoder blocks; a request starting from its first token (new, or
        recomputed after preemption) brings its encoder states, whose K/V are written now."""
        if not self.cross_kv_caches:
            return None
        return CrossAttentionMetadata.build(
            query_lens=[item.num_new_tokens for item in scheduled],
            enc_lens=[item.request.num_encoder_tokens for item in scheduled],
            block_tables=[item.request.cross_block_ids for item in scheduled],
            block_size=self.block_size,
            new_states=[
                item.request.encoder_states if item.num_computed_tokens == 0 else None
                for item in scheduled
            ],
            device=self.device,
            windows=[item.request.cross_windows for item in scheduled],
            first_positions=[item.num_computed_tokens for item in scheduled],
        )

    def _state_step(self, scheduled: Sequence[object]) -> StateStep | None:
        """The slots of this step's requests; a request starting from its first token (new,
        or recomputed after preemption) gets its slot zeroed first."""
        if self.state_caches is None:
            return None
        conv_states, ssm_states = self.state_caches
        slot_ids = [item.request.state_slot for item in scheduled]
        if None in slot_ids:
            raise RuntimeError("a scheduled request of a state-space model has no state slot")
        fresh = [
            slot
            for slot, item in zip(slot_ids, scheduled, strict=True)
            if item.num_computed_tokens == 0
        ]
        if fresh:
            index = torch.tensor(fresh, device=self.device)
            for cache in (*conv_states, *ssm_states):
                cache.index_fill_(0, index, 0)
        query_lens = [item.num_new_tokens for item in scheduled]
        return StateStep.build(conv_states, ssm_states, slot_ids, query_lens, self.device)

    def prepare(self, scheduled: Sequence[object]) -> StepInputs:
        ids: list[int] = []
        positions: list[int] = []
        mrope: list[torch.Tensor] = []
        mm_rows: list[tuple[int, torch.Tensor]] = []
        sample_rows: list[int] = []
        sample_index: list[int] = []
        query_lens: list[int] = []
        seq_lens: list[int] = []
        for index, item in enumerate(scheduled):
            request, num_new = item.request, item.num_new_tokens
            start = request.num_computed_tokens
            end = start + num_new
            row0 = len(ids)
            ids.extend(request.all_token_ids[start:end])
            if self.uses_mrope:
                mrope.append(mrope_positions(request, start, end))
            else:
                positions.extend(range(start, end))
            mm_rows.extend(_media_rows(request, start, end, row0))
            query_lens.append(num_new)
            seq_lens.append(end)
            if end == request.num_tokens:
                sample_rows.append(len(ids) - 1)
                sample_index.append(index)
        meta = AttentionMetadata.build(
            query_lens=query_lens,
            seq_lens=seq_lens,
            block_tables=[item.request.block_ids for item in scheduled],
            block_size=self.block_size,
            device=self.device,
            bidirectional_ranges=[item.request.bidirectional_ranges for item in scheduled],
        )
        pos = torch.cat(mrope, dim=1) if self.uses_mrope else torch.tensor(positions)
        return StepInputs(
            input_ids=torch.tensor(ids, dtype=torch.long, device=self.device),
            positions=pos.to(device=self.device, dtype=torch.long),
            attn_metadata=meta,
            mm_rows=mm_rows,
            sample_rows=sample_rows,
            sample_index=sample_index,
        )

    def _inputs_embeds(self, inputs: StepInputs) -> torch.Tensor | None:
        if not inputs.mm_rows:
            return None
        embeds = self.model.get_input_embeddings(inputs.input_ids)  # [T, hidden]
        for rows, rows_embeds in inputs.mm_rows:
            embeds[rows.to(embeds.device)] = rows_embeds.to(embeds.device, embeds.dtype)
        return embeds


def _media_rows(
    request: object, start: int, end: int, row0: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The embedding rows of the request's media spans that fall in tokens [start, end).

    NOTE: a prefill chunk may end inside a span; the rest of its rows go with the next chunk.
    """
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    for span in request.mm_spans:
        positions, rows = span.embed_rows(start, end)
        if positions:
            flat = torch.tensor(positions, dtype=torch.long) + (row0 - start)
            out.append((flat, span.embeddings[rows]))
    return out


def mrope_positions(request: object, start: int, end: int) -> torch.Tensor:
    """[3, end - start] M-RoPE positions; past the prompt, text positions continue after the
    largest prompt position (HF's rope_deltas)."""
    prompt = request.mrope_positions  # [3, num_prompt_tokens] or None
    num_prompt = request.num_prompt_tokens
    if prompt is None:
        return torch.arange(start, end).expand(3, -1)
    head = prompt[:, start : min(end, num_prompt)]
    if end <= num_prompt:
        return head
    delta = int(prompt.max()) + 1 - num_prompt
    tail = torch.arange(max(start, num_prompt), end) + delta
    return torch.cat([head, tail.expand(3, -1)], dim=1)
