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

/// Gives memory a finished piece of work no longer needs back to the system. The daemon
/// calls it after each transaction:
/// - the worker thread's allocator arena would keep freed pages resident;
/// - the code and read-only data of its binary that the work ran (TUF, HTTP, TLS,
///   SQLite, checkout) stay mapped in: after one update check an idle arbord held
///   14 MB of such clean pages against 8 MB before, 1.4 MB of anonymous memory. They
///   are dropped here; the next transaction reads them back from the page cache.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only returns free pages of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (start, end) in clean_mappings_of(&smaps, &exe.to_string_lossy()) {
        // SAFETY: the range maps our own executable read-only and privately, and
        // holds no anonymous (copied-on-write) page, such as relocated data the loader
        // wrote before making it read-only: dropping its pages only makes the next
        // access read them again from the file.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// The address ranges that `/proc/self/smaps` shows mapping `exe` read-only and
/// private with no anonymous page.
fn clean_mappings_of(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            // A mapping's header: range, perms, offset, device, inode, path.
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            let read_only = perms.as_bytes().get(1) == Some(&b'-') && perms.ends_with('p');
            current = (path == exe && read_only).then_some((a, b));
        } else if first == "Anonymous:"
            && let Some(range) = current.take()
            && f.next() == Some("0")
        {
            out.push(range);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_mappings_of_the_binary_are_dropped() {
        let smaps = "\
55d0a000-55d0b000 r--p 00000000 fd:01 42 /usr/bin/arbord
Rss:                   4 kB
Anonymous:             0 kB
55d0b000-55d0f000 r-xp 00001000 fd:01 42 /usr/bin/arbord
Anonymous:             0 kB
55d0f000-55d10000 r--p 00005000 fd:01 42 /usr/bin/arbord
Anonymous:             4 kB
55d10000-55d11000 rw-p 00006000 fd:01 42 /usr/bin/arbord
Anonymous:             0 kB
7f00000-7f01000 r-xp 00000000 fd:01 7 /usr/lib/libc.so.6
Anonymous:             0 kB
7f02000-7f03000 r--s 00000000 fd:01 42 /usr/bin/arbord
Anonymous:             0 kB
7f04000-7f05000 rw-p 00000000 00:00 0 [heap]
Anonymous:             4 kB
";
        // Not the relocated data (anonymous pages), the writable data, another file,
        // a shared mapping or the heap.
        assert_eq!(
            clean_mappings_of(smaps, "/usr/bin/arbord"),
            vec![(0x55d0a000, 0x55d0b000), (0x55d0b000, 0x55d0f000)]
        );
    }

    #[test]
    fn dropping_our_own_clean_pages_is_harmless() {
        let before: Vec<u32> = (0..1000).collect();
        release_free_memory();
        // Code, constants and data all still work after their pages were dropped.
        let sum: u32 = before.iter().sum();
        assert_eq!(sum, 499_500);
        assert_eq!(format!("{:?}", Some("x")), "Some(\"x\")");
    }
}
