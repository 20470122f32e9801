"""The REST API as kumactl sees it: paths from the resource registry, errors as KumactlError."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from control_plane.kumactl.errors import KumactlError, api_error
from control_plane.resources.registry import MESH, ResourceType

TIMEOUT_S = 30.0


def collection_path(rtype: ResourceType, mesh: str | None) -> str:
    """Where the resources of a type are listed; `mesh=None` lists a scoped type across meshes."""
    if rtype.mesh_scoped and mesh is not None:
        return f"/{MESH.plural}/{mesh}/{rtype.plural}"
    return f"/{rtype.plural}"


def resource_path(rtype: ResourceType, name: str, mesh: str) -> str:
    return f"{collection_path(rtype, mesh)}/{name}"


class ApiClient:
    def __init__(
        self,
        base_url: str,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
        verify: str | bool | ssl.SSLContext = True,
    ) -> None:
        """`token`: a user token, sent as `Authorization: Bearer` (Kuma's `tokens` auth type);
        `verify`: a CA file for an https:// control plane, True for the system's, False to skip."""
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if isinstance(verify, str):
            try:
                verify = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise KumactlError(f"the CA certificate {verify} cannot be used: {exc}") from None
        self._http = httpx.Client(
            base_url=self.base_url, timeout=TIMEOUT_S, transport=transport, headers=headers, verify=verify
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.InvalidURL as exc:
            raise KumactlError(f"the control plane address {self.base_url!r} is not usable: {exc}") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise KumactlError(
                f"could not connect to the control plane at {self.base_url}: {reason}"
            ) from None

    def get(self, path: str, params: dict[str, Any] | None = None, what: str | None = None) -> Any:
        response = self._send("GET", path, params=params)
        if response.status_code != 200:
            raise api_error(response, what)
        return _json(response, self.base_url)

    def put(self, path: str, document: dict[str, Any], what: str | None = None) -> bool:
        """Create or update; True if created."""
        response = self._send("PUT", path, json=document)
        if response.status_code not in (200, 201):
            raise api_error(response, what)
        return response.status_code == 201

    def post(self, path: str, body: dict[str, Any] | None = None, what: str | None = None) -> httpx.Response:
        """An action (not a resource write); the response, whatever 2xx it is."""
        response = self._send("POST", path, json=body or {})
        if not response.is_success:
            raise api_error(response, what)
        return response

    def delete(self, path: str, what: str | None = None) -> None:
        response = self._send("DELETE", path)
        if response.status_code != 200:
            raise api_error(response, what)

    def list_all(self, path: str, page_size: int = 1000) -> dict[str, Any]:
        """Every item of a collection, following `next` pages; Kuma's `{items, total, next}`."""
        body = self.get(path, params={"size": page_size})
        items = list(body.get("items") or [])
        while body.get("next"):
            body = self.get(body["next"])
            items.extend(body.get("items") or [])
        return {"total": body.get("total", len(items)), "items": items, "next": None}


def _json(response: httpx.Response, base_url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise KumactlError(
            f"the control plane at {base_url} answered with something that is not JSON"
        ) from None
