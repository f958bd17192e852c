//! The only `unsafe` in arbor: system calls that rustix does not wrap.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Starts writeback of a file's dirty pages without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Not a durability guarantee: the
/// transaction's `syncfs` is. It lets the disk work while the next files are hashed,
/// instead of all at once at the end.
pub fn start_writeback(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed, open fd; no memory is passed.
    let r = unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Restores the default action of SIGPIPE (the Rust runtime ignores it), so that
/// `arbor status | head` ends quietly when `head` stops reading, as other command-line
/// tools do, instead of panicking on a failed write.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL at startup, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ignores SIGPIPE: a server (`arbor serve`) must see a client that hung up as an
/// EPIPE on that one connection, never die of the signal. Called at its start, before
/// the runtime's threads.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN at startup, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Pins glibc's mmap threshold at its default (128 KiB). Left dynamic, glibc raises it
/// to the size of the first large buffer freed, after which every thread's read
/// buffers (a commit's worker threads, the daemon's) stay resident in per-thread
/// arenas: a commit of a large tree peaked 7 MB higher for nothing.
pub fn pin_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; called at startup.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Gives the memory a finished piece of work freed back to the system: the daemon
/// calls it after each transaction, since the worker thread's allocator arena would
/// otherwise keep the freed pages resident. (The clean pages of the binary's own code
/// that the work ran stay mapped: the kernel reclaims them under pressure like any
/// page cache, so dropping them ourselves bought a smaller RSS figure, not memory a
/// user could have; docs/decisions.md.)
pub fn release_free_memory() {
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads a kernel and its initramfs to be started by kexec (`kexec_file_load`), with
/// `cmdline` as its command line; `systemctl kexec` then starts it after the shutdown.
/// The kernel checks the image itself (and its signature where lockdown asks for one),
/// so no kexec tool is needed.
pub fn kexec_file_load(
    kernel: BorrowedFd<'_>,
    initrd: Option<BorrowedFd<'_>>,
    cmdline: &std::ffi::CStr,
) -> io::Result<()> {
    const KEXEC_FILE_NO_INITRAMFS: libc::c_ulong = 4;
    let len = cmdline.to_bytes_with_nul().len();
    let (initrd, flags) = match initrd {
        Some(fd) => (fd.as_raw_fd(), 0),
        None => (-1, KEXEC_FILE_NO_INITRAMFS),
    };
    // SAFETY: borrowed open fds (or -1 with the flag that says there is no
    // initramfs), and a NUL-terminated string whose length (with the NUL, as the call
    // wants) is passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd,
            len,
            cmdline.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
