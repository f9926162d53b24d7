//! Giving back the memory that start-up used and serving does not.
//!
//! Start-up runs code the request path never runs again: argument parsing, the first
//! certificate request, the control-plane client's set-up, compiling the policy bundle.
//! The kernel maps a binary's code in 64 KiB runs around each page touched (fault-around),
//! so once a proxy serves, most of its 12 MB of code is resident and counted in its RSS,
//! although a steady proxy runs a few megabytes of it.
//!
//! [`release`] drops the mappings of the executable's clean, read-only pages: its code and
//! read-only data. Nothing is lost, since those pages are the file's own contents.
//! Shared libraries are left alone: their pages are shared with every process on the
//! machine anyway, and a library's mapping could in principle be unmapped and its
//! addresses reused between reading `smaps` and dropping, which the executable's cannot.
//! A page the proxy runs again comes back at its next touch, from the page cache (a minor
//! fault of a few microseconds), so what stays resident is what the proxy uses. It then
//! hands the allocator's free memory back to the kernel (glibc's `malloc_trim`). [`run`]
//! does this a second after each snapshot has been applied (its bundles compiled), and at
//! most once a minute.
//!
//! This is the one module of the crate that needs `unsafe`: `madvise` and `malloc_trim`
//! have no safe wrapper, because dropping pages is only sound for pages nobody wrote,
//! which the caller has to establish (here, from `/proc/self/smaps`).
#![allow(unsafe_code)]

use std::time::Duration;

/// How long after a snapshot has been applied (its bundles compiled, which the snapshot
/// count waits for) the proxy is taken to be serving.
const SETTLE: Duration = Duration::from_secs(1);
/// The least time between two releases.
const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// A mapping whose pages can be dropped.
#[derive(Debug, PartialEq)]
struct Droppable {
    start: usize,
    len: usize,
}

/// What one release gave back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Released {
    /// Resident file-backed kilobytes whose mappings were dropped.
    pub file_kb: u64,
    /// Mappings dropped.
    pub mappings: usize,
}

/// Releases memory after start-up, then after each snapshot applied (whose bundles were
/// just compiled), at most once per [`MIN_INTERVAL`]. Runs until the process ends.
pub async fn run(mut applied: tokio::sync::watch::Receiver<u64>) {
    loop {
        if applied.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(SETTLE).await;
        // Reading smaps and dropping mappings take a few milliseconds of system calls:
        // off the traffic path, on the blocking pool.
        match tokio::task::spawn_blocking(release).await {
            Ok(Ok(r)) => tracing::debug!(
                file_kb = r.file_kb,
                mappings = r.mappings,
                "released start-up memory"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release start-up memory (is /proc mounted?); the proxy keeps working with a larger RSS");
                return;
            }
            Err(_) => return,
        }
        tokio::time::sleep(MIN_INTERVAL.saturating_sub(SETTLE)).await;
    }
}

/// Drops the mappings of the executable's clean, private, read-only mappings, then returns
/// the allocator's free pages to the kernel.
pub fn release() -> std::io::Result<Released> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for (m, resident_kb) in droppable(&smaps, &exe.to_string_lossy()) {
        // SAFETY: `droppable` only yields whole mappings of the executable that are private,
        // not writable and hold no anonymous (copied-on-write) page, so every page of the
        // range equals the file's contents and is read back from it by the next touch. No
        // code writes such pages (they are not writable), so none can become private
        // between reading smaps and this call; and the executable is never unmapped, so
        // the range cannot have become another mapping meanwhile.
        let rc = unsafe {
            nix::libc::madvise(
                m.start as *mut nix::libc::c_void,
                m.len,
                nix::libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            released.file_kb += resident_kb;
            released.mappings += 1;
        }
    }
    // SAFETY: `malloc_trim` only returns free memory of glibc's own heap to the kernel;
    // it takes the allocator's locks like any allocation.
    #[cfg(target_env = "gnu")]
    unsafe {
        nix::libc::malloc_trim(0);
    }
    Ok(released)
}

