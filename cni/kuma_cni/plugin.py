"""`kuma-cni`: the plugin a container runtime execs, once per pod and command (CNI spec 1.0.0).

stdout carries exactly one JSON document (the result, the error object or nothing for DEL/CHECK);
details go to the log file (`log_file`, default /var/log/kuma-cni.log, 0600; stderr when it
cannot be opened). Only `json` and the spec are imported up front: the runtime waits on this
process for every pod, so the engine is imported by the commands that use it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from kuma_cni import spec
from kuma_cni.spec import CniError
from kuma_common import safe_json

DEFAULT_LOG_FILE = "/var/log/kuma-cni.log"
UNEXPECTED = 102  # a bug of ours: the log file has the traceback


class Log:
    """Append-only log lines; never stdout."""

    def __init__(self, stream: IO[str], context: str) -> None:
        self.stream, self.context = stream, context

    def __call__(self, message: str) -> None:
        import time  # noqa: PLC0415 - cheap, but only needed once something is logged

        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.stream.write(f"{stamp} kuma-cni[{os.getpid()}] {self.context}: {message}\n")
        self.stream.flush()


def open_log(path: str, context: str) -> Log:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return Log(os.fdopen(fd, "a"), context)
    except OSError as exc:
        log = Log(sys.stderr, context)
        log(f"cannot open the log file {path} ({exc.strerror}); logging to stderr")
        return log


def _log_path(data: bytes) -> str:
    try:
        conf = safe_json.loads(data)
    except ValueError:
        return DEFAULT_LOG_FILE
    path = conf.get("log_file") if isinstance(conf, dict) else None
    return path if isinstance(path, str) and path else DEFAULT_LOG_FILE


def run(environ: Mapping[str, str], data: bytes, out: IO[str]) -> int:
    """One invocation: the exit code; the answer written to `out`."""
    name = environ.get("CNI_COMMAND", "")
    context = f"{name} container={environ.get('CNI_CONTAINERID', '-')} netns={environ.get('CNI_NETNS', '-')}"
    log: Log | None = None
    try:
        spec.command(environ)
        if name == "VERSION":
            return _answer(out, spec.version_result(data))
        log = open_log(_log_path(data), context)
        conf = spec.parse_config(data)
        result = HANDLERS[name](conf, environ, log)
        if result is not None:
            _answer(out, result)
        return 0
    except CniError as exc:
        log = log or open_log(_log_path(data), context)
        log(f"error {exc.code}: {exc.msg}" + (f" ({exc.details})" if exc.details else ""))
        _answer(out, exc.to_json(spec.error_version(data)))
        return 1
    except Exception as exc:  # noqa: BLE001 - never a traceback on stdout: it goes to the log
        import traceback  # noqa: PLC0415

        log = log or open_log(_log_path(data), context)
        log("unexpected error:\n" + "".join(traceback.format_exception(exc)))
        error = CniError(UNEXPECTED, f"kuma-cni failed unexpectedly: {exc}", "see the kuma-cni log file")
        _answer(out, error.to_json(spec.error_version(data)))
        return 1


def _answer(out: IO[str], document: Mapping[str, Any]) -> int:
    out.write(json.dumps(document) + "\n")
    out.flush()
    return 0


# --- commands ---------------------------------------------------------------------------------------


def _pod(conf: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[Any, str | None]:
    """(the pod's annotation overrides, why it is skipped or None)."""
    from kuma_cni import settings  # noqa: PLC0415 - imports the engine's config parsers

    cni_args = spec.parse_cni_args(environ.get("CNI_ARGS", ""))
    overrides = settings.pod_overrides(cni_args, conf.get("runtimeConfig"))
    return overrides, settings.skip_reason(conf, cni_args, overrides)


def _enter(netns: str) -> None:
    from transparent_proxy import netns as ns  # noqa: PLC0415

    try:
        ns.enter(netns)
    except OSError as exc:
        raise CniError(
            spec.UNKNOWN_CONTAINER, f"cannot enter the network namespace {netns}: {exc.strerror}"
        ) from None


def _nameservers(config: Any) -> tuple[str, ...] | None:
    """`--redirect-dns` without captureAll: the nameservers of the node's resolv.conf file named by
    `redirect.dns.resolvConfigPath`, read before the pod is touched (None: not needed)."""
    from transparent_proxy import resolv  # noqa: PLC0415

    if not config.redirect_dns or config.dns_capture_all:
        return None
    try:
        return resolv.read_nameservers(config.resolv_config_path)
    except resolv.ResolvConfError as exc:
        raise CniError(spec.INVALID_CONFIG, str(exc)) from None


def _not_applied(verb: str, exc: Exception) -> CniError:
    return CniError(spec.RULES_NOT_APPLIED, f"could not {verb} the transparent-proxy rules", str(exc))


def add(conf: Mapping[str, Any], environ: Mapping[str, str], log: Log) -> dict[str, Any]:
    from kuma_cni import settings  # noqa: PLC0415
    from transparent_proxy import apply  # noqa: PLC0415

    result = spec.convert_result(spec.previous_result(conf), conf["cniVersion"])
    overrides, skipped = _pod(conf, environ)
    if skipped:
        log(f"not in the mesh ({skipped}): passed through untouched")
        return result
    config = settings.tproxy_config(conf, overrides)  # every input checked before any change
    nameservers = _nameservers(config)
    _enter(environ["CNI_NETNS"])
    try:
        report = apply.install(config, nameservers=nameservers, log=log)
    except apply.TProxyError as exc:
        raise _not_applied("install", exc) from None
    log(f"rules installed ({', '.join(report.changed) or 'unchanged'}) in {report.elapsed_s * 1000:.0f} ms")
    return result


def delete(conf: Mapping[str, Any], environ: Mapping[str, str], log: Log) -> None:
    from transparent_proxy import apply  # noqa: PLC0415

    netns = environ.get("CNI_NETNS", "")
    if not netns or not os.path.exists(netns):
        log("network namespace already gone: nothing to remove")
        return None
    _, skipped = _pod(conf, environ)
    if skipped:
        log(f"not in the mesh ({skipped}): nothing to remove")
        return None
    try:
        _enter(netns)
    except CniError:  # removed between the check and setns: nothing left to clean
        log("network namespace gone while entering: nothing to remove")
        return None
    try:
        report = apply.uninstall(log=log)
    except apply.TProxyError as exc:
        raise _not_applied("remove", exc) from None
    log(f"rules removed ({', '.join(report.changed) or 'none were there'})")
    return None


def check(conf: Mapping[str, Any], environ: Mapping[str, str], log: Log) -> None:
    from kuma_cni import settings  # noqa: PLC0415
    from transparent_proxy import apply  # noqa: PLC0415

    if conf["cniVersion"] not in spec.VERSIONS_WITH_CHECK:
        raise CniError(spec.INCOMPATIBLE_VERSION, f"CHECK is not part of CNI {conf['cniVersion']}")
    overrides, skipped = _pod(conf, environ)
    if skipped:
        log(f"not in the mesh ({skipped}): nothing to check")
        return None
    config = settings.tproxy_config(conf, overrides)
    nameservers = _nameservers(config)
    _enter(environ["CNI_NETNS"])
    try:
        problems = apply.check(config, nameservers=nameservers)
    except apply.TProxyError as exc:
        raise CniError(spec.RULES_NOT_IN_PLACE, "could not read the firewall rules", str(exc)) from None
    if problems:
        raise CniError(
            spec.RULES_NOT_IN_PLACE,
            f"the transparent-proxy rules are not in place in {environ['CNI_NETNS']}",
            "; ".join(problems),
        )
    log("rules in place")
    return None


HANDLERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, str], Log], Any]] = {
    "ADD": add,
    "DEL": delete,
    "CHECK": check,
}


def main() -> None:
    sys.exit(run(os.environ, sys.stdin.buffer.read(), sys.stdout))


if __name__ == "__main__":
    main()
