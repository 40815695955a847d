"""A vhost-user-vsock backend that exposes a guest's vsock as a hybrid vsock unix socket.

QEMU's ``vhost-user-vsock-pci`` hands the guest's rx/tx virtqueues to this process; host
programs reach guest ports by connecting to a unix socket and writing ``CONNECT <port>\\n``
(the Firecracker / Cloud Hypervisor convention Kata shims use).
"""
