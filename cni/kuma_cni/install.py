"""`kuma-cni-install`: put kuma-cni on a node and chain it into the node's CNI configuration.

    kuma-cni-install --cni-bin-dir /opt/cni/bin --cni-conf-dir /etc/cni/net.d [--uninstall]

Writes a launcher `kuma-cni` into the bin dir (this installation's Python), then appends
`{"type": "kuma-cni", ...}` to the first `*.conflist` of the conf dir in lexical order (the file a
runtime reads). Without a conflist, the first single-plugin `*.conf`/`*.json` becomes a conflist
of that plugin and kuma-cni. Every file it changes keeps its original bytes beside it in
`<file>.kuma-cni.orig` (runtimes only read .conf, .conflist and .json), every file it creates gets a
`<file>.kuma-cni.created` marker, so `--uninstall` restores the directory byte for byte. Running it
twice changes nothing. A configuration it cannot parse is refused, naming the file, before any change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from kuma_common import safe_json

PLUGIN_TYPE = "kuma-cni"
LAUNCHER_MARK = "# written by kuma-cni-install"
ORIG_SUFFIX = ".kuma-cni.orig"
CREATED_SUFFIX = ".kuma-cni.created"
SINGLE_SUFFIXES = (".conf", ".json")
DEFAULT_EXCLUDED_NAMESPACES = ("kube-system",)


class InstallError(Exception):
    """A problem the user can fix; the message names the file."""


# --- pure: documents in, documents out ------------------------------------------------------------------


def plugin_entry(log_file: str | None, exclude_namespaces: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": PLUGIN_TYPE, "exclude_namespaces": exclude_namespaces}
    if log_file:
        entry["log_file"] = log_file
    return entry


def chained(conflist: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The conflist with our entry last (replacing an earlier one of ours in place)."""
    plugins = [p for p in conflist["plugins"] if p.get("type") != PLUGIN_TYPE]
    return {**conflist, "plugins": [*plugins, entry]}


def unchained(conflist: dict[str, Any]) -> dict[str, Any]:
    return {**conflist, "plugins": [p for p in conflist["plugins"] if p.get("type") != PLUGIN_TYPE]}


