"""The only code that changes the firewall: install, verify, uninstall the transparent-proxy rules.

Per IP family, one `iptables-restore --noflush --wait` carries both the removal of any earlier
install and the new rules, so the kernel swaps them in one transaction per table (install twice ==
install once). iptables-restore commits table by table (legacy and nft alike): when a later table
(raw, mangle) is refused, the tables before it are already in. So a family's apply is all or nothing
only through the snapshot (`iptables-save -c`) taken before: afterwards `iptables-save` must show
exactly the built rules; if it does not, or any table or a later family fails, every family touched,
the failing one included, is put back from its snapshot, and the error says whether that worked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from transparent_proxy import constants as c
from transparent_proxy import netns, resolv
from transparent_proxy.backend import Backend, detect
from transparent_proxy.config import TProxyConfig
from transparent_proxy.rules import IPV4, IPV6, Family, TableRules, build, dns_servers, render_table
from transparent_proxy.saved import SavedRules, parse_save

Log = Callable[[str], None]
LOCK_BUSY_EXIT = 4  # iptables' RESOURCE_PROBLEM: the xtables lock is held by someone else


class TProxyError(RuntimeError):
    """Applying, verifying or removing rules failed; the message says what and where."""


@dataclass
class Report:
    backend: Backend
    texts: dict[str, str] = field(default_factory=dict)  # family name → the restore input
    nameservers: tuple[str, ...] = ()  # the resolv.conf's, when `--redirect-dns` captures only those
    changed: list[str] = field(default_factory=list)  # families actually written
    elapsed_s: float = 0.0


def _quiet(_msg: str) -> None:
    pass


# --- running the tools ----------------------------------------------------------------------------------


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise TProxyError(f"{argv[0]} not found: install iptables (legacy and/or nft)") from None
    except subprocess.TimeoutExpired:
        raise TProxyError(f"{argv[0]} did not finish within 60 s") from None


def save(backend: Backend, fam: Family, missing_ok: bool = False) -> SavedRules:
    """`iptables-save -c` of this namespace (with counters, so a rollback keeps them)."""
    tool = backend.tool(fam.ipv6, "save")
    try:
        result = _run([tool, "-c"])
    except TProxyError:
        if missing_ok:
            return parse_save("")
        raise
    if result.returncode != 0:
        if missing_ok:
            return parse_save("")
        raise TProxyError(
            f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}{_hint(result.stderr)}"
        )
    return parse_save(result.stdout)


def restore(backend: Backend, fam: Family, text: str, wait_s: int, noflush: bool = True) -> None:
    """Feed `text` to iptables-restore; retry while another program holds the xtables lock."""
    tool = backend.tool(fam.ipv6, "restore")
    argv = [tool, *(["--noflush"] if noflush else ["--counters"]), "--wait", str(wait_s)]
    for attempt in range(1, c.RESTORE_ATTEMPTS + 1):
        result = _run(argv, text)
        if result.returncode == 0:
            return
        lock_busy = result.returncode == LOCK_BUSY_EXIT and "lock" in result.stderr
        if not lock_busy or attempt == c.RESTORE_ATTEMPTS:
            raise TProxyError(_restore_failure(tool, text, result.stderr))
        time.sleep(c.RESTORE_RETRY_DELAY_S)


def _restore_failure(tool: str, text: str, stderr: str) -> str:
    message = f"{tool} refused the rules: {stderr.strip() or 'no reason given'}{_hint(stderr)}"
    match = re.search(r"line:? (\d+)", stderr)
    lines = text.splitlines()
    if match and 0 < int(match.group(1)) <= len(lines):
        message += f"\n  offending line: {lines[int(match.group(1)) - 1]}"
    return message


def _hint(stderr: str) -> str:
    if "Permission denied" in stderr or "Operation not permitted" in stderr:
        return "\n  hint: iptables needs root with CAP_NET_ADMIN (init container: add NET_ADMIN, NET_RAW)"
    return ""


# --- planning ---------------------------------------------------------------------------------------------


def wanted_families(config: TProxyConfig, ipv6: bool | None = None) -> list[Family]:
    """IPv4 always; IPv6 in dualstack mode when the namespace's kernel has IPv6 enabled, whether or
    not an address exists yet: one added later (SLAAC, a late CNI) must not let IPv6 leave unproxied."""
    if config.ip_family_mode != c.IP_FAMILY_DUALSTACK:
        return [IPV4]
    with_v6 = netns.ipv6_enabled() if ipv6 is None else ipv6
    return [IPV4, IPV6] if with_v6 else [IPV4]


def usable_families(backend: Backend, families: list[Family], log: Log = _quiet) -> list[Family]:
    """`families` without IPv6 when ip6tables cannot work here (no ip6_tables in the kernel) and no
    IPv6 address exists, so no IPv6 traffic can flow; with an address that is an error, as before."""
    if IPV6 not in families or netns.has_ipv6():
        return families
    try:
        save(backend, IPV6)
    except TProxyError as exc:
        log(f"IPv6 is enabled but {exc}; no IPv6 address here, so IPv4 rules only")
        return [fam for fam in families if fam != IPV6]
    return families


def nameservers_for(
    config: TProxyConfig, families: Sequence[Family], given: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The nameservers whose queries `--redirect-dns` redirects: `given`, or those of the config's
    resolv.conf (read now). Nothing to read without DNS capture or with captureAll. TProxyError, before
    anything is changed, when the file cannot be read or lists no nameserver of `families`."""
    if not config.redirect_dns or config.dns_capture_all:
        return ()
    path = config.resolv_config_path
    try:
        servers = tuple(given) if given is not None else resolv.read_nameservers(path)
    except resolv.ResolvConfError as exc:
        raise TProxyError(str(exc)) from None
    if not any(dns_servers(config, fam, servers) for fam in families):
        names = " or ".join(fam.name for fam in families)
        raise TProxyError(
            f"--redirect-dns: {path} lists no {names} nameserver (it lists {', '.join(servers) or 'none'}), "
            f"so there are no DNS queries to redirect; {resolv.OTHER_FILE_HINT}, {resolv.CAPTURE_ALL_HINT}"
        )
    return servers


