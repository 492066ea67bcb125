//! The log writer: one line per event, `parbudget[PID] LEVEL event key=value`,
//! formatted on the stack and written with a single `write(2)` to stderr.
//!
//! Why not env_logger's writer: it goes through std's stderr lock and
//! allocates, which is unsafe before `main`, inside an allocator-adjacent hook
//! and in a forked child whose other threads vanished holding those locks.
//! The filter is env_filter (env_logger's engine), so `PARBUDGET_LOG` accepts
//! the same syntax as `RUST_LOG`. Until init installs it, nothing is logged.

use crate::stackbuf::StackBuf;
use core::fmt::Write;
use log::{LevelFilter, Log, Metadata, Record};
use std::sync::OnceLock;

struct RawLogger {
    filter: OnceLock<env_filter::Filter>,
}

static LOGGER: RawLogger = RawLogger {
    filter: OnceLock::new(),
};

impl Log for RawLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.get().is_some_and(|f| f.enabled(metadata))
    }

    fn log(&self, record: &Record<'_>) {
        if !self.filter.get().is_some_and(|f| f.matches(record)) {
            return;
        }
        let mut line = StackBuf::<1024>::new();
        // SAFETY: getpid has no preconditions; it is asked each time so a
        // forked child logs its own pid.
        let pid = unsafe { libc::getpid() };
        let _ = write!(
            line,
            "parbudget[{}] {} {}",
            pid,
            record.level(),
            record.args()
        );
        if line.truncated {
            // Keep the line a line: cut, mark, end it.
            line.clear();
            let _ = write!(line, "parbudget[{}] {} ", pid, record.level());
            let mut body = StackBuf::<960>::new();
            let _ = write!(body, "{}", record.args());
            line.push_bytes(body.as_bytes());
            line.push_bytes(b" ...");
        }
        line.push_bytes(b"\n");
        write_stderr(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Writes all of `bytes` to fd 2 (see `write_all`).
pub fn write_stderr(bytes: &[u8]) {
    write_all(2, bytes);
}

/// Writes all of `bytes` to `fd` with write(2), retrying short writes and
/// EINTR; stops on any other error. Async-signal-safe.
pub fn write_all(fd: i32, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: writes from a valid slice; a closed fd just ends the loop.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            // SAFETY: reading errno of this thread.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// Installs the logger with a filter spec already validated by
/// [`crate::config::log_spec_ok`]. Called once, from init.
pub fn install(spec: &str) {
    let warn_only = || {
        env_filter::Builder::new()
            .filter_level(LevelFilter::Warn)
            .build()
    };
    // The default spec needs no parser (every process starts here).
    let filter = if spec == "warn" {
        warn_only()
    } else {
        match env_filter::Builder::new().try_parse(spec) {
            Ok(b) => b.build(),
            Err(_) => warn_only(),
        }
    };
    let max = filter.filter();
    let _ = LOGGER.filter.set(filter);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(max);
    }
}
