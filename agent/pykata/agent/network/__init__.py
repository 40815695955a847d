"""The guest network the host configures: links, addresses, routes, neighbours, iptables."""
