"""Service names: virtual IPs per service and the DNS records the agents answer from."""