/// The mappings of `smaps` whose pages can be dropped, each with its resident kilobytes:
/// the executable's (`exe`), private, not writable, with no anonymous page.
fn droppable(smaps: &str, exe: &str) -> Vec<(Droppable, u64)> {
    // Every mapping in order: its range, whether it qualifies so far, its resident kB.
    let mut mappings: Vec<(Droppable, bool, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: `start-end perms offset dev inode [path]`. The path is
            // the rest of the line after the five fields, which one space each separates
            // (it may hold spaces, and ends in " (deleted)" when the file was replaced).
            let perms = fields.next().unwrap_or("").as_bytes();
            let path = line.splitn(6, ' ').nth(5).unwrap_or("").trim();
            let mapping = match (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                (Ok(start), Ok(end)) if end > start => (
                    Droppable {
                        start,
                        len: end - start,
                    },
                    matches!(perms, [b'r', b'-', _, b'p']) && path == exe,
                    0,
                ),
                // Unreadable: its lines below must not count for the mapping before.
                _ => (Droppable { start: 0, len: 0 }, false, 0),
            };
            mappings.push(mapping);
            continue;
        }
        let Some((_, qualifies, rss)) = mappings.last_mut() else {
            continue;
        };
        let kb = fields.next().and_then(|v| v.parse::<u64>().ok());
        match first {
            "Rss:" => *rss = kb.unwrap_or(0),
            // A page copied on write (a relocated one) differs from the file: keep the
            // whole mapping. So does a locked or swapped one.
            "Anonymous:" | "Locked:" | "Swap:" if kb != Some(0) => *qualifies = false,
            _ => {}
        }
    }
    mappings
        .into_iter()
        .filter(|(_, qualifies, _)| *qualifies)
        .map(|(range, _, rss)| (range, rss))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:01 123 /usr/bin/vigil-proxy
Size:               1024 kB
Rss:                 900 kB
Anonymous:             0 kB
Locked:                0 kB
55d0c0100000-55d0c0900000 r-xp 00100000 fe:01 123 /usr/bin/vigil-proxy
Size:               8192 kB
Rss:                7000 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                0 kB
55d0c0900000-55d0c0a00000 r--p 00900000 fe:01 123 /usr/bin/vigil-proxy
Size:               1024 kB
Rss:                1024 kB
Anonymous:           512 kB
Locked:                0 kB
55d0c0a00000-55d0c0a10000 rw-p 00a00000 fe:01 123 /usr/bin/vigil-proxy
Size:                 64 kB
Rss:                  64 kB
Anonymous:            64 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Rss:                  40 kB
Anonymous:            40 kB
7f0000000000-7f0000001000 r--s 00000000 fe:01 9 /etc/shared-thing
Rss:                   4 kB
Anonymous:             0 kB
7fff00000000-7fff00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_read_only_file_mappings_are_dropped() {
        let got = droppable(SMAPS, "/usr/bin/vigil-proxy");
        assert_eq!(
            got,
            vec![
                (
                    Droppable {
                        start: 0x55d0c0000000,
                        len: 0x100000
                    },
                    900
                ),
                (
                    Droppable {
                        start: 0x55d0c0100000,
                        len: 0x800000
                    },
                    7000
                ),
            ],
            "the relocated read-only part (anonymous pages), writable data, the heap, a shared mapping and the vdso stay"
        );
        assert_eq!(
            droppable(SMAPS, "/usr/lib/other").len(),
            0,
            "another file's mappings stay"
        );
    }

    /// Dropping this test process's code mappings loses nothing: the code runs on, and
    /// the resident file-backed memory shrinks.
    #[test]
    fn releasing_keeps_the_process_running_and_lowers_its_file_backed_rss() {
        fn file_backed_kb() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("reading status");
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("RssFile in /proc/self/status")
        }
        let before = file_backed_kb();
        let r = release().expect("releasing");
        let after = file_backed_kb();
        assert!(r.mappings > 0, "the test binary's code is droppable");
        assert!(
            after < before,
            "file-backed RSS should fall: {before} kB before, {after} kB after"
        );
        // Code paged back in on demand still runs, allocation included.
        let s: String = (0..1000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        assert_eq!(s.len(), 1000);
        assert_eq!(format!("{:?}", droppable("", "/x")), "[]");
    }
}
