"""Field types policies share: Kuma's durations ("5s", "1h30m", "250ms") and percentages.

A duration stays the text the user wrote (so `kumactl get -o yaml` round-trips) and is checked
when the policy is applied for: a malformed one is refused naming the field.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from google.protobuf import duration_pb2
from pydantic import AfterValidator

from kuma_common.durations import DurationError, parse_duration


def _duration(text: str) -> str:
    try:
        seconds = parse_duration(text)
    except DurationError:
        raise ValueError(f"{text!r} is not a duration (e.g. 250ms, 5s, 1m30s, 1h)") from None
    if seconds < 0:
        raise ValueError(f"{text!r} must not be negative")
    return text


def _positive_duration(text: str) -> str:
    if parse_duration(_duration(text)) == 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return text


Duration = Annotated[str, AfterValidator(_duration)]
PositiveDuration = Annotated[str, AfterValidator(_positive_duration)]


@lru_cache(maxsize=4096)
def seconds(text: str) -> float:
    """The (already validated) duration in seconds; a policy's few texts are parsed once."""
    return parse_duration(text)


def set_duration(target: duration_pb2.Duration, text: str | None, default_s: float) -> None:
    """`target` = the duration `text` says, or `default_s` when the conf leaves it unset."""
    value = seconds(text) if text is not None else default_s
    target.FromNanoseconds(round(value * 1e9))
