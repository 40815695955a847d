#!/bin/busybox sh
# PID 1 of the vsock test guest: load the virtio/vsock modules, mount the shared folder,
# start the vsock services and idle (PID 1 must never exit).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r module; do
    insmod "/lib/modules/$module" || echo "guest-echo: insmod $module failed"
done < /lib/modules/load.order
mkdir -p /shared
if mount -t virtiofs kataShared /shared; then
    echo "written by the guest" > /shared/guest-was-here
    echo "guest-echo: kataShared mounted"
fi
/bin/vsock-echo
echo "guest-echo: ready"
while true; do sleep 3600; done
