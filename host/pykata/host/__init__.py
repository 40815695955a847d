"""Host-side tools: the kata-agent-ctl CLI, the VM runner and the vhost-user-vsock backend."""
