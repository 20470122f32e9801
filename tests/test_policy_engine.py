"""The policy engine itself: merge-patch, targetRef rules, Kuma's initial policies of a new Mesh
(created and skipped), and the rules inspector (`GET .../_rules`, `kumactl inspect dataplane`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.policies.core.merge import merge_confs
from control_plane.policies.docs import BEGIN, END, policies_table
from control_plane.policies.registry import POLICY_TYPES
from control_plane.resources.registry import InvalidResource, parse_resource
from tests.support.kumactl_api import config_file, kumactl, server  # noqa: F401 - fixtures


# --- merge-patch (RFC 7396) --------------------------------------------------------------------------
def test_merge_patch_objects_merge_lists_and_scalars_are_replaced_null_removes() -> None:
    low = {"a": 1, "http": {"requestTimeout": "1s", "x": [1, 2]}, "gone": True}
    high = {"http": {"x": [3]}, "gone": None, "b": {"c": 2}}
    assert merge_confs([low, high]) == {"a": 1, "http": {"requestTimeout": "1s", "x": [3]}, "b": {"c": 2}}
    assert low == {"a": 1, "http": {"requestTimeout": "1s", "x": [1, 2]}, "gone": True}  # untouched


def test_append_lists_are_concatenated_across_confs() -> None:
    confs = [{"appendModifications": [1]}, {"appendModifications": [2, 3]}, {"other": [4]}, {"other": [5]}]
    assert merge_confs(confs) == {"appendModifications": [1, 2, 3], "other": [5]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=8,
)
objects = st.dictionaries(st.sampled_from("abcd"), json_values, max_size=4)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into a failure
@given(objects, objects)
def test_merging_a_conf_onto_itself_changes_nothing_and_the_last_word_wins(a: dict, b: dict) -> None:
    once = merge_confs([a, b])
    assert merge_confs([once, b]) == once  # idempotent
    for key, value in b.items():  # every top-level scalar/list of the later conf is what counts
        if value is None:
            assert key not in once
        elif not isinstance(value, dict):
            assert once[key] == value


# --- targetRef ---------------------------------------------------------------------------------------
def timeout(spec: dict) -> dict:
    return {"type": "MeshTimeout", "mesh": "default", "name": "t", "spec": spec}


DEFAULT = {"connectionTimeout": "1s"}


@pytest.mark.parametrize(
    ("target", "field", "message"),
    [
        ({"kind": "Dataplane"}, "spec.targetRef.name", "kind Dataplane needs a name or labels"),
        ({"kind": "Dataplane", "name": "a", "labels": {"x": "y"}}, "spec.targetRef.labels", "either labels"),
        ({"kind": "MeshSubset", "name": "a"}, "spec.targetRef.name", "must not be set with kind MeshSubset"),
        ({"kind": "MeshService", "name": "a", "tags": {"v": "1"}}, "spec.targetRef.tags", "must not be set"),
        (
            {"kind": "Mesh", "sectionName": "http"},
            "spec.targetRef.sectionName",
            "must not be set with kind Mesh",
        ),
        ({"kind": "MeshService", "labels": {"a": "b"}}, "spec.targetRef.labels", "must not be set"),
        ({"kind": "Nope"}, "spec.targetRef.kind", "unknown kind 'Nope'"),
    ],
)
def test_targetref_fields_must_fit_the_kind(target: dict, field: str, message: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(
            timeout({"targetRef": target, "to": [{"targetRef": {"kind": "Mesh"}, "default": DEFAULT}]})
        )
    assert any(c["field"] == field and message in c["message"] for c in caught.value.causes), (
        caught.value.causes
    )


def test_section_name_selects_an_inbound_so_it_cannot_shape_outbounds() -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_resource(
            timeout(
                {
                    "targetRef": {"kind": "Dataplane", "name": "web-1", "sectionName": "http"},
                    "to": [{"targetRef": {"kind": "Mesh"}, "default": DEFAULT}],
                }
            )
        )
    assert caught.value.causes == [
        {"field": "spec.targetRef.sectionName", "message": "selects an inbound; it cannot be used with 'to'"}
    ]


def test_a_dataplane_with_labels_is_accepted_and_round_trips() -> None:
    doc = {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "labels": {"app": "web", "kuma.io/zone": "east"},
        "networking": {
            "address": "10.0.0.1",
            "inbound": [{"port": 80, "name": "http", "tags": {"kuma.io/service": "web"}}],
        },
    }
    model = parse_resource(doc)
    assert (
        model.labels == {"app": "web", "kuma.io/zone": "east"} and model.networking.inbound[0].name == "http"
    )


# --- initial policies of a new Mesh ------------------------------------------------------------------
INITIAL = sorted(t.initial.name("demo") for t in POLICY_TYPES if t.initial is not None)


def names_in(config_file: Path, plural: str, mesh: str) -> list[str]:  # noqa: F811
    listed = kumactl(config_file, "get", plural, "--mesh", mesh, "-o", "json").output
    return [item["name"] for item in json.loads(listed)["items"]]


def initial_names(config_file: Path, mesh: str) -> list[str]:  # noqa: F811
    return sorted(
        name
        for t in POLICY_TYPES
        if t.initial is not None
        for name in names_in(config_file, t.plural, mesh)
        if name == t.initial.name(mesh)
    )


def test_a_new_mesh_gets_kumas_initial_policies(config_file: Path) -> None:  # noqa: F811
    assert "mesh-timeout-all-demo" in INITIAL
    assert kumactl(config_file, "apply", "-f", "-", stdin="type: Mesh\nname: demo\n").exit_code == 0
    assert initial_names(config_file, "demo") == INITIAL
    # as Kuma's: mesh-timeout-all has the outbound defaults (15 s per request)
    doc = yaml.safe_load(
        kumactl(config_file, "get", "meshtimeout", "mesh-timeout-all-demo", "-m", "demo", "-o", "yaml").output
    )
    assert doc["spec"]["to"][0]["default"]["http"]["requestTimeout"] == "15s"
    # applying the Mesh again (an update) creates nothing more, and a deleted initial policy stays deleted
    assert kumactl(config_file, "delete", "meshtimeout", "mesh-timeout-all-demo", "-m", "demo").exit_code == 0
    assert kumactl(config_file, "apply", "-f", "-", stdin="type: Mesh\nname: demo\n").exit_code == 0
    assert "mesh-timeout-all-demo" not in initial_names(config_file, "demo")


def test_skip_creating_initial_policies_all_or_by_kind(config_file: Path) -> None:  # noqa: F811
    none = "type: Mesh\nname: bare\nskipCreatingInitialPolicies: ['*']\n"
    assert kumactl(config_file, "apply", "-f", "-", stdin=none).exit_code == 0
    assert initial_names(config_file, "bare") == []
    some = "type: Mesh\nname: some\nskipCreatingInitialPolicies: [MeshTimeout]\n"
    assert kumactl(config_file, "apply", "-f", "-", stdin=some).exit_code == 0
    assert initial_names(config_file, "some") == [
        n.replace("-demo", "-some") for n in INITIAL if "timeout" not in n
    ]
    typo = "type: Mesh\nname: typo\nskipCreatingInitialPolicies: [MeshTimeouts]\n"
    result = kumactl(config_file, "apply", "-f", "-", stdin=typo)
    assert (
        result.exit_code == 1
        and "skipCreatingInitialPolicies" in result.output
        and "'MeshTimeouts'" in result.output
    )
    assert "typo" not in [
        m["name"] for m in json.loads(kumactl(config_file, "get", "meshes", "-o", "json").output)["items"]
    ]


# --- the rules inspector -----------------------------------------------------------------------------
MESH_WITH_POLICIES = """\
type: Dataplane
mesh: default
name: web-1
labels: {app: web}
networking:
  address: 10.0.0.1
  inbound:
  - {port: 8080, name: http, tags: {kuma.io/service: web, kuma.io/protocol: http}}
  outbound:
  - {port: 30001, tags: {kuma.io/service: backend}}
