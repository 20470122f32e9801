"""The transparent-proxy flags (Kuma's names), shared by `kumactl install transparent-proxy` and
`kuma-init`, and the one function that turns them (+ env + config file) into a TProxyConfig.

Precedence, as Kuma: config file < `KUMA_TRANSPARENT_PROXY_*` environment < flags.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from transparent_proxy import constants as c
from transparent_proxy.config import TProxyConfig, TProxyConfigError
from transparent_proxy.sources import ENV_PREFIX, build_config, env_layer, flag_layer, yaml_layer

F = TypeVar("F", bound=Callable[..., Any])
ENV_CONFIG_FILE = f"{ENV_PREFIX}CONFIG_FILE"

_OPTIONS = [
    click.option("--config-file", help=f"Kuma transparent-proxy config file (YAML); env {ENV_CONFIG_FILE}"),
    click.option(
        "--redirect-inbound-port", help=f"inbound listener port [default: {c.REDIRECT_PORT_INBOUND}]"
    ),
    click.option(
        "--redirect-outbound-port", help=f"outbound listener port [default: {c.REDIRECT_PORT_OUTBOUND}]"
    ),
    click.option(
        "--kuma-dp-user",
        help=f"user name or UID the proxy runs as; its traffic is not redirected "
        f"[default: {c.DEFAULT_PROXY_USER} if it exists, else {c.DEFAULT_PROXY_UID}]",
    ),
    click.option("--kuma-dp-uid", help="same as --kuma-dp-user (Kuma's older name)"),
    click.option("--exclude-inbound-ports", help="ports or ranges not redirected inbound, e.g. 22,8000-8010"),
    click.option("--exclude-outbound-ports", help="ports or ranges not redirected outbound"),
    click.option(
        "--exclude-inbound-ips", multiple=True, help="IPs/CIDRs whose inbound traffic is not redirected"
    ),
    click.option(
        "--exclude-outbound-ips", multiple=True, help="IPs/CIDRs reached directly, not through the proxy"
    ),
    click.option(
        "--exclude-outbound-ports-for-uids",
        multiple=True,
        help="[proto:]ports:uids reached directly by those UIDs, e.g. tcp:22,80-90:0,1000-2000 (repeatable)",
    ),
    click.option(
        "--redirect-dns/--no-redirect-dns",
        default=None,
        help="send DNS queries (UDP/TCP 53) addressed to the nameservers of the resolv.conf to the DNS proxy",
    ),
    click.option(
        "--redirect-all-dns-traffic/--no-redirect-all-dns-traffic",
        default=None,
        help="send every DNS query (UDP/TCP 53), whatever its address, to the DNS proxy "
        "(implies --redirect-dns)",
    ),
    click.option("--redirect-dns-port", help=f"DNS proxy port [default: {c.DNS_PROXY_PORT}]"),
    click.option(
        "--redirect-dns-resolv-config-path",
        help=f"the resolv.conf whose nameservers --redirect-dns redirects queries for, read at install "
        f"[default: {c.DEFAULT_RESOLV_CONFIG_PATH}]",
    ),
    click.option(
        "--skip-dns-conntrack-zone-split/--no-skip-dns-conntrack-zone-split",
        default=None,
        help="do not keep the proxy's and the applications' DNS flows in separate conntrack zones",
    ),
    click.option(
        "--ip-family-mode", help="dualstack (IPv6 too, when the host has IPv6) or ipv4 [default: dualstack]"
    ),
    click.option(
        "--drop-invalid-packets/--no-drop-invalid-packets",
        default=None,
        help="drop conntrack-invalid packets",
    ),
    click.option(
        "--wait", "wait_s", help=f"seconds to wait for the xtables lock [default: {c.XTABLES_WAIT_S}]"
    ),
    click.option("--dry-run", is_flag=True, help="print the rules that would be applied; change nothing"),
    click.option("--verbose", is_flag=True, help="say what is done, step by step"),
]


def tproxy_options(fn: F) -> F:
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def config_from_cli(params: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> TProxyConfig:
    """Flags (click's parameter dict) + environment + config file → config; ClickException if bad."""
    try:
        layers = []
        config_file = params.get("config_file") or environ.get(ENV_CONFIG_FILE)
        if config_file:
            layers.append(yaml_layer(_read(config_file), str(config_file)))
        layers.append(env_layer(environ))
        flags = flag_layer(_flag_values(params))
        if params.get("kuma_dp_uid") and not params.get("kuma_dp_user"):
            flags["proxy_uid"] = (params["kuma_dp_uid"], "--kuma-dp-uid")
        layers.append(flags)
        return build_config(*layers)
    except TProxyConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _flag_values(p: Mapping[str, Any]) -> dict[str, object | None]:
    user = p.get("kuma_dp_user") or p.get("kuma_dp_uid")
    return {
        "inbound_port": p.get("redirect_inbound_port"),
        "outbound_port": p.get("redirect_outbound_port"),
        "proxy_uid": user,
        "exclude_inbound_ports": p.get("exclude_inbound_ports"),
        "exclude_outbound_ports": p.get("exclude_outbound_ports"),
        "exclude_inbound_ips": ",".join(p.get("exclude_inbound_ips") or ()) or None,
        "exclude_outbound_ips": ",".join(p.get("exclude_outbound_ips") or ()) or None,
        "exclude_outbound_ports_for_uids": tuple(p.get("exclude_outbound_ports_for_uids") or ()) or None,
        "redirect_dns": p.get("redirect_dns"),
        "dns_capture_all": p.get("redirect_all_dns_traffic"),
        "dns_port": p.get("redirect_dns_port"),
        "resolv_config_path": p.get("redirect_dns_resolv_config_path"),
        "skip_dns_conntrack_zone_split": p.get("skip_dns_conntrack_zone_split"),
        "ip_family_mode": p.get("ip_family_mode"),
        "drop_invalid_packets": p.get("drop_invalid_packets"),
        "wait_s": p.get("wait_s"),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise TProxyConfigError(f"--config-file: cannot read {path}: {exc.strerror}") from None


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise click.ClickException(
            f"{command} changes the firewall (iptables) and must run as root (e.g. with sudo); "
            "--dry-run works without root"
        )
