"""`kumactl install transparent-proxy` / `kumactl uninstall transparent-proxy` (Kuma's flags).

Only parses flags and prints; the engine (`transparent_proxy`) builds, applies, verifies
and removes the rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from transparent_proxy.cli_options import config_from_cli, require_root, tproxy_options

if TYPE_CHECKING:
    from transparent_proxy.apply import Log, Report

# The engine (and pyroute2 behind it) is imported inside the commands: every other kumactl command
# would otherwise pay for it at start.


def _log(verbose: bool) -> Log:
    return (lambda msg: click.echo(f"# {msg}", err=True)) if verbose else (lambda _msg: None)


def _print_dry_run(report: Report, dns: str | None = None) -> None:
    if dns:
        click.echo(f"# DNS: {dns}")
    for family, text in report.texts.items():
        click.echo(f"# {family}: {report.backend.tool(family == 'IPv6', 'restore')} --noflush")
        click.echo(text, nl=False)
    if not report.texts:
        click.echo("# nothing to do")


@click.command("transparent-proxy")
@tproxy_options
def install_transparent_proxy(**params: Any) -> None:
    """Redirect this host's TCP traffic through the proxy (iptables; needs root).

    Inbound TCP goes to the inbound listener (15006), outbound TCP of every user but the proxy's
    to the outbound listener (15001); exclusions go direct. With --redirect-dns, DNS queries to the
    nameservers of /etc/resolv.conf (with --redirect-all-dns-traffic: every DNS query) of every user
    but the proxy's go to the DNS proxy (15053). Install twice = install once.
    """
    from transparent_proxy import apply

    config = config_from_cli(params)
    if not params["dry_run"]:
        require_root("kumactl install transparent-proxy")
    try:
        report = apply.install(config, dry_run=params["dry_run"], log=_log(params["verbose"]))
    except apply.TProxyError as exc:
        raise click.ClickException(str(exc)) from None
    dns = apply.dns_summary(config, report)
    if params["dry_run"]:
        _print_dry_run(report, dns)
        return
    click.echo(
        f"transparent proxy installed ({', '.join(report.changed)}; iptables {report.backend.name}; "
        f"inbound {config.inbound_port}, outbound {config.outbound_port}, proxy UID {config.proxy_uid})"
    )
    if dns:
        click.echo(f"DNS: {dns}")


@click.command("transparent-proxy")
@click.option("--dry-run", is_flag=True, help="print what would be removed; change nothing")
@click.option("--verbose", is_flag=True, help="say what is done, step by step")
def uninstall_transparent_proxy(dry_run: bool, verbose: bool) -> None:
    """Remove exactly the rules `kumactl install transparent-proxy` added (needs root)."""
    from transparent_proxy import apply

    if not dry_run:
        require_root("kumactl uninstall transparent-proxy")
    try:
        report = apply.uninstall(dry_run=dry_run, log=_log(verbose))
    except apply.TProxyError as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        _print_dry_run(report)
    elif report.changed:
        click.echo(
            f"transparent proxy uninstalled ({', '.join(report.changed)}; iptables {report.backend.name})"
        )
    else:
        click.echo("transparent proxy was not installed; nothing to remove")


@click.group()
def install() -> None:
    """Install host components (transparent proxy)."""


@click.group()
def uninstall() -> None:
    """Remove host components (transparent proxy)."""


install.add_command(install_transparent_proxy)
uninstall.add_command(uninstall_transparent_proxy)
