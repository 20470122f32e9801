"""Reading `iptables-save [-c]` output: tables, chains, rules, and which of them are ours.

Ours = a rule carrying our comment prefix or touching a `KUMA_MESH*` chain, and every `KUMA_MESH*`
chain. Pure text handling; `apply.py` runs the tools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from transparent_proxy import constants as c

_COUNTERS = re.compile(r"^\[\d+:\d+\] ")
BUILTIN_POLICIES = ("ACCEPT", "DROP")


def is_ours(rule: str) -> bool:
    return c.COMMENT_PREFIX in rule or c.CHAIN_PREFIX in rule


@dataclass
class SavedTable:
    name: str
    chain_lines: list[str] = field(default_factory=list)  # `:CHAIN POLICY [p:b]`, as saved
    chains: dict[str, str] = field(default_factory=dict)  # name → policy ("-" for user chains)
    rules: list[tuple[str, str, str]] = field(default_factory=list)  # (chain, rule without counters, raw)

    def text(self) -> str:
        lines = [f"*{self.name}", *self.chain_lines, *(raw for _, _, raw in self.rules), "COMMIT"]
        return "\n".join(lines) + "\n"


@dataclass
class SavedRules:
    tables: dict[str, SavedTable] = field(default_factory=dict)

    def has_table(self, name: str) -> bool:
        return name in self.tables

    def table_text(self, name: str) -> str:
        return self.tables[name].text()

    def is_empty(self, name: str) -> bool:
        """No rules, no user chains, every built-in chain accepting: as good as no table."""
        table = self.tables[name]
        return not table.rules and all(policy == "ACCEPT" for policy in table.chains.values())

    def has_chain(self, table: str, chain: str) -> bool:
        return table in self.tables and chain in self.tables[table].chains

    def rules_in(self, table: str, chain: str) -> list[str]:
        t = self.tables.get(table)
        return [rule for ch, rule, _ in t.rules if ch == chain] if t else []

    def ours_in(self, table: str, chain: str) -> list[str]:
        return [rule for rule in self.rules_in(table, chain) if is_ours(rule)]

    def our_chains(self, table: str) -> list[str]:
        """Chains holding a rule of ours, and our own chains (even empty)."""
        t = self.tables.get(table)
        if t is None:
            return []
        names = [ch for ch, rule, _ in t.rules if is_ours(rule)]
        names += [ch for ch in t.chains if ch.startswith(c.CHAIN_PREFIX)]
        return list(dict.fromkeys(names))

    def tables_with_ours(self) -> list[str]:
        return [name for name in self.tables if self.our_chains(name)]

    def removal_lines(self) -> dict[str, list[str]]:
        """Per table: `-D` our rules in built-in chains, then flush and delete our chains."""
        removal: dict[str, list[str]] = {}
        for name, t in self.tables.items():
            own = [ch for ch in t.chains if ch.startswith(c.CHAIN_PREFIX)]
            lines = [
                "-D" + rule[2:]
                for ch, rule, _ in t.rules
                if is_ours(rule) and not ch.startswith(c.CHAIN_PREFIX)
            ]
            lines += [f"-F {ch}" for ch in own] + [f"-X {ch}" for ch in own]
            if lines:
                removal[name] = lines
        return removal


def parse_save(text: str) -> SavedRules:
    saved = SavedRules()
    table: SavedTable | None = None
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("*"):
            table = saved.tables.setdefault(line[1:], SavedTable(line[1:]))
        elif table is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name, policy = (line[1:].split() + ["-"])[:2]
            table.chains[name] = policy
            table.chain_lines.append(line)
        else:
            rule = _COUNTERS.sub("", line)
            if rule.startswith("-A "):
                table.rules.append((rule.split()[1], rule, line))
    return saved
