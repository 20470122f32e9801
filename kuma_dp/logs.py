"""Logging to stderr in kuma-dp's tab-separated style: time, level, component, message."""

from __future__ import annotations

import logging
import re
import sys
import time

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}
# Envoy's default log format: "[2026-01-01 10:00:00.000][12][warning][config] [file:line] text".
_ENVOY_LEVEL = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(trace|debug|info|warning|error|critical)\]")
_ENVOY_TO_PYTHON = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Formatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        level = record.levelname.replace("WARNING", "WARN")
        return f"{stamp}.{int(record.msecs):03d}Z\t{level}\t{record.name}\t{record.getMessage()}"


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # httpx logs every request at INFO (readiness probes would flood the log).
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(_LEVELS[level], logging.WARNING))


def envoy_line_level(line: str) -> int:
    """The Python level of one Envoy log line (INFO when it is not in Envoy's default format)."""
    match = _ENVOY_LEVEL.match(line)
    return _ENVOY_TO_PYTHON[match.group(1)] if match else logging.INFO