---
type: MeshTimeout
mesh: default
name: backend-timeouts
spec:
  targetRef: {kind: Dataplane, labels: {app: web}}
  to:
  - targetRef: {kind: MeshService, name: backend}
    default: {http: {requestTimeout: 3s}}
---
type: MeshTrafficPermission
mesh: default
name: web-callers
spec:
  targetRef: {kind: MeshService, name: web}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
  - targetRef: {kind: MeshService, name: legacy}
    default: {action: Deny}
"""


def test_inspect_rules_shows_each_inbound_and_outbound_and_who_made_it(config_file: Path) -> None:  # noqa: F811
    assert kumactl(config_file, "apply", "-f", "-", stdin=MESH_WITH_POLICIES).exit_code == 0
    body = json.loads(
        kumactl(config_file, "inspect", "dataplane", "web-1", "--type=rules", "-o", "json").output
    )
    assert body["resource"] == {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "labels": {"app": "web"},
    }
    by_type = {rule["type"]: rule for rule in body["rules"]}
    backend, others = by_type["MeshTimeout"]["toRules"]
    assert backend["matchers"] == [{"key": "kuma.io/service", "value": "backend", "not": False}]
    assert backend["conf"]["http"]["requestTimeout"] == "3s"  # merged onto the initial policy's
    assert backend["conf"]["connectionTimeout"] == "5s"
    assert [o["name"] for o in backend["origin"]] == ["mesh-timeout-all-default", "backend-timeouts"]
    assert others["matchers"] == [] and others["conf"]["http"]["requestTimeout"] == "15s"
    (inbound,) = by_type["MeshTimeout"]["inboundRules"]
    assert inbound["inbound"] == {
        "port": 8080,
        "name": "http",
        "tags": {"kuma.io/service": "web", "kuma.io/protocol": "http"},
    }
    assert inbound["rules"][0]["conf"]["connectionTimeout"] == "10s"
    (callers,) = by_type["MeshTrafficPermission"]["fromRules"]
    legacy, everyone = callers["rules"]
    assert (legacy["matchers"][0]["value"], legacy["conf"], everyone["matchers"], everyone["conf"]) == (
        "legacy",
        {"action": "Deny"},
        [],
        {"action": "Allow"},
    )

    table = kumactl(config_file, "inspect", "dataplane", "web-1").output.splitlines()
    assert table[0].split() == ["TYPE", "WHERE", "FOR", "CONF", "ORIGIN"]
    row = next(line for line in table if "kuma.io/service=backend" in line)
    assert "http.requestTimeout=3s" in row and row.rstrip().endswith(
        "mesh-timeout-all-default, backend-timeouts"
    )
    assert any("inbound 8080 (http)" in line and "action=Deny" in line and "legacy" in line for line in table)


def test_inspect_of_an_unknown_dataplane_or_mesh_is_a_clear_404(config_file: Path) -> None:  # noqa: F811
    result = kumactl(config_file, "inspect", "dataplane", "nobody")
    assert result.exit_code == 1 and 'Dataplane "nobody" in mesh "default" not found' in result.output
    result = kumactl(config_file, "inspect", "dataplane", "web-1", "-m", "nowhere")
    assert result.exit_code == 1 and 'mesh "nowhere" not found' in result.output


def test_docs_table_of_policies_is_the_registry() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "policies.md").read_text()
    begin, end = docs.index(BEGIN), docs.index(END) + len(END)
    assert docs[begin:end] == policies_table(), (
        "run `python -m control_plane.policies.docs` into docs/policies.md"
    )


def test_a_merge_no_single_entry_could_say_skips_that_kind_only(caplog: pytest.LogCaptureFixture) -> None:
    """Two valid entries can merge into a conf the policy's model refuses: that kind is skipped for
    that outbound, with a warning naming the policies; the other kinds still apply."""
    from control_plane.policies.core.parts import OutboundParts
    from control_plane.policies.core.rules import MergedConf, Origin, OutboundPolicy, OutboundRules
    from control_plane.xds.generate.clusters import outbound_cluster
    from control_plane.xds.generate.listeners import outbound_chain_parts
    from control_plane.xds.generate.policies import apply_outbound_policies

    broken = MergedConf(
        {"outlierDetection": {"interval": "5s"}}, (Origin("MeshCircuitBreaker", "default", "a"),)
    )
    timeout = MergedConf({"connectionTimeout": "2s"}, (Origin("MeshTimeout", "default", "t"),))
    rules = OutboundRules(
        (("x", "y"),),
        {"MeshCircuitBreaker": OutboundPolicy(broken, {}), "MeshTimeout": OutboundPolicy(timeout, {})},
    )
    parts = OutboundParts(
        "backend", "http", outbound_chain_parts("l", "backend", "http"), outbound_cluster("backend", "http")
    )
    apply_outbound_policies(rules, parts)
    assert not parts.cluster.HasField("outlier_detection")
    assert parts.cluster.connect_timeout.seconds == 2
    assert "MeshCircuitBreaker for calls to backend not applied: the merge of policies a" in caplog.text


GOOD_TIMEOUT = """\
type: MeshTimeout
mesh: default
name: good
spec:
  to:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 1s}
