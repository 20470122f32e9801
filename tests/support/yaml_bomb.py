"""A YAML "billion laughs": 9 strings, nested 7 deep by aliases (9**7 once expanded), under 400
bytes, shaped as a resource so every entry point that takes one can be given it."""

from __future__ import annotations

LAUGHS = "[" + ",".join(['"lol"'] * 9) + "]"
BOMB = (
    "type: MeshTrafficPermission\nmesh: default\nname: lol\n"
    f"a: &a {LAUGHS}\n"
    + "".join(f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True))
    + "spec: {targetRef: {kind: Mesh}, x: *g}\n"
)
