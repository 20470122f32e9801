"""kumactl's one error type: printed as `Error: ...` on stderr with exit code 1, never a traceback."""

from __future__ import annotations

from typing import Any

import click
import httpx


class KumactlError(click.ClickException):
    exit_code = 1


def api_error(response: httpx.Response, what: str | None = None) -> KumactlError:
    """`<title>: <details>` and one `* field: message` line per cause, from Kuma's error body."""
    body = _json_or_none(response)
    if isinstance(body, dict) and ("title" in body or "details" in body):
        title = str(body.get("title") or response.reason_phrase)
        details = body.get("details")
        text = f"{title}: {details}" if details else title
        for cause in body.get("causes") or []:
            if isinstance(cause, dict):
                text += f"\n* {cause.get('field', '?')}: {cause.get('message', '')}"
    else:
        snippet = response.text.strip()[:200]
        text = f"{response.status_code} {response.reason_phrase}" + (f": {snippet}" if snippet else "")
    return KumactlError(f"{what}: {text}" if what else text)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
