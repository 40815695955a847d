"""The local VM runner: QEMU with virtio-fs and (hybrid) vsock, for development and tests."""
