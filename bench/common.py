"""What every benchmark section returns, and the statistics the report prints.

A section is a module with `measure(profile: Profile) -> list[Measure]`. A Measure keeps its raw
samples (and, when it has one, the baseline's samples taken in the same run), so the report can
give the median, the spread and the ratio to the baseline, and the JSON keeps everything.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ProfileName = Literal["smoke", "quick", "full"]


@dataclass(frozen=True)
class Profile:
    """How much to measure: `smoke` proves the code runs (CI), `quick` < 3 min, `full` < 20 min."""

    name: ProfileName
    repetitions: int
    proxy_counts: tuple[int, ...]  # simulated proxies for the control-plane scale section
    load_seconds: float  # length of each fixed-rate / saturation load run
    fixed_rate: int  # requests per second of the fixed-rate data-path run

    @property
    def smoke(self) -> bool:
        return self.name == "smoke"


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", repetitions=1, proxy_counts=(10,), load_seconds=1.0, fixed_rate=200),
    "quick": Profile("quick", repetitions=3, proxy_counts=(100, 1000), load_seconds=2.0, fixed_rate=1000),
    "full": Profile("full", repetitions=5, proxy_counts=(100, 500, 1000), load_seconds=10.0, fixed_rate=1000),
}


@dataclass(frozen=True)
class Target:
    """A goal from the issues: on the ratio to the baseline when `on_ratio`, else on the value."""

    limit: float
    on_ratio: bool = False
    at_most: bool = True

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit

    def describe(self, unit: str) -> str:
        sign = "≤" if self.at_most else "≥"
        return f"{sign} {self.limit:g}×" if self.on_ratio else f"{sign} {self.limit:g} {unit}"


@dataclass
class Measure:
    section: str
    name: str
    unit: str
    samples: list[float]
    baseline_name: str | None = None
    baseline_samples: list[float] = field(default_factory=list)
    target: Target | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_samples) if self.baseline_samples else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        return self.median / base if base else None

    @property
    def target_met(self) -> bool | None:
        if self.target is None:
            return None
        value = self.ratio if self.target.on_ratio else self.median
        return None if value is None else self.target.met(value)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.target.describe(self.unit) if self.target else None
        data.update(
            median=self.median,
            spread=spread(self.samples),
            baseline_median=self.baseline_median,
            ratio=self.ratio,
            target_met=self.target_met,
        )
        return data


def spread(samples: Sequence[float]) -> tuple[float, float]:
    """(min, max) of the samples: with 3–5 repetitions a percentile band would be the same."""
    return (min(samples), max(samples))