def dns_summary(config: TProxyConfig, report: Report) -> str | None:
    """One line on what DNS capture catches (for the CLIs), or None when it is off."""
    if not config.redirect_dns:
        return None
    to = "any address"
    if not config.dns_capture_all:
        to = f"{', '.join(report.nameservers)} (the nameservers of {config.resolv_config_path})"
    who = f"every user but UID {config.proxy_uid}"
    return f"queries (UDP/TCP 53) to {to}, of {who}, go to port {config.dns_port}"


def restore_text(tables: Sequence[TableRules], current: SavedRules) -> str:
    """Removal of whatever we installed before, then the new rules, one block per table."""
    removal = current.removal_lines()
    by_name = {t.table: t for t in tables}
    names = [*by_name, *(name for name in removal if name not in by_name)]
    return "".join(
        render_table(by_name.get(name) or TableRules(name, (), ()), removal.get(name, ())) for name in names
    )


def verify(tables: Sequence[TableRules], saved: SavedRules) -> list[str]:
    """What differs between the built rules and what `iptables-save` shows (empty = all good):
    our rules exactly, in order, the inserted ones at the very top of their chain, nothing else of ours."""
    problems: list[str] = []
    expected = {t.table: t for t in tables}
    for name in sorted(set(expected) | set(saved.tables_with_ours())):
        table = expected.get(name) or TableRules(name, (), ())
        for chain in sorted({r.chain for r in table.rules} | set(saved.our_chains(name)) | set(table.chains)):
            top = [r.saved for r in table.rules if r.chain == chain and r.insert]
            rest = [r.saved for r in table.rules if r.chain == chain and not r.insert]
            if chain in table.chains and not saved.has_chain(name, chain):
                problems.append(f"{name}: chain {chain} is missing")
            elif chain.startswith(c.CHAIN_PREFIX) and chain not in table.chains:
                problems.append(f"{name}: chain {chain} should not be there")
            elif saved.ours_in(name, chain) != top + rest:
                problems.append(
                    f"{name}/{chain}: our rules differ from the built ones (missing, extra or reordered)"
                )
            elif saved.rules_in(name, chain)[: len(top)] != top:
                problems.append(f"{name}/{chain}: the exclusions are not at the top of the chain")
    return problems


