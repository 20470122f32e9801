"""`kuma-init`: install the redirection in this (the pod's) network namespace, prove it works, exit.

Configured like `kumactl install transparent-proxy`: flags, `KUMA_TRANSPARENT_PROXY_*` environment,
or a mounted Kuma config file (`--config-file` / `KUMA_TRANSPARENT_PROXY_CONFIG_FILE`). Then it
validates like Kuma's `kuma-validation` container (and, with a route out, the outbound path too)
and exits 0 only when traffic really lands where the rules say.

Exit codes: 0 installed and validated · 1 bad configuration or rules could not be applied ·
2 bad usage · 3 rules applied but traffic is not redirected.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from transparent_proxy import apply, validate
from transparent_proxy.apply import TProxyError
from transparent_proxy.cli_options import config_from_cli, require_root, tproxy_options
from transparent_proxy.rules import IPV6

EXIT_NOT_REDIRECTED = 3


def _say(message: str) -> None:
    click.echo(f"kuma-init: {message}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@tproxy_options
@click.option("--skip-validation", is_flag=True, help="install only; do not probe the redirection")
@click.option("--validation-timeout", type=float, default=2.0, show_default=True, help="seconds per probe")
def main(skip_validation: bool, validation_timeout: float, **params: Any) -> None:
    """Install transparent-proxy redirection in this network namespace and validate it."""
    started = time.perf_counter()
    config = config_from_cli(params)
    log = _say if params["verbose"] else (lambda _msg: None)
    if not params["dry_run"]:
        require_root("kuma-init")
    try:
        report = apply.install(config, dry_run=params["dry_run"], log=log)
    except TProxyError as exc:
        raise click.ClickException(f"could not install the transparent proxy: {exc}") from None
    dns = apply.dns_summary(config, report)
    if params["dry_run"]:
        if dns:
            click.echo(f"# DNS: {dns}")
        for family, text in report.texts.items():
            click.echo(f"# {family}\n{text}", nl=False)
        return
    families = ", ".join(report.changed)
    _say(f"rules installed ({families}, iptables {report.backend.name}) in {report.elapsed_s * 1000:.0f} ms")
    if dns:
        _say(f"DNS: {dns}")
    if skip_validation:
        return
    outbound = validate.outbound_probe_for(config)
    for fam in apply.report_families(report):
        result = validate.validate(
            config.inbound_port,
            config.proxy_uid,
            ipv6=fam.ipv6,
            outbound=None if fam is IPV6 else outbound,
            timeout_s=validation_timeout,
        )
        if not result.ok:
            _say(f"validation failed ({fam.name}): {result.message}")
            sys.exit(EXIT_NOT_REDIRECTED)
        log(f"validated ({fam.name}): {result.message}")
    _say(f"validation passed; done in {(time.perf_counter() - started) * 1000:.0f} ms")