"""


def test_kumactl_apply_of_a_file_with_one_bad_document_applies_nothing(config_file: Path) -> None:  # noqa: F811
    bad = GOOD_TIMEOUT.replace("name: good", "name: bad").replace("1s", "soon")
    result = kumactl(config_file, "apply", "-f", "-", stdin=GOOD_TIMEOUT + "---\n" + bad)
    assert result.exit_code == 1 and "(stdin:9)" in result.output and "nothing was applied" in result.output
    assert "spec.to[0].default.connectionTimeout: 'soon' is not a duration" in result.output
    assert {"good", "bad"}.isdisjoint(names_in(config_file, "meshtimeouts", "default"))


def _testdata_policies() -> list[dict]:
    """Every policy document of every policy's testdata (a sample of each kind, as users write them)."""
    root = Path(__file__).parent.parent / "control_plane" / "policies"
    policy_kinds = {t.kind for t in POLICY_TYPES}
    return [
        doc
        for path in sorted(root.glob("*/testdata/*.input.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("type") in policy_kinds
    ]


def test_every_kind_lists_with_kumas_columns_and_round_trips_through_yaml_and_json(config_file: Path) -> None:  # noqa: F811
    samples = {}
    for doc in _testdata_policies():
        samples.setdefault(doc["type"], {**doc, "mesh": "default", "name": f"sample-{doc['type'].lower()}"})
    assert set(samples) == {t.kind for t in POLICY_TYPES}
    for kind, doc in samples.items():
        plural = next(t.plural for t in POLICY_TYPES if t.kind == kind)
        assert kumactl(config_file, "apply", "-f", "-", stdin=yaml.safe_dump(doc)).exit_code == 0
        table = kumactl(config_file, "get", plural).output.splitlines()
        assert table[0].split() == ["MESH", "NAME", "AGE"]
        assert any(line.split()[:2] == ["default", doc["name"]] for line in table[1:])
        for fmt, load in (("yaml", yaml.safe_load), ("json", json.loads)):
            shown = kumactl(config_file, "get", kind.lower(), doc["name"], "-o", fmt).output
            again = kumactl(config_file, "apply", "-f", "-", stdin=shown)
            assert again.output.startswith("updated"), again.output
            # what was applied, with Kuma's default top-level targetRef written out
            assert load(shown)["spec"] == {"targetRef": {"kind": "Mesh"}, **doc["spec"]}
            shown_again = load(kumactl(config_file, "get", kind.lower(), doc["name"], "-o", fmt).output)
            assert shown_again["spec"] == load(shown)["spec"]  # get → apply → get is stable
