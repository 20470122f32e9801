"""Field types policies share: Kuma's durations ("5s", "1h30m", "250ms") and its int-or-string
decimals (2, 1.5 or "12.5": percentages, factors, biases).

Both stay what the user wrote (so `kumactl get -o yaml` round-trips) and are checked when the
policy is applied for: a malformed one is refused naming the field. Booleans are not numbers.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Annotated

from google.protobuf import duration_pb2
from pydantic import AfterValidator, Field, StrictFloat, StrictInt, StrictStr

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


def decimal_of(value: int | float | str) -> Decimal:
    """A Kuma int-or-string number ("1.9", 2) as a Decimal; ValueError when it is not one."""
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f'{value!r} is not a number (e.g. 2, 1.5 or "1.5")') from None
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _percentage(value: int | float | str) -> int | float | str:
    if not 0 <= decimal_of(value) <= 100:
        raise ValueError(f"{value!r} must be a percentage between 0 and 100")
    return value


def _non_negative(value: int | float | str) -> int | float | str:
    if decimal_of(value) < 0:
        raise ValueError(f"{value!r} must be 0 or more")
    return value


def _positive(value: int | float | str) -> int | float | str:
    if decimal_of(value) <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    return value


# Kuma's IntOrString decimal: 50, 1.5, or text ("12.5").
Number = Annotated[StrictInt | StrictFloat | StrictStr, Field(union_mode="left_to_right")]
Percentage = Annotated[Number, AfterValidator(_percentage)]
NonNegativeDecimal = Annotated[Number, AfterValidator(_non_negative)]
PositiveDecimal = Annotated[Number, AfterValidator(_positive)]
