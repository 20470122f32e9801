"""What `kumactl export` writes, and in which order (pure: documents in, documents out).

Order, so that `kumactl apply -f` of the output into an empty control plane works in one go
(Kuma's order): Meshes first, then their Secrets (the CA before anything that gets a certificate),
then the services' virtual IPs (before the Dataplanes that would make the target allocate its
own), then Dataplanes and policies in registry order, then GlobalSecrets, with the user-token
signing keys last: once those are applied, the target's own user tokens (the one kumactl may be
using) stop verifying, so nothing may come after them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from control_plane.policies.registry import POLICY_TYPES
from control_plane.resources.manager import spec_of
from control_plane.resources.registry import (
    DATAPLANE,
    DNS_VIPS,
    GLOBAL_SECRET,
    MESH,
    POLICIES,
    READ_ONLY_FIELDS,
    SECRET,
    TYPES,
    InvalidResource,
    ResourceType,
    parse_resource,
    to_document,
)
from control_plane.tokens.user import SIGNING_KEY_PREFIX as USER_SIGNING_KEY_PREFIX

PROFILE_ALL = "all"
PROFILE_FEDERATION = "federation"
PROFILE_FEDERATION_WITH_POLICIES = "federation-with-policies"
PROFILE_NO_DATAPLANES = "no-dataplanes"
PROFILES = (PROFILE_ALL, PROFILE_FEDERATION, PROFILE_FEDERATION_WITH_POLICIES, PROFILE_NO_DATAPLANES)
FORMAT_UNIVERSAL = "universal"
FORMAT_KUBERNETES = "kubernetes"
FORMATS = (FORMAT_UNIVERSAL, FORMAT_KUBERNETES)
OUTPUTS = ("yaml", "json")

ORIGIN_LABEL = "kuma.io/origin"  # a zone's stamp; not carried into a global (Kuma's federation)
ALL_POLICIES = "*"

_FIRST = (MESH, SECRET, DNS_VIPS)


def export_types(profile: str, include_admin: bool = True) -> list[ResourceType]:
    """The types a profile exports, in apply order (without admin-only types unless asked).

    `federation`: what a global needs from a zone being federated (Meshes and secrets; our
    policies are all targetRef policies, which Kuma's `federation` leaves out);
    `federation-with-policies`: plus the policies; `no-dataplanes`: everything but Dataplanes
    (agents register theirs again when they connect)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    others = [t for t in TYPES.values() if t not in _FIRST and t is not GLOBAL_SECRET]
    if profile in (PROFILE_FEDERATION, PROFILE_FEDERATION_WITH_POLICIES):
        keep_policies = profile == PROFILE_FEDERATION_WITH_POLICIES
        others = [t for t in others if keep_policies and t in POLICIES]
        first = [MESH, SECRET]
    else:
        first = list(_FIRST)
        if profile == PROFILE_NO_DATAPLANES:
            others = [t for t in others if t is not DATAPLANE]
    ordered = [*first, *others, GLOBAL_SECRET]
    return [t for t in ordered if include_admin or not t.admin_only]


def canonical(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document as the target will store it: validated by the same model, so fields come in
    one order (the export of a copy is the export of its source, byte for byte); as it is if it
    does not validate (then `kumactl apply` names what is wrong)."""
    try:
        model = parse_resource(dict(document))
    except InvalidResource:
        return dict(document)
    head = {k: document[k] for k in ("type", "mesh", "name") if k in document}
    return {**head, **spec_of(to_document(model))}


def clean(document: Mapping[str, Any], profile: str) -> dict[str, Any]:
    """A document as exported: canonical, without the server's timestamps (apply ignores them
    anyway), and for the federation profiles without the zone origin label."""
    out = {k: v for k, v in canonical(document).items() if k not in READ_ONLY_FIELDS}
    labels = out.get("labels")
    if profile in (PROFILE_FEDERATION, PROFILE_FEDERATION_WITH_POLICIES) and isinstance(labels, dict):
        out["labels"] = {k: v for k, v in labels.items() if k != ORIGIN_LABEL}
        if not out["labels"]:
            del out["labels"]
    return out


def keep_deleted_initial_policies_deleted(
    mesh: Mapping[str, Any], exported: Iterable[tuple[str, str, str]]
) -> dict[str, Any]:
    """The Mesh document to export, given the (type, mesh, name) of the exported policies.

    A new Mesh gets its initial policies; applying the export then updates them to the source's.
    An initial policy the source no longer has (deleted) would come back on the target: its kind
    is added to `skipCreatingInitialPolicies`, which only matters when the Mesh is created. (Kuma
    sets it to `*` on every exported Mesh; this changes the Mesh only when needed.)"""
    name = str(mesh.get("name"))
    skipped = list(mesh.get("skipCreatingInitialPolicies") or [])
    if ALL_POLICIES in skipped:
        return dict(mesh)
    present = set(exported)
    missing = [
        t.kind
        for t in POLICY_TYPES
        if t.initial is not None
        and t.kind not in skipped
        and (t.kind, name, t.initial.name(name)) not in present
    ]
    if not missing:
        return dict(mesh)
    return {**mesh, "skipCreatingInitialPolicies": [*skipped, *missing]}


def plan(
    listed: Mapping[str, Sequence[Mapping[str, Any]]], types: Sequence[ResourceType], profile: str
) -> list[dict[str, Any]]:
    """Every document to print, in apply order; `listed`: type name → the documents of that type
    (every mesh), as the API lists them."""
    meshes = {str(m.get("name")) for m in listed.get(MESH.name, [])}
    exports_policies = any(t in POLICIES for t in types)
    policy_keys = [
        (str(d.get("type")), str(d.get("mesh")), str(d.get("name")))
        for t in types
        if t in POLICIES
        for d in listed.get(t.name, [])
    ]
    documents: list[dict[str, Any]] = []
    last: list[dict[str, Any]] = []
    for rtype in types:
        for doc in listed.get(rtype.name, []):
            if rtype.mesh_scoped and doc.get("mesh") not in meshes:
                continue  # its Mesh went away while we listed
            out = clean(doc, profile)
            if rtype is MESH and exports_policies:
                out = keep_deleted_initial_policies_deleted(out, policy_keys)
            if rtype is GLOBAL_SECRET and str(doc.get("name", "")).startswith(USER_SIGNING_KEY_PREFIX):
                last.append(out)
            else:
                documents.append(out)
    return documents + last


def render(documents: Sequence[Mapping[str, Any]], output: str, header: str | None = None) -> str:
    """Multi-document text, each document after a `---` line; JSON documents are YAML too, so
    `kumactl apply -f` reads either."""
    parts = [f"# {header}\n"] if header else []
    for doc in documents:
        if output == "json":
            body = json.dumps(doc, indent=2) + "\n"
        else:
            body = yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False)
        parts.append("---\n" + body)
    return "".join(parts)
