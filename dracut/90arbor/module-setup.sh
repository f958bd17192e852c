#!/bin/bash
# dracut module: puts arbor-prepare-root (a small binary that links only libc) and the
# overlay module a kept /usr hotfix needs into the initramfs, with a pre-pivot hook
# that assembles the deployment named by arbor= and stacks it over the root. The
# counterpart of the initramfs-tools hook, for machines that build their initramfs
# with Debian's dracut. Installed as /usr/lib/dracut/modules.d/90arbor/.

# Added to every initramfs by dracut.conf.d/90-arbor.conf: a machine booting
# deployments cannot do without it, and it does nothing on a command line without
# arbor=. Without arbor-prepare-root the build fails rather than leave it out.
check() {
    require_binaries /usr/lib/arbor/arbor-prepare-root || return 1
    return 0
}

depends() {
    return 0
}

installkernel() {
    hostonly='' instmods overlay
}

install() {
    inst_binary /usr/lib/arbor/arbor-prepare-root
    inst_multiple mount mkdir
    # Before the switch to the new root, once it is mounted at $NEWROOT, in the
    # systemd initramfs (dracut-pre-pivot.service) and the shell one alike.
    inst_hook pre-pivot 50 "$moddir/arbor-prepare-root.sh"
}
