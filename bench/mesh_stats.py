"""The timings bench/mesh.py collects, shared by its client and its in-process baseline
(bench.mesh_engine, a child process that hands them back as JSON)."""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field


@dataclass
class RunStats:
    """Timings of one run: per request, its TTFT and mean inter-token latency (seconds)."""

    num_tokens: int = 0
    num_requests: int = 0
    wall_s: float = 0.0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    num_messages: int = 0
    batch1_ttft_s: list[float] = field(default_factory=list)
    # mesh: each service's own batch-1 TTFT, (sum seconds, count) from its /metrics
    batch1_service_ttft: dict[str, tuple[float, float]] = field(default_factory=dict)
    batch1_has_media: bool = False  # then the LM service's TTFT starts after the encoder's
    cpu_s: dict[str, float] = field(default_factory=dict)  # process or thread -> CPU seconds
    idle_cpu_per_s: dict[str, float] = field(default_factory=dict)  # the same, idle, per second
    # service -> its context switches: [voluntary (woken), involuntary (preempted)]
    switches: dict[str, list[int]] = field(default_factory=dict)
    kv_memory: str = ""  # the engine's --kv-cache-memory line (bench.memory_bound)

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.wall_s

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunStats:
        return cls(**json.loads(text))

    def record(self, ttft_or_total: float, decode_s: float, num_tokens: int) -> None:
        """One finished request: from send to its last token, of which `decode_s` after the
        first; `num_tokens` streamed."""
        self.ttft_s.append(ttft_or_total - decode_s)
        self.itl_s.append(decode_s / max(num_tokens - 1, 1))


def merged(runs: list[RunStats]) -> RunStats:
    """Rounds pooled: samples concatenated, counts, wall time, CPU seconds and context
    switches summed (idle rates averaged), so per-token figures weigh every round by its
    tokens."""
    out = RunStats(kv_memory=runs[0].kv_memory)
    for run in runs:
        out.num_tokens += run.num_tokens
        out.num_requests += run.num_requests
        out.wall_s += run.wall_s
        out.num_messages += run.num_messages
        out.ttft_s += run.ttft_s
        out.itl_s += run.itl_s
        out.batch1_ttft_s += run.batch1_ttft_s
        out.batch1_has_media = out.batch1_has_media or run.batch1_has_media
        for name, (seconds, count) in run.batch1_service_ttft.items():
            total = out.batch1_service_ttft.get(name, (0.0, 0.0))
            out.batch1_service_ttft[name] = (total[0] + seconds, total[1] + count)
        for name, seconds in run.cpu_s.items():
            out.cpu_s[name] = out.cpu_s.get(name, 0.0) + seconds
        for name, (woken, preempted) in run.switches.items():
            total = out.switches.get(name, [0, 0])
            out.switches[name] = [total[0] + woken, total[1] + preempted]
    for name in runs[0].idle_cpu_per_s:
        out.idle_cpu_per_s[name] = statistics.fmean(r.idle_cpu_per_s[name] for r in runs)
    return out


def engine_cpu_share(mesh: RunStats) -> float:
    """The LM's engine loop's part of all the CPU the mesh run took (every service and the
    bench client; thread groups, named with a leading space, are parts of their process).
    NOTE: not the in-process CPU over the mesh's: torch's workers spin while they wait, and
    they spun more alone (7507 us per token in process against 7203 in the mesh, one run)."""
    total = sum(s for name, s in mesh.cpu_s.items() if not name.startswith(" "))
    return mesh.cpu_s["  lm engine loop"] / total


def quantile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3
