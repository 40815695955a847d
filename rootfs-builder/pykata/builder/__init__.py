"""kata-image: builds the guest kernel, initrd and root image that a Kata runtime boots."""
