"""The benchmark's pure parts: load-generator output parsing (on real hey/wrk output), statistics,
targets and the report (text, Markdown, the README block)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import Measure, Target
from bench.dns import DnsperfError, parse_dnsperf
from bench.load import LoadError, parse_hey, parse_wrk
from bench.report import README_BEGIN, README_END, markdown_table, replace_readme_block, text_table

GOLDEN = Path(__file__).parent / "golden" / "bench"
HOST = {"date": "2026-11-26", "cores": 2, "cpu": "x", "memory_gib": 24, "kernel": "6", "python": "3"}


def test_hey_output_gives_rate_percentiles_and_count() -> None:
    result = parse_hey((GOLDEN / "hey.txt").read_text())
    assert result.p50_ms == pytest.approx(7.3) and result.requests == 40
    assert result.p99_ms == pytest.approx(9.1)  # too few requests for a 99% line: the slowest one
    assert result.requests_per_s == pytest.approx(39.56)


def test_hey_errors_are_not_figures() -> None:
    with pytest.raises(LoadError, match="connection refused"):
        parse_hey((GOLDEN / "hey-errors.txt").read_text())


def test_hey_non_2xx_is_an_error() -> None:
    text = (GOLDEN / "hey.txt").read_text().replace("[200]", "[503]")
    with pytest.raises(LoadError, match="503"):
        parse_hey(text)


def test_wrk_output_in_milliseconds() -> None:
    result = parse_wrk((GOLDEN / "wrk.txt").read_text())
    assert 0 < result.p50_ms <= result.p99_ms < 1000
    assert result.requests > 0 and result.requests_per_s > 0
    assert parse_wrk("50% 250.00us\n99% 1.50s\n7 requests in 1s\nRequests/sec: 7.0").p99_ms == 1500


def test_wrk_socket_errors_are_not_figures() -> None:
    with pytest.raises(LoadError):
        parse_wrk((GOLDEN / "wrk.txt").read_text() + "  Socket errors: connect 3, read 0\n")


def test_ratio_and_targets() -> None:
    slow = Measure("s", "ours", "ms", [3, 1, 2], "base", [1, 1, 1], Target(1.5, on_ratio=True))
    assert slow.median == 2 and slow.ratio == 2 and slow.target_met is False
    rate = Measure("s", "rate", "/s", [600], target=Target(500, at_most=False))
    assert rate.target_met is True and rate.ratio is None
    assert rate.to_json()["target"] == "≥ 500 /s"


def test_tables_show_median_spread_ratio_and_verdict() -> None:
    measures = [Measure("s", "ours", "ms", [3, 1, 2], "base", [1, 1, 1], Target(1.5, on_ratio=True))]
    text = text_table(measures)
    assert "2.00 ms (1.00–3.00)" in text and "2.00×" in text and "≤ 1.5× ✗" in text
    markdown = markdown_table(measures, HOST, "full")
    assert "| s | ours | 2.00 ms (1.00–3.00) | base: 1.00 ms | 2.00× | ≤ 1.5× ✗ |" in markdown
    assert "2 cores" in markdown


def test_readme_block_is_replaced_in_place() -> None:
    readme = f"intro\n{README_BEGIN}\nold\n{README_END}\nrest\n"
    assert replace_readme_block(readme, "new") == f"intro\n{README_BEGIN}\nnew\n{README_END}\nrest\n"
    with pytest.raises(ValueError):
        replace_readme_block("no markers", "new")


def test_dnsperf_output_gives_rate_and_percentiles_of_the_per_query_latencies() -> None:
    result = parse_dnsperf((GOLDEN / "dnsperf-v.txt").read_text())
    assert result.queries_per_s == pytest.approx(9.99777) and (result.completed, result.lost) == (10, 0)
    assert result.p50_ms == pytest.approx(0.062) and result.p99_ms == pytest.approx(2.628)


def test_dnsperf_failed_lookups_are_not_figures() -> None:
    with pytest.raises(DnsperfError, match="SERVFAIL 420"):
        parse_dnsperf((GOLDEN / "dnsperf-servfail.txt").read_text())
    with pytest.raises(DnsperfError, match="no statistics"):
        parse_dnsperf("Error: socket: Address family not supported\n")
