//! Whether the process of a peer rank still lives.
//!
//! `kill(pid, 0)` alone is not enough: a peer that exited but was not yet reaped by its
//! parent is a zombie and still "exists" (a test that spawns a rank and waits on another
//! would then wait for the timeout), and a pid can be reused. So the start time of the
//! process (field 22 of `/proc/<pid>/stat`) is recorded at join and compared, and the zombie
//! and dead states count as exited.

/// The start time of `pid` in clock ticks since boot, if /proc tells it.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).and_then(|(_, start)| start)
}

/// State letter and start time from `/proc/<pid>/stat`; `None` when it cannot be read.
fn stat(pid: i32) -> Option<(char, Option<u64>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything: parse after
    // the last ')'. What follows is field 3 (state) onwards; field 22 is the start time.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18).and_then(|f| f.parse().ok());
    Some((state, start))
}

/// False once the process `pid` that started at `start` (0: unknown) has exited.
pub fn alive(pid: i32, start: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    if pid as u32 == std::process::id() {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match stat(pid) {
        Some((state, now_start)) => {
            let exited = matches!(state, 'Z' | 'X' | 'x');
            let reused = start != 0 && now_start.is_some_and(|s| s != start);
            !exited && !reused
        }
        // No /proc entry while kill did not say ESRCH: either /proc is absent (trust kill)
        // or the process vanished between the two calls.
        None => !std::path::Path::new("/proc/self/stat").exists(),
    }
}
