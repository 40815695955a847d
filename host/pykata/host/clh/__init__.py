"""kata-clh: answers the Cloud Hypervisor REST API and runs the VM with QEMU."""
