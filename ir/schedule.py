"""The schedule as data: frozen, JSON-serialisable decisions with a hash for every cache key.

A decision changes the order of computation, never the result (TVM/Halide's rule). Primitives
check their preconditions and raise `ScheduleError`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ..spec import SCHEDULES  # noqa: F401  (re-exported: what `lower` accepts; one list, see there)


@dataclass(frozen=True)
class Decision:
    """One choice: `subject` (a value of the IR) computed by `algorithm`, and why."""

    subject: str
    algorithm: str          # "scan" | "conv" | "by-shape" (cost model evaluated at call time)
    reason: str
    costs: dict = field(default_factory=dict)   # algorithm -> cost formula (str, over dimension symbols)


@dataclass(frozen=True)
class Schedule:
    decisions: tuple = ()
    fusion_groups: tuple = ()   # ((kernel name, (member ops...)), ...)
    tunables: tuple = ()        # ((kernel name, {param: [values]}), ...)

    def with_decision(self, decision: Decision) -> "Schedule":
        return Schedule(self.decisions + (decision,), self.fusion_groups, self.tunables)

    def with_fusion(self, kernel: str, members: tuple) -> "Schedule":
        return Schedule(self.decisions, self.fusion_groups + ((kernel, tuple(members)),), self.tunables)

    def with_tunables(self, kernel: str, space: dict) -> "Schedule":
        return Schedule(self.decisions, self.fusion_groups, self.tunables + ((kernel, dict(space)),))

    def to_json(self) -> dict:
        return {"decisions": [asdict(d) for d in self.decisions],
                "fusion_groups": [[k, list(m)] for k, m in self.fusion_groups],
                "tunables": [[k, s] for k, s in self.tunables]}

    @classmethod
    def from_json(cls, data: dict) -> "Schedule":
        return cls(tuple(Decision(**d) for d in data["decisions"]),
                   tuple((k, tuple(m)) for k, m in data["fusion_groups"]),
                   tuple((k, s) for k, s in data["tunables"]))

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def dump(self) -> str:
        lines = ["schedule " + self.content_hash()]
        for d in self.decisions:
            lines.append(f"  {d.subject}: {d.algorithm}  ({d.reason})")
            for algorithm, cost in d.costs.items():
                lines.append(f"      cost[{algorithm}] = {cost}")
        for kernel, members in self.fusion_groups:
            lines.append(f"  fuse {kernel}: {', '.join(members)}")
        for kernel, space in self.tunables:
            lines.append(f"  tune {kernel}: " + ", ".join(f"{k} in {v}" for k, v in space.items()))
        return "\n".join(lines)