def check(
    config: TProxyConfig,
    *,
    backend: Backend | None = None,
    ipv6: bool | None = None,
    nameservers: Sequence[str] | None = None,
) -> list[str]:
    """What differs between the rules `config` builds and this namespace's tables; changes nothing."""
    families = wanted_families(config, ipv6)
    servers = nameservers_for(config, families, nameservers)
    backend = backend or detect()
    if ipv6 is None:
        families = usable_families(backend, families)
    problems: list[str] = []
    for fam in (IPV4, IPV6):
        plan = build(config, fam, servers) if fam in families else ()
        saved = save(backend, fam, missing_ok=fam not in families)
        problems += [f"{fam.name}: {p}" for p in verify(plan, saved)]
    return problems


# --- install / uninstall ---------------------------------------------------------------------------------


def install(
    config: TProxyConfig,
    *,
    backend: Backend | None = None,
    ipv6: bool | None = None,
    dry_run: bool = False,
    nameservers: Sequence[str] | None = None,
    log: Log = _quiet,
) -> Report:
    """Replace any earlier install with the rules of `config`, all or nothing. `ipv6` / `nameservers`
    stand in for what the namespace has / the resolv.conf lists (None: look now)."""
    started = time.perf_counter()
    families = wanted_families(config, ipv6)
    servers = nameservers_for(config, families, nameservers)  # a bad resolv.conf stops us here
    backend = backend or detect(warn=log)
    if ipv6 is None and not dry_run:
        families = usable_families(backend, families, log)
    report = Report(backend, nameservers=servers)
    if servers:
        log(f"DNS: redirecting queries for {', '.join(servers)} (from {config.resolv_config_path})")
    snapshots: dict[Family, SavedRules] = {}
    plans: dict[Family, tuple[TableRules, ...]] = {}
    for fam in (IPV4, IPV6):
        wanted = fam in families
        # A dry run may run without root, where iptables-save cannot read the tables.
        snapshots[fam] = save(backend, fam, missing_ok=dry_run or not wanted)
        plans[fam] = build(config, fam, servers) if wanted else ()
        text = restore_text(plans[fam], snapshots[fam])
        if text:
            report.texts[fam.name] = text
    log(f"backend: {backend.name}; families: {', '.join(f.name for f in families)}")
    if dry_run:
        return report
    if IPV6 in families and netns.ensure_loopback_ipv6():
        log(f"added {c.INBOUND_PASSTHROUGH_SOURCE_V6}/128 to {c.LOOPBACK_INTERFACE}")
    _apply_all(backend, config.wait_s, plans, snapshots, report, log)
    for fam in report_families(report):  # tables an earlier install used and this one does not
        built = {t.table for t in plans[fam]}
        dropped = [name for name in snapshots[fam].tables_with_ours() if name not in built]
        _drop_empty_nft_tables(backend, fam, dropped, log)
    report.elapsed_s = time.perf_counter() - started
    return report