def wrapped(single: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """A single-plugin config turned into a conflist that runs it, then us."""
    plugin = {k: v for k, v in single.items() if k not in ("cniVersion", "name")}
    version = single.get("cniVersion", "1.0.0")
    return {"cniVersion": version, "name": single.get("name"), "plugins": [plugin, entry]}


def render(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def parse(path: Path, data: bytes, conflist: bool) -> dict[str, Any]:
    try:
        document = safe_json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InstallError(f"{path}: not valid JSON ({exc}); nothing was changed") from None
    if not isinstance(document, dict):
        raise InstallError(f"{path}: not a JSON object; nothing was changed")
    if conflist and not (
        isinstance(document.get("plugins"), list) and all(isinstance(p, dict) for p in document["plugins"])
    ):
        raise InstallError(f'{path}: a .conflist needs a "plugins" list of objects; nothing was changed')
    if not conflist and not isinstance(document.get("type"), str):
        raise InstallError(f'{path}: a network configuration needs a "type"; nothing was changed')
    return document


# --- effects ---------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically: a reader (the runtime) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def install_launcher(bin_dir: Path) -> Path:
    launcher = bin_dir / PLUGIN_TYPE
    text = f"#!{sys.executable} -I\n{LAUNCHER_MARK}\nfrom kuma_cni.plugin import main\n\nmain()\n"
    if not launcher.exists() or launcher.read_text(errors="replace") != text:
        _write(launcher, text.encode(), 0o755)
    return launcher


def _first(conf_dir: Path, suffixes: tuple[str, ...]) -> Path | None:
    names = sorted(p.name for p in conf_dir.iterdir() if p.is_file() and p.suffix in suffixes)
    return conf_dir / names[0] if names else None


Write = tuple[Path, bytes | None, int]  # (path, new bytes or None to delete, mode)


def plan_chain(conf_dir: Path, entry: dict[str, Any]) -> tuple[Path, list[Write]]:
    """(the conflist that will run kuma-cni, the writes that get it there: none when already so).

    Reads and parses only, so a file it cannot parse is refused before anything changes."""
    target = _first(conf_dir, (".conflist",))
    if target is not None:
        original = target.read_bytes()
        new = render(chained(parse(target, original, conflist=True), entry))
        if new == original:
            return target, []
        backup = target.with_name(target.name + ORIG_SUFFIX)
        keep = [] if backup.exists() else [(backup, original, _mode(target))]  # the first original
        return target, [*keep, (target, new, _mode(target))]
    single = _first(conf_dir, SINGLE_SUFFIXES)
    if single is None:
        raise InstallError(f"{conf_dir}: no CNI network configuration to chain kuma-cni into")
    original = single.read_bytes()
    target = single.with_suffix(".conflist")
    document = wrapped(parse(single, original, conflist=False), entry)
    return target, [
        (single.with_name(single.name + ORIG_SUFFIX), original, _mode(single)),
        (target.with_name(target.name + CREATED_SUFFIX), b"", 0o644),
        (target, render(document), _mode(single)),
        (single, None, 0),  # the runtime would read it first (10-x.conf sorts before 10-x.conflist)
    ]


def apply_writes(writes: list[Write]) -> None:
    for path, data, mode in writes:
        if data is None:
            path.unlink()
        else:
            _write(path, data, mode)


def uninstall(bin_dir: Path, conf_dir: Path) -> list[str]:
    """Undo everything install did; what was done, one line each."""
    done: list[str] = []
    for marker in sorted(conf_dir.glob("*" + CREATED_SUFFIX)):
        created = marker.with_name(marker.name.removesuffix(CREATED_SUFFIX))
        created.unlink(missing_ok=True)
        marker.unlink()
        done.append(f"removed {created}")
    for backup in sorted(conf_dir.glob("*" + ORIG_SUFFIX)):
        done.append(_restore(backup))
    launcher = bin_dir / PLUGIN_TYPE
    if launcher.exists() and LAUNCHER_MARK in launcher.read_text(errors="replace"):
        launcher.unlink()
        done.append(f"removed {launcher}")
    return done


def _restore(backup: Path) -> str:
    path = backup.with_name(backup.name.removesuffix(ORIG_SUFFIX))
    original = backup.read_bytes()
    if path.exists() and path.suffix == ".conflist":
        current = parse(path, path.read_bytes(), conflist=True)
        if unchained(current) != json.loads(original):
            # Someone changed the file since: keep their change, take out only our entry.
            _write(path, render(unchained(current)), _mode(path))
            backup.unlink()
            return f"removed kuma-cni from {path} (changed since install: not restored from the backup)"
    _write(path, original, _mode(backup))
    backup.unlink()
    return f"restored {path}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kuma-cni-install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cni-bin-dir", required=True, type=Path, help="where the runtime finds plugins")
    parser.add_argument("--cni-conf-dir", required=True, type=Path, help="the runtime's CNI config dir")
    parser.add_argument("--uninstall", action="store_true", help="restore the files as they were")
    parser.add_argument("--log-file", help="the plugin's log file (default /var/log/kuma-cni.log)")
    parser.add_argument(
        "--exclude-namespace",
        action="append",
        dest="exclude_namespaces",
        help="pods of this namespace stay out of the mesh (repeatable; default: kube-system)",
    )
    args = parser.parse_args(argv)
    for flag, directory in (("--cni-bin-dir", args.cni_bin_dir), ("--cni-conf-dir", args.cni_conf_dir)):
        if not directory.is_dir():
            parser.error(f"{flag} {directory}: not a directory")
    try:
        if args.uninstall:
            for line in uninstall(args.cni_bin_dir, args.cni_conf_dir) or ["nothing to undo"]:
                print(f"kuma-cni-install: {line}")
            return
        entry = plugin_entry(args.log_file, args.exclude_namespaces or list(DEFAULT_EXCLUDED_NAMESPACES))
        target, writes = plan_chain(args.cni_conf_dir, entry)
        launcher = install_launcher(args.cni_bin_dir)  # before the config names it
        apply_writes(writes)
    except (InstallError, OSError) as exc:
        sys.exit(f"kuma-cni-install: {exc}")
    state = "chained into" if writes else "already chained in"
    print(f"kuma-cni-install: {launcher} installed; {state} {target}")


if __name__ == "__main__":
    main()
