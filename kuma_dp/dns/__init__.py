"""The agent's DNS server: answers mesh names (`backend.mesh`) from the records the control plane
hands over through Envoy, and forwards every other query to the resolvers the host had at start.

Pure parts (records, answers, resolv.conf) apart from the sockets (records_source, upstream,
server); `component` wires them into the agent. docs/dns.md says what it does and why.
"""
