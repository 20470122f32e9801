"""Reading resources for `kumactl apply`: files or stdin, `---` separated, `{{ var }}` substitution."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import yaml

from control_plane.kumactl.errors import KumactlError
from control_plane.resources.common import DEFAULT_MESH
from control_plane.resources.registry import MESH, TYPES, InvalidResource, ResourceType, parse_resource
from control_plane.yaml_errors import yaml_error_message
from kuma_common import safe_yaml, templating

STDIN = "-"
# A file may bundle many resources: a larger total than one API body, each document still bounded
# (depth, aliases, expanded size) by the shared limits.
FILE_LIMITS = safe_yaml.YamlLimits(max_bytes=16 * 1024 * 1024)


@dataclass(frozen=True)
class Document:
    body: dict[str, Any]
    rtype: ResourceType
    source: str  # file name or "stdin"
    line: int  # 1-based line where the document starts

    @property
    def name(self) -> str:
        return str(self.body["name"])

    @property
    def mesh(self) -> str:
        return str(self.body.get("mesh") or DEFAULT_MESH)

    def describe(self) -> str:
        where = f' in mesh "{self.mesh}"' if self.rtype.mesh_scoped else ""
        return f'{self.rtype.name} "{self.name}"{where}'


def parse_vars(pairs: tuple[str, ...]) -> dict[str, str]:
    try:
        return templating.parse_var_assignments(pairs, "--var")
    except templating.TemplateError as exc:
        raise KumactlError(str(exc)) from None


def read_source(source: str) -> tuple[str, str]:
    """(text, display name) of a file, or of stdin for `-`."""
    if source == STDIN:
        return sys.stdin.read(), "stdin"
    try:
        with open(source, encoding="utf-8") as handle:
            return handle.read(), source
    except OSError as exc:
        raise KumactlError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KumactlError(f"cannot read {source}: it is not UTF-8 text") from None


def substitute(text: str, variables: dict[str, str], source: str) -> str:
    try:
        return templating.substitute_vars(text, variables, source)
    except templating.TemplateError as exc:
        raise KumactlError(str(exc)) from None


def parse_documents(text: str, source: str) -> list[Document]:
    """Every non-empty YAML document of `text`, checked for type and name (the server checks the rest)."""
    documents: list[Document] = []
    try:
        for node, body in safe_yaml.iter_nodes(text, FILE_LIMITS):
            if body is not None:
                documents.append(_checked(body, source, node.start_mark.line + 1))
    except yaml.YAMLError as exc:
        raise KumactlError(f"{source} is not valid YAML: {yaml_error_message(exc)}") from None
    return documents


def _checked(body: Any, source: str, line: int) -> Document:
    where = f"{source}:{line}"
    if not isinstance(body, dict):
        raise KumactlError(f"{where}: a resource must be a mapping with type and name")
    kind = body.get("type")
    rtype = TYPES.get(kind) if isinstance(kind, str) else None
    if rtype is None:
        known = ", ".join(sorted(TYPES))
        raise KumactlError(f"{where}: unknown type {kind!r}; known types: {known}")
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise KumactlError(f"{where}: {rtype.name} has no name")
    if rtype.mesh_scoped and "mesh" in body and not isinstance(body["mesh"], str):
        raise KumactlError(f"{where}: mesh must be a string")
    return Document(body, rtype, source, line)


def check_all(documents: list[Document]) -> None:
    """Validate every document as the control plane will, before anything is sent: a file with one
    bad document changes nothing (the server still has the last word, e.g. on whether the mesh
    exists)."""
    errors = []
    for doc in documents:
        try:
            parse_resource(doc.body, doc.rtype)
        except InvalidResource as exc:
            causes = "".join(f"\n* {c['field']}: {c['message']}" for c in exc.causes)
            where = f"{doc.describe()} ({doc.source}:{doc.line})"
            errors.append(f"{where}: Could not process a resource: {exc.title}{causes}")
    if errors:
        raise KumactlError("\n".join(errors) + "\nnothing was applied")


def apply_order(documents: list[Document]) -> list[Document]:
    """Meshes before what lives in them, otherwise file order (a stable sort): other global types
    keep their place, e.g. `kumactl export` puts the user-token signing keys last on purpose."""
    return sorted(documents, key=lambda d: d.rtype is not MESH)
