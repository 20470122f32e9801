"""Property-based fuzzing of every parser that takes outside input: whatever arrives, only the
documented error type comes out (never a KeyError, RecursionError, UnicodeError, ... that would
become a 500, a traceback or a dead task).

Parsers and their documented errors:
- resources (API bodies, kumactl files): `parse_resource` → InvalidResource;
- dataplane tokens: `verify_token` → TokenRejected;
- CSRs: `parse_csr` → CsrInvalid;
- CNI stdin and CNI_ARGS: `parse_config`, `parse_cni_args` → CniError;
- bootstrap and certificate bodies: the DP server's own parsers → their HTTP refusal;
- DNS packets: `answers.handle` never raises; the records the agent polls: `parse_records` →
  RecordsError.

Bounded here (KUMA_FUZZ_EXAMPLES, default 150 per parser); `bench/fuzz.py` runs the same
properties longer.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import string
import tempfile
from typing import Any
from unittest import mock

import jwt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kuma_cni import plugin as cni_plugin
from kuma_cni.spec import CniError, parse_cni_args, parse_config

from control_plane.ca.csr import CsrInvalid, parse_csr
from control_plane.resources.dataplane import Dataplane
from control_plane.resources.registry import TYPES, InvalidResource, parse_resource
from control_plane.store.base import mesh_key
from control_plane.store.memory import MemoryStore
from control_plane.tokens import TokenRejected, TokenRequest, current_signing_key, sign_token, verify_token
from kuma_dp.dns.answers import handle
from kuma_dp.dns.records import RecordsError, parse_records

EXAMPLES = int(os.environ.get("KUMA_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a shared CI core is no place for per-example timing
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DEEP = "[" * 100_000  # the body that once crashed parsers with RecursionError
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
FIELD_NAMES = st.sampled_from(
    ["type", "mesh", "name", "spec", "networking", "address", "inbound", "outbound", "port", "tags",
     "targetRef", "kind", "to", "from", "rules", "default", "labels", "mtls", "backends",
     "transparentProxying"]
)  # fmt: skip
# Documents shaped like resources (known keys, any values) reach deeper than random dictionaries.
SHAPED = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(FIELD_NAMES, inner, max_size=6),
    max_leaves=30,
)


def bodies() -> st.SearchStrategy[bytes]:
    """What a client may send as a request body: garbage, text, JSON of any shape."""
    as_json = JSON.map(lambda doc: json.dumps(doc).encode())
    return st.binary(max_size=200) | st.text(max_size=200).map(str.encode) | as_json


# --- resources ------------------------------------------------------------------------------------


@FUZZ
@given(kind=st.sampled_from(sorted(TYPES)), doc=SHAPED)
def test_resources_refuse_with_invalid_resource_only(kind: str, doc: Any) -> None:
    if isinstance(doc, dict):
        doc = {"type": kind, "mesh": "default", "name": "x", **doc}
    with contextlib.suppress(InvalidResource):
        parse_resource(doc)


# --- tokens ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_store() -> MemoryStore:
    store = MemoryStore()
    store.upsert(mesh_key("default"), {})
    current_signing_key(store, "default")
    return store


WEB = Dataplane.model_validate(
    {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "networking": {
            "address": "127.0.0.1",
            "inbound": [{"port": 20000, "tags": {"kuma.io/service": "web"}}],
        },
    }
)


def _segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


TOKENS = (
    st.text(max_size=80)
    | st.builds(
        lambda h, c, s: f"{_segment(h)}.{_segment(c)}.{_segment(s)}", JSON, JSON, st.binary(max_size=40)
    )
    | st.builds(
        lambda kid, claims: jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": kid}),
        st.text(max_size=8),
        st.dictionaries(st.sampled_from(["Mesh", "Name", "Tags", "jti", "exp", "nbf", "iat"]), SCALARS),
    )
)


@FUZZ
@given(token=TOKENS)
@example(token=f"{_segment({'alg': 'RS256', 'kid': '²'})}.{_segment({'Mesh': 'default'})}.xx")
@example(token=f"{_segment({'alg': 'RS256', 'kid': 1})}.{_segment({'Mesh': ['default']})}.xx")
def test_tokens_refuse_with_token_rejected_only(token_store: MemoryStore, token: str) -> None:
    with pytest.raises(TokenRejected):
        verify_token(token_store, token, WEB)


@FUZZ
@given(name=st.text(max_size=10), tags=st.dictionaries(st.text(max_size=6), st.lists(st.text(max_size=6))))
def test_signed_tokens_with_odd_claims_refuse_with_token_rejected_only(
    token_store: MemoryStore, name: str, tags: dict[str, list[str]]
) -> None:
    signing = current_signing_key(token_store, "default")
    token = sign_token(TokenRequest(mesh="default", name=name, tags=tags), signing.private_key, signing.kid)
    with contextlib.suppress(TokenRejected):
        verify_token(token_store, token, WEB)


# --- CSRs -----------------------------------------------------------------------------------------

PEM_HEAD, PEM_TAIL = "-----BEGIN CERTIFICATE REQUEST-----\n", "\n-----END CERTIFICATE REQUEST-----\n"


@FUZZ
@given(
    pem=st.text(max_size=200)
    | st.binary(max_size=300).map(lambda der: PEM_HEAD + base64.encodebytes(der).decode() + PEM_TAIL)
)
@example(pem="\udcff")  # a lone surrogate: not encodable
def test_csrs_refuse_with_csr_invalid_only(pem: str) -> None:
    with pytest.raises(CsrInvalid):
        parse_csr(pem)


# --- CNI ------------------------------------------------------------------------------------------


@FUZZ
@given(data=bodies())
@example(data=DEEP.encode())
def test_cni_config_refuses_with_cni_error_only(data: bytes) -> None:
    with contextlib.suppress(CniError):
        parse_config(data)


@FUZZ
@given(data=bodies(), command=st.sampled_from(["VERSION", "ADD", "DEL", "CHECK", "", "GC"]))
@example(data=DEEP.encode(), command="ADD")
def test_the_cni_plugin_answers_any_stdin_with_a_cni_error(data: bytes, command: str) -> None:
    """The plugin as the runtime runs it (with no namespace to enter): an answer on stdout, never
    a traceback; a failure is CNI's error document with its exit code 1."""
    if data.startswith(b"{") and command != "VERSION":
        return  # a valid config would reach the (real) namespace code: the netns tests cover it
    environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c", "CNI_NETNS": "/nonexistent",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}  # fmt: skip
    out = io.StringIO()
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(cni_plugin, "DEFAULT_LOG_FILE", f"{tmp}/cni.log"),
    ):
        code = cni_plugin.run(environ, data.replace(b"log_file", b"x"), out)  # never the host's log
    answer = json.loads(out.getvalue())
    assert code in (0, 1) and isinstance(answer, dict)
    assert code == 0 or {"cniVersion", "code", "msg"} <= answer.keys(), answer


@FUZZ
@given(text=st.text(alphabet=string.printable + "=;", max_size=80))
def test_cni_args_refuse_with_cni_error_only(text: str) -> None:
    with contextlib.suppress(CniError):
        parse_cni_args(text)


# --- DNS ------------------------------------------------------------------------------------------


@FUZZ
@given(wire=st.binary(max_size=600), udp=st.booleans(), ipv6=st.booleans())
def test_dns_messages_never_raise(wire: bytes, udp: bool, ipv6: bool) -> None:
    records = parse_records(b'{"domain": "mesh", "records": [{"name": "web.mesh", "ips": ["240.0.0.1"]}]}')
    handle(wire, records, ipv6, 30, udp)
    handle(wire, None, ipv6, 30, udp)


@FUZZ
@given(body=bodies())
@example(body=DEEP.encode())
def test_dns_records_refuse_with_records_error_only(body: bytes) -> None:
    with contextlib.suppress(RecordsError):
        parse_records(body)