def uninstall(*, backend: Backend | None = None, dry_run: bool = False, log: Log = _quiet) -> Report:
    """Remove every rule and chain we installed (both families); drop nft tables left empty."""
    started = time.perf_counter()
    backend = backend or detect(warn=log)
    report = Report(backend)
    plans: dict[Family, tuple[TableRules, ...]] = {}
    snapshots: dict[Family, SavedRules] = {}
    for fam in (IPV4, IPV6):
        snapshots[fam] = save(backend, fam, missing_ok=fam.ipv6)
        plans[fam] = ()
        text = restore_text((), snapshots[fam])
        if text:
            report.texts[fam.name] = text
    if not dry_run:
        _apply_all(backend, c.XTABLES_WAIT_S, plans, snapshots, report, log)
        for fam in report_families(report):
            _drop_empty_nft_tables(backend, fam, snapshots[fam].tables_with_ours(), log)
    report.elapsed_s = time.perf_counter() - started
    return report


def report_families(report: Report) -> list[Family]:
    return [fam for fam in (IPV4, IPV6) if fam.name in report.changed]


def _apply_all(
    backend: Backend,
    wait_s: int,
    plans: dict[Family, tuple[TableRules, ...]],
    snapshots: dict[Family, SavedRules],
    report: Report,
    log: Log,
) -> None:
    touched: list[Family] = []
    try:
        for fam in (IPV4, IPV6):
            text = report.texts.get(fam.name)
            if not text:
                continue
            touched.append(fam)  # before restoring: a refused later table leaves the earlier ones in
            restore(backend, fam, text, wait_s)
            problems = verify(plans[fam], save(backend, fam))
            if problems:
                raise TProxyError(f"{fam.name} rules not in place after restore: " + "; ".join(problems))
            report.changed.append(fam.name)
            log(f"{fam.name}: {backend.tool(fam.ipv6, 'restore')} applied and verified")
    except TProxyError as exc:
        raise TProxyError(f"{exc}\n  {_roll_back_all(backend, touched, snapshots, log)}") from None


def _roll_back_all(
    backend: Backend, families: Sequence[Family], snapshots: dict[Family, SavedRules], log: Log
) -> str:
    """Put every touched family back; one line saying truthfully what the tables hold now."""
    failed: list[str] = []
    for fam in families:
        try:
            _rollback(backend, fam, snapshots[fam], log)
        except TProxyError as exc:
            failed.append(f"{fam.name}: {exc}")
    if failed:
        return (
            "rolling back FAILED, the tables may hold part of the new rules (run `uninstall`): "
            + "; ".join(failed)
        )
    return "nothing was changed: the tables were put back as they were before"


def _rollback(backend: Backend, fam: Family, snapshot: SavedRules, log: Log) -> None:
    """Put back the touched tables exactly as they were (counters included)."""
    current = save(backend, fam)
    touched = set(current.tables_with_ours()) | set(snapshot.tables_with_ours())
    text = "".join(snapshot.table_text(name) for name in sorted(touched) if snapshot.has_table(name))
    if text:
        restore(backend, fam, text, c.XTABLES_WAIT_S, noflush=False)
    absent = [name for name in sorted(touched) if not snapshot.has_table(name)]
    if absent:
        restore(
            backend, fam, "".join(f"*{name}\nCOMMIT\n" for name in absent), c.XTABLES_WAIT_S, noflush=False
        )
        _drop_empty_nft_tables(backend, fam, absent, log)
    log(f"{fam.name}: rolled back to the state before install")


def _drop_empty_nft_tables(backend: Backend, fam: Family, tables: Sequence[str], log: Log) -> None:
    """iptables-nft leaves an empty table behind; delete it so `iptables-save` is as before install.

    Legacy tables cannot be unregistered from a namespace; an empty one stays (and is harmless).
    """
    if not tables or not backend.is_nft or shutil.which("nft") is None:
        return
    saved = save(backend, fam)
    for name in tables:
        if saved.has_table(name) and saved.is_empty(name):
            result = _run(["nft", "delete", "table", "ip6" if fam.ipv6 else "ip", name])
            if result.returncode == 0:
                log(f"{fam.name}: removed the empty {name} table")
