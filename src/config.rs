//! `PARBUDGET_*` settings: read with `getenv` (not `std::env`, which takes a
//! lock and allocates) and parsed by pure functions. A bad value is never fatal:
//! the caller logs one line naming the variable, the value and what is used.

use crate::stackbuf::StackBuf;

/// What a forked child does when the forking thread had run a libgomp team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkPolicy {
    /// Free the forking thread's libgomp pool just before fork (the child and
    /// the parent then build fresh pools with full teams); where that is
    /// impossible, fall back to `Serial`.
    Fresh,
    /// The child's regions on the inherited thread run with one thread where
    /// their body allows it; a region that counts on more exits the child.
    Serial,
    /// The child exits with a message at its first region on that thread.
    Abort,
    /// Only warn (the child will hang, as it would without the shim).
    Warn,
}

impl ForkPolicy {
    pub fn parse(v: &[u8]) -> Option<ForkPolicy> {
        match v.trim_ascii() {
            b"fresh" => Some(ForkPolicy::Fresh),
            b"serial" => Some(ForkPolicy::Serial),
            b"abort" => Some(ForkPolicy::Abort),
            b"warn" => Some(ForkPolicy::Warn),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ForkPolicy::Fresh => "fresh",
            ForkPolicy::Serial => "serial",
            ForkPolicy::Abort => "abort",
            ForkPolicy::Warn => "warn",
        }
    }
}

/// Checks a `PARBUDGET_LOG` spec in env_logger syntax: comma-separated
/// directives, each `level`, `target` or `target=level`. Returns false if any
/// level word is unknown (env_filter would silently drop it).
pub fn log_spec_ok(spec: &str) -> bool {
    let spec = spec.split('/').next().unwrap_or("");
    spec.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .all(|d| {
            match d.split_once('=') {
                Some((target, level)) => !target.is_empty() && is_level(level.trim()),
                // A lone word is a level if it is one, else a target name; a
                // target must look like a Rust path to be taken as one.
                None => {
                    is_level(d)
                        || (d.starts_with("parbudget")
                            && d.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                }
            }
        })
}

fn is_level(l: &str) -> bool {
    ["off", "error", "warn", "info", "debug", "trace"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(l))
}

/// Signal names accepted by `PARBUDGET_REPORT_SIGNAL` (with or without "SIG").
pub fn parse_signal(v: &[u8]) -> Option<libc::c_int> {
    let v = v.trim_ascii();
    let v = v.strip_prefix(b"SIG").unwrap_or(v);
    Some(match v {
        b"USR1" => libc::SIGUSR1,
        b"USR2" => libc::SIGUSR2,
        b"HUP" => libc::SIGHUP,
        b"URG" => libc::SIGURG,
        b"WINCH" => libc::SIGWINCH,
        b"PWR" => libc::SIGPWR,
        _ => return None,
    })
}

/// The value of an environment variable, copied, or `None` when unset or empty
/// (an empty value means unset).
pub fn getenv(name: &core::ffi::CStr) -> Option<StackBuf<1024>> {
    // SAFETY: getenv reads the environment; we copy the value out at once.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let bytes = unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes();
    if bytes.is_empty() {
        return None;
    }
    let mut b = StackBuf::new();
    b.push_bytes(bytes);
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_policies() {
        assert_eq!(ForkPolicy::parse(b"serial"), Some(ForkPolicy::Serial));
        assert_eq!(ForkPolicy::parse(b" abort\n"), Some(ForkPolicy::Abort));
        assert_eq!(ForkPolicy::parse(b"warn"), Some(ForkPolicy::Warn));
        assert_eq!(ForkPolicy::parse(b"proxy"), None);
        assert_eq!(ForkPolicy::parse(b"SERIAL"), None);
    }

    #[test]
    fn log_specs() {
        for ok in [
            "info",
            "DEBUG",
            "warn,parbudget::hooks=trace",
            "off",
            "parbudget=debug",
            "error/regex",
        ] {
            assert!(log_spec_ok(ok), "{ok}");
        }
        for bad in ["loud", "info,verbose", "x=shout", "=info", "3"] {
            assert!(!log_spec_ok(bad), "{bad}");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal(b"USR2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal(b"SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal(b"KILL"), None);
        assert_eq!(parse_signal(b"usr2"), None);
    }
}
