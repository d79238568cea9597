"""The encoder core: media items in, LM-sized embeddings out; cached, deduplicated, batched.

`Encoder.encode` does, for one call:
1. validate each item and its options; items carrying precomputed embeddings ("E" inputs) are
   checked and passed through;
2. hash the rest (bytes + options + model) and look the hashes up in the EmbeddingCache;
3. decode and preprocess the misses on a few decode threads, each distinct item once;
4. run them through the tower together with the misses of concurrent callers (MicroBatcher);
5. cache the new embeddings and answer in item order.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from encoder_service.cache import CachedEncoding, EmbeddingCache, content_hash
from encoder_service.errors import MediaError
from encoder_service.media import MediaLimits
from encoder_service.registry import check_modality, load_tower
from encoder_service.towers import Tower, TowerInput
from encoder_service.towers.processor_kwargs import canonical
from protos.encoder_messages import EncodeResult, EncoderInfo, MediaItem
from protos.errors import InvalidRequest, Overloaded
from protos.micro_batcher import MicroBatcher, Ticket
from protos.modality import Modality

_VIDEO_OPTIONS = ("fps", "num_frames")
DEFAULT_DECODE_THREADS = min(4, os.cpu_count() or 1)
# items per tower call when none is configured; see default_max_batch_size
CPU_MAX_BATCH_SIZE = 4
ACCELERATOR_MAX_BATCH_SIZE = 32


def default_max_batch_size(device: torch.device | str) -> int:
    """Items per tower call by default: few on a CPU, many on an accelerator.

    NOTE: on a CPU one image's tower call already keeps every core busy (Qwen2-VL's tower
    costs the same CPU per image from 2 to 16 images a call), so a larger call saves nothing
    and only holds every result back until the last item is done: 32 images took ~5 s on 2
    cores, with the LM decoding the one early request alone meanwhile (bench/mesh.py
    --workload image: mesh share 0.84 with 32 a call, 0.985 with 4). An accelerator needs
    the larger calls to fill it.
    """
    if torch.device(device).type == "cpu":
        return CPU_MAX_BATCH_SIZE
    return ACCELERATOR_MAX_BATCH_SIZE


@dataclass(frozen=True, slots=True, eq=False)
class _Miss:
    """An item whose embeddings must be computed."""

    index: int
    key: str
    source: Any
    options: Mapping[str, Any]
    metadata: Mapping[str, Any]
    processor_kwargs: Mapping[str, Any] | None  # the request's, checked; None: the encoder's


class Encoder:
    """Encodes the media of one modality with one checkpoint's tower.

    Args:
        tower: the loaded Tower.
        modality: the modality this encoder serves (one of tower.modalities).
        model_id: the model identity mixed into content hashes.
        limits: hard limits on each media item.
        cache_bytes: embedding cache budget in bytes (0 disables the cache).
        max_batch_size, max_wait_s: micro-batching of concurrent calls; max_batch_size None:
            `default_max_batch_size` of the tower's device.
        max_queued_items: most items admitted (`admit`) at once; None: no bound.
        num_decode_threads: threads that decode and preprocess media (see `_prepare_distinct`).
        on_tower_call: called with (num_items, seconds) after each tower call (metrics).
    """

    def __init__(
        self,
        tower: Tower,
        modality: Modality,
        *,
        model_id: str,
        limits: MediaLimits = MediaLimits(),
        cache_bytes: int = 256 << 20,
        max_batch_size: int | None = None,
        max_wait_s: float = 0.005,
        max_queued_items: int | None = None,
        num_decode_threads: int = DEFAULT_DECODE_THREADS,
        on_tower_call: Callable[[int, float], None] | None = None,
    ) -> None:
        if num_decode_threads < 1 or (max_queued_items is not None and max_queued_items < 1):
            raise ValueError(
                f"num_decode_threads ({num_decode_threads}) and max_queued_items "
                f"({max_queued_items}) must be >= 1"
            )
        self.tower = tower
        self.modality = modality
        self.model_id = model_id
        self.limits = limits
        self.cache = EmbeddingCache(cache_bytes)
        if max_batch_size is None:
            max_batch_size = default_max_batch_size(tower.device)
        self.max_batch_size = max_batch_size
        self._batcher: MicroBatcher[tuple[str, TowerInput], torch.Tensor] = MicroBatcher(
            self._run_tower,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            name=f"encoder-{modality}",
        )
        # NOTE: decoders keep per-thread buffers (FFmpeg, malloc arenas, OpenMP teams of
        # torch ops): decoding on a few fixed threads, not on every caller's, keeps RSS flat.
        self._decoders = ThreadPoolExecutor(num_decode_threads, f"decode-{modality}")
        self.max_queued_items = max_queued_items
        self.on_tower_call = on_tower_call
        self._lock = threading.Lock()
        self._num_requests = self._num_items = self._num_encoded = self._num_tower_calls = 0
        self.num_queued_items = 0  # admitted, not yet answered

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        modality: str = "image",
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        cache_bytes: int = 256 << 20,
        limits: MediaLimits = MediaLimits(),
        model_id: str | None = None,
        max_batch_size: int | None = None,
        max_wait_s: float = 0.005,
        tower: Tower | None = None,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
        revision: str | None = None,
        **options: Any,
    ) -> Encoder:
        """Loads only the encoder tower of the checkpoint at `path`.

        `tower`: the tower of another Encoder of this checkpoint (Qwen2-VL's image and video
        encoders) to share instead of loading a second copy; `dtype` and `device` are then
        the tower's. Raises Unsupported when the architecture has no tower or cannot encode
        `modality`. `mm_processor_kwargs` go to the HF processor on every item and are part
        of the cache identity (a shared `tower` keeps its own). `options`: the other keywords of `Encoder` (max_queued_items, ...).
        """
        if tower is None:
            tower, value = load_tower(
                path,
                modality,
                dtype=dtype,
                device=device,
                processor_kwargs=mm_processor_kwargs,
                revision=revision,
            )
        else:
            value = check_modality(tower, modality)
        identity = f"{model_id or path}|{str(tower.dtype).removeprefix('torch.')}"
        if tower.processor_kwargs:
            identity += f"|{canonical(tower.processor_kwargs)}"
        return cls(
            tower,
            value,
            model_id=identity,
            limits=limits,
            cache_bytes=cache_bytes,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            **options,
        )

    # ------------------------------------------------------------------------------- public

    @contextlib.contextmanager
    def admit(self, num_items: int) -> Iterator[None]:
        """Holds `num_items` places among `max_queued_items` for the `with` block; raises
        Overloaded, with the numbers, when they are not free."""
        with self._lock:
            queued, limit = self.num_queued_items, self.max_queued_items
            if limit is not None and queued + num_items > limit:
                raise Overloaded(
                    f"the {self.modality} encoder is full: {queued} items are queued and this "
                    f"request brings {num_items} (--max-queued-items {limit}); retry shortly "
                    "or add encoder replicas"
                )
            self.num_queued_items += num_items
        try:
            yield
        finally:
            with self._lock:
                self.num_queued_items -= num_items

    def encode(self, items: Sequence[MediaItem]) -> list[EncodeResult]:
        """Embeddings for each item, in order. Raises MediaError naming the first bad item."""
        with self._lock:
            self._num_requests += 1
            self._num_items += len(items)
        results: list[EncodeResult | None] = [None] * len(items)
        with self._batcher.incoming() as ticket:  # concurrent batches wait for our misses
            misses: list[_Miss] = []
            for index, item in enumerate(items):
                if _is_embeddings(item, index, self.modality):
                    results[index] = self._passthrough(index, item)
                else:
                    misses.append(self._miss(index, item))
            found = self._lookup(misses)
            prepared = self._prepare_distinct(misses, found)  # may raise MediaError
            self._compute(prepared, found, ticket)
        computed = {key for key, _ in prepared}
        for miss in misses:
            result = _result(miss.key, found[miss.key], miss.key not in computed)
            results[miss.index] = self._as_token_ids(result)
        return results  # type: ignore[return-value]

    def _as_token_ids(self, result: EncodeResult) -> EncodeResult:
        """A discrete-token answer: the ids go in `token_ids`, no embedding rows."""
        if result.embeddings.ndim != 1:
            return result
        empty = torch.empty(0, self.tower.hidden_size, dtype=self.tower.dtype)
        return result._replace(embeddings=empty, token_ids=tuple(result.embeddings.tolist()))

    def info(self) -> EncoderInfo:
        with self._lock:
            counts = (self._num_requests, self._num_items, self._num_encoded, self._num_tower_calls)
        return EncoderInfo(
            self.model_id,
            self.tower.architecture,
            str(self.modality),
            self.tower.hidden_size,
            str(self.tower.dtype).removeprefix("torch."),
            str(self.tower.device),
            self.cache.stats(),
            *counts,
        )

    def close(self) -> None:
        """Finishes queued work and stops the batching and decoding threads."""
        self._batcher.close()
        self._decoders.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- cache misses

    def _miss(self, index: int, item: MediaItem) -> _Miss:
        options = self._resolve_options(index, item.options)
        request_kwargs = self._request_kwargs(index, item.processor_kwargs)
        source = item.data if item.data is not None else item.decoded
        raw, kind = (
            (source, "file") if item.data is not None else (_decoded_bytes(source), "decoded")
        )
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise MediaError(
                self.modality, index, f"unsupported input of type {type(source).__name__}"
            )
        extra = {"fps": item.metadata.get("fps")} if kind == "decoded" else {}
        hashed = {**options, **extra, "modality": str(self.modality), "source": kind}
        if request_kwargs:
            hashed["processor_kwargs"] = canonical(request_kwargs)
        key = content_hash(raw, hashed, self.model_id)
        return _Miss(index, key, source, options, item.metadata, request_kwargs)

    def _lookup(self, misses: list[_Miss]) -> dict[str, CachedEncoding | None]:
        """Cache entry (or None) of each distinct key."""
        found: dict[str, CachedEncoding | None] = {}
        for miss in misses:
            if miss.key not in found:
                found[miss.key] = self.cache.get(miss.key)
        return found

    def _prepare_distinct(
        self, misses: list[_Miss], found: dict[str, CachedEncoding | None]
    ) -> list[tuple[str, TowerInput]]:
        """Decodes and preprocesses the first item of each key the cache lacks, on the decode
        threads; raises the first item's error (in item order)."""
        todo: dict[str, _Miss] = {}
        for miss in misses:
            if found[miss.key] is None:
                todo.setdefault(miss.key, miss)
        futures = {key: self._decoders.submit(self._prepare, miss) for key, miss in todo.items()}
        try:
            return [(key, future.result()) for key, future in futures.items()]
        finally:
            for future in futures.values():
                future.cancel()  # after an error: the items nobody waits for any more

    def _compute(
        self,
        prepared: list[tuple[str, TowerInput]],
        found: dict[str, CachedEncoding | None],
        ticket: Ticket[tuple[str, TowerInput], torch.Tensor],
    ) -> None:
        """Runs the prepared items through the (shared) tower calls; caches the results."""
        for start in range(0, len(prepared), self.max_batch_size):
            chunk = prepared[start : start + self.max_batch_size]
            outputs = ticket.submit(chunk)
            for (key, tower_input), embeddings in zip(chunk, outputs, strict=True):
                found[key] = CachedEncoding(embeddings, dict(tower_input.metadata))
                self.cache.put(key, found[key])

    def _prepare(self, miss: _Miss) -> TowerInput:
        decoded = self.tower.decode(
            self.modality, miss.source, miss.index, miss.options, self.limits, miss.metadata
        )
        try:
            return self.tower.prepare(self.modality, decoded, miss.index, miss.processor_kwargs)
        except MediaError:
            raise
        except Exception as error:  # noqa: BLE001 - e.g. the HF processor refusing a kwarg's
            # value (StrictDataclassFieldValidationError): this item's fault, not the server's
            raise MediaError(
                self.modality, miss.index, f"the processor refused it: {error}"
            ) from error

    def _run_tower(self, batch: list[tuple[str, TowerInput]]) -> list[torch.Tensor]:
        """The batcher's worker: one tower call for the distinct items of concurrent callers."""
        position: dict[str, int] = {}
        inputs: list[TowerInput] = []
        for key, tower_input in batch:
            if key not in position:
                position[key] = len(inputs)
                inputs.append(tower_input)
        started = time.perf_counter()
        outputs = [self._own(output) for output in self.tower.forward(inputs)]
        if self.on_tower_call is not None:
            self.on_tower_call(len(inputs), time.perf_counter() - started)
        with self._lock:
            self._num_tower_calls += 1
            self._num_encoded += len(inputs)
        return [outputs[position[key]] for key, _ in batch]

    def _own(self, output: torch.Tensor) -> torch.Tensor:
        """A compact copy: tower outputs are views into the batch (and, for audio, its padding),
        which would keep the whole batch alive in the cache."""
        is_token_ids = output.ndim == 1 and not output.is_floating_point()
        if is_token_ids and getattr(self.tower, "emits_token_ids", False):
            return output.clone()  # [num_tokens] int64
        if output.ndim != 2 or output.shape[1] != self.tower.hidden_size:
            raise RuntimeError(f"{self.tower.architecture} tower returned {tuple(output.shape)}")
        return output.clone(memory_format=torch.contiguous_format)

    def _request_kwargs(self, index: int, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """A request's mm_processor_kwargs, checked against the tower's processors."""
        if not kwargs:
            return None
        try:
            return self.tower.check_request_kwargs(kwargs, self.limits)
        except InvalidRequest as error:
            raise MediaError(self.modality, index, str(error)) from None

    def _resolve_options(self, index: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """Checked options with defaults filled in (so equal requests hash equally)."""
        allowed = _VIDEO_OPTIONS if self.modality is Modality.VIDEO else ()
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            takes = ", ".join(allowed) if allowed else "no options"
            raise MediaError(
                self.modality, index, f"unknown option(s) {unknown}; {self.modality} takes {takes}"
            )
        if self.modality is not Modality.VIDEO:
            return {}
        return _video_options(index, options, self.tower.default_video_fps)

    # ---------------------------------------------------------------- precomputed embeddings

    def _passthrough(self, index: int, item: MediaItem) -> EncodeResult:
        """Checks "E" inputs and passes them through, cast to the tower's dtype."""
        embeddings = _check_embeddings(
            item.embeddings, index, self.modality, self.tower.hidden_size
        )
        metadata = self.tower.check_embeddings(self.modality, embeddings, item.metadata, index)
        embeddings = embeddings.to(self.tower.device, self.tower.dtype).contiguous()
        raw = embeddings.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        hashed = {
            "modality": str(self.modality),
            "source": "embeddings",
            "shape": list(embeddings.shape),
            "metadata": metadata,
        }
        key = content_hash(raw, hashed, self.model_id)
        return EncodeResult(embeddings, int(embeddings.shape[0]), key, False, metadata)


def _result(key: str, entry: CachedEncoding | None, cache_hit: bool) -> EncodeResult:
    assert entry is not None  # filled by the cache or by _compute
    num_tokens = int(entry.embeddings.shape[0])
    return EncodeResult(entry.embeddings, num_tokens, key, cache_hit, entry.metadata)


def _is_embeddings(item: MediaItem, index: int, modality: Modality) -> bool:
    given = [item.data is not None, item.embeddings is not None, item.decoded is not None]
    if sum(given) != 1:
        raise MediaError(modality, index, "needs exactly one of data, embeddings or decoded")
    return item.embeddings is not None


def _check_embeddings(
    embeddings: Any, index: int, modality: Modality, hidden_size: int
) -> torch.Tensor:
    if isinstance(embeddings, np.ndarray):
        embeddings = torch.from_numpy(embeddings)
    if not isinstance(embeddings, torch.Tensor):
        raise MediaError(modality, index, "precomputed embeddings must be a tensor")
    if embeddings.ndim != 2:
        raise MediaError(
            modality,
            index,
            f"precomputed embeddings must be 2-D [num_tokens, hidden], got shape {tuple(embeddings.shape)}",
        )
    if not embeddings.is_floating_point():
        raise MediaError(
            modality,
            index,
            f"precomputed embeddings must be floating point, got {embeddings.dtype}",
        )
    if embeddings.shape[1] != hidden_size:
        raise MediaError(
            modality,
            index,
            f"precomputed embeddings have width {embeddings.shape[1]}, but the language model's "
            f"hidden size is {hidden_size}",
        )
    if embeddings.shape[0] == 0:
        raise MediaError(modality, index, "precomputed embeddings have no tokens")
    if not bool(torch.isfinite(embeddings).all()):
        raise MediaError(modality, index, "precomputed embeddings contain NaN or infinity")
    return embeddings


def _video_options(index: int, options: Mapping[str, Any], default_fps: float) -> dict[str, Any]:
    fps, num_frames = options.get("fps"), options.get("num_frames")
    if fps is not None and num_frames is not None:
        raise MediaError(Modality.VIDEO, index, "pass either fps or num_frames, not both")
    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, Integral) or num_frames < 1:
            raise MediaError(
                Modality.VIDEO, index, f"num_frames must be an int >= 1, got {num_frames!r}"
            )
        return {"num_frames": int(num_frames)}
    if fps is None:
        return {"fps": float(default_fps)}
    if isinstance(fps, bool) or not isinstance(fps, Real) or not (math.isfinite(fps) and fps > 0):
        raise MediaError(Modality.VIDEO, index, f"fps must be a number > 0, got {fps!r}")
    return {"fps": float(fps)}


def _decoded_bytes(decoded: Any) -> bytes | None:
    """Canonical bytes of an already decoded object, for its content hash (None: unsupported)."""
    if isinstance(decoded, Image.Image):
        return f"pil:{decoded.mode}:{decoded.size}|".encode() + decoded.tobytes()
    if isinstance(decoded, np.ndarray | torch.Tensor):
        array = decoded.detach().cpu().numpy() if isinstance(decoded, torch.Tensor) else decoded
        array = np.ascontiguousarray(array)
        return f"array:{array.dtype}:{array.shape}|".encode() + array.tobytes()
    if isinstance(decoded, Mapping):
        return _decoded_bytes((decoded.get("array"), decoded.get("sampling_rate")))
    if isinstance(decoded, list | tuple):
        parts = [_decoded_bytes(part) for part in decoded]
        return None if None in parts else f"seq:{len(parts)}|".encode() + b"".join(parts)
    if isinstance(decoded, int | float | np.number):
        return f"scalar:{decoded!r}|".encode()
    return None
