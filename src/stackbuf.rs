//! A fixed-size text buffer on the stack.
//!
//! Log lines, paths and report fragments are built here instead of in a
//! `String` because they are written before `main`, inside hooks and in a
//! forked child, where an allocation may take a lock another thread held.

use core::fmt;

#[derive(Clone)]
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Set when something did not fit; the text is cut, never overrun.
    pub truncated: bool,
}

impl<const N: usize> StackBuf<N> {
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let room = N - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        if n < bytes.len() {
            self.truncated = true;
        }
    }

    /// The text with a terminating NUL, for libc calls; `None` if it does not fit
    /// or holds a NUL of its own.
    pub fn as_cstr(&mut self) -> Option<&core::ffi::CStr> {
        if self.len >= N || self.buf[..self.len].contains(&0) {
            return None;
        }
        self.buf[self.len] = 0;
        core::ffi::CStr::from_bytes_with_nul(&self.buf[..=self.len]).ok()
    }
}

impl<const N: usize> fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

/// Displays bytes (a path, an environment value) as a quoted, escaped string,
/// so a log line stays one line and greppable whatever the value holds.
pub struct Quoted<'a>(pub &'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            match b {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                0x20..=0x7e => f.write_fmt(format_args!("{}", b as char))?,
                _ => f.write_fmt(format_args!("\\x{:02x}", b))?,
            }
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn cuts_instead_of_overrunning() {
        let mut b = StackBuf::<8>::new();
        write!(b, "0123456789").unwrap();
        assert_eq!(b.as_bytes(), b"01234567");
        assert!(b.truncated);
        assert!(b.as_cstr().is_none());
    }

    #[test]
    fn quoted_escapes_controls_and_quotes() {
        let mut b = StackBuf::<64>::new();
        write!(b, "{}", Quoted(b"a\"b\n\\")).unwrap();
        assert_eq!(b.as_bytes(), br#""a\"b\x0a\\""#);
    }
}
