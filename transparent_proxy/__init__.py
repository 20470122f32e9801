"""The transparent-proxy engine: config → iptables rules → atomic apply, verify, uninstall.

`config`/`sources` build the config, `rules` is the pure builder, `apply` the only code that runs
iptables, `backend` picks legacy or nft, `netns` reads and changes the namespace through pyroute2.
"""
