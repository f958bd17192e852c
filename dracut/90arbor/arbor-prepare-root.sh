#!/bin/sh
# dracut pre-pivot hook (sourced by dracut with dracut-lib.sh loaded), run once the
# root file system is mounted at $NEWROOT. When the kernel command line has arbor=,
# that mount is the physical root (the sysroot): assemble the deployment it names and
# stack it over $NEWROOT, so that the switch to the new root starts the deployment.
# A check that cannot run stops the boot with a message (die): it is never taken for
# "no arbor= on the command line", and the physical root is never booted instead.

arbor_cmdline=
if [ ! -r /proc/cmdline ]; then
    die "arbor: cannot read /proc/cmdline, so cannot tell whether to boot a deployment"
fi
# read fails at a last line without a newline, which still fills arbor_cmdline.
read -r arbor_cmdline < /proc/cmdline || true
case " ${arbor_cmdline} " in
*" arbor="*)
    arbor_prepare=/usr/lib/arbor/arbor-prepare-root
    arbor_newroot=${NEWROOT:-/sysroot}
    # Milliseconds since boot, from /proc/uptime: what the boot-time benchmark reads.
    read -r arbor_up _ < /proc/uptime
    arbor_started=$(( ${arbor_up%.*} * 100 + 1${arbor_up#*.} - 100 ))
    if [ ! -x "${arbor_prepare}" ]; then
        die "arbor: arbor= is on the kernel command line but ${arbor_prepare} is not in the initramfs; rebuild it with arbor installed (dracut -f)"
    elif ! mkdir -p /arbor-root; then
        die "arbor: cannot create /arbor-root"
    # systemd's initramfs makes every mount shared, and a mount under a shared parent
    # cannot be moved: the assembled root must be private to move over the root.
    elif ! mount --make-rprivate /; then
        die "arbor: cannot make the initramfs's mounts private"
    # Makes the physical root writable if it was mounted read-only (/etc is edited in
    # place), binds the deployment at /arbor-root, its /usr read-only (with a kept
    # hotfix overlay), /var from the stateroot, and the physical root at
    # /arbor-root/sysroot.
    elif ! "${arbor_prepare}" --sysroot "${arbor_newroot}" --cmdline /proc/cmdline --target /arbor-root; then
        die "arbor: prepare-root failed (see above)"
    # Stack the assembled root over $NEWROOT: the switch takes the topmost mount.
    elif ! mount --move /arbor-root "${arbor_newroot}"; then
        die "arbor: moving the assembled root onto ${arbor_newroot} failed"
    else
        read -r arbor_up _ < /proc/uptime
        arbor_ms=$(( (${arbor_up%.*} * 100 + 1${arbor_up#*.} - 100 - arbor_started) * 10 ))
        echo "arbor: the deployment's root took ${arbor_ms} ms to assemble" > /dev/kmsg
        echo "arbor: the deployment's root took ${arbor_ms} ms to assemble"
    fi
    ;;
esac
