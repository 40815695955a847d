"""Hot-plugged devices: kernel uevents, where each kind of device shows up, spec rewriting.

``uevent`` reads the kernel's uevents (pyudev, ``source="kernel"``: the guest runs no udevd),
``registry`` answers "wait until this device exists" (sysfs first, then the uevents), ``pci``
and ``scsi`` turn Kata's addresses into sysfs paths and matchers, ``blockdev`` finds the
``/dev`` node of each kind of disk and ``spec`` rewrites a container's devices to the guest's
major/minor numbers.
"""
