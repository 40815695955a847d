"""A tiny test guest for the vsock backend: Debian's cloud kernel, busybox, vsock services."""
