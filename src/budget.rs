//! The core budget: how many cores this process tree may keep busy.
//!
//! Pure arithmetic over the text of `/proc` and `/sys` files, so it can be
//! unit-tested with sample files; the file reading lives in [`detect`].

use crate::stackbuf::StackBuf;
use core::fmt::Write;

/// Above this a `PARBUDGET_CORES` value is treated as a typo, not a machine.
pub const MAX_CORES: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `PARBUDGET_CORES`.
    Env,
    /// The affinity mask (`sched_getaffinity`).
    Affinity,
    /// The cgroup CPU quota, which was lower than the affinity mask.
    Cgroup,
}

impl Source {
    pub fn from_code(c: u32) -> Source {
        match c {
            0 => Source::Env,
            2 => Source::Cgroup,
            _ => Source::Affinity,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::Env => "env",
            Source::Affinity => "affinity",
            Source::Cgroup => "cgroup",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub cores: u32,
    pub source: Source,
}

/// Why a `PARBUDGET_CORES` value was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BadCores {
    NotAnInteger,
    Zero,
    TooLarge,
}

impl BadCores {
    pub fn reason(&self) -> &'static str {
        match self {
            BadCores::NotAnInteger => "not a positive whole number",
            BadCores::Zero => "zero cores",
            BadCores::TooLarge => "larger than 4096",
        }
    }
}

/// Parses `PARBUDGET_CORES`: decimal digits only, surrounding blanks allowed.
/// Signs, fractions, exponents, hex and units are refused rather than guessed.
pub fn parse_cores(value: &[u8]) -> Result<u32, BadCores> {
    let v = trim(value);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(BadCores::NotAnInteger);
    }
    let mut n: u64 = 0;
    for &d in v {
        n = n * 10 + u64::from(d - b'0');
        if n > u64::from(MAX_CORES) {
            return Err(BadCores::TooLarge);
        }
    }
    match n {
        0 => Err(BadCores::Zero),
        n => Ok(n as u32),
    }
}

/// Cores granted by a cgroup v2 `cpu.max` ("max 100000" or "150000 100000").
/// `None` means unlimited or unreadable.
pub fn parse_cpu_max(content: &[u8]) -> Option<u32> {
    let mut fields = trim(content)
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty());
    let quota = fields.next()?;
    let period = fields.next().unwrap_or(b"100000");
    if quota == b"max" {
        return None;
    }
    quota_cores(parse_i64(quota)?, parse_i64(period)?)
}

/// Cores granted by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`
/// (a quota of -1 means unlimited).
pub fn parse_cfs(quota: &[u8], period: &[u8]) -> Option<u32> {
    quota_cores(parse_i64(trim(quota))?, parse_i64(trim(period))?)
}

/// quota/period rounded up, as loky does: 1.5 CPUs of quota keep 2 cores busy
/// part of the time, and a budget of 1 would waste the half.
fn quota_cores(quota: i64, period: i64) -> Option<u32> {
    if quota <= 0 || period <= 0 {
        return None;
    }
    let cores = (quota + period - 1) / period;
    Some(cores.clamp(1, i64::from(MAX_CORES)) as u32)
}

/// Combines the affinity count with the tightest cgroup quota found.
pub fn choose(affinity: u32, quota: Option<u32>) -> Budget {
    let affinity = affinity.max(1);
    match quota {
        Some(q) if q < affinity => Budget {
            cores: q,
            source: Source::Cgroup,
        },
        _ => Budget {
            cores: affinity,
            source: Source::Affinity,
        },
    }
}

/// The cgroup paths of this process from `/proc/self/cgroup`: the v2 path
/// (`0::/path`) and the v1 path of the `cpu` controller (`N:cpu,cpuacct:/path`).
pub fn cgroup_paths(proc_self_cgroup: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in proc_self_cgroup.split(|b| *b == b'\n') {
        let mut parts = line.splitn(3, |b| *b == b':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if ctrls.is_empty() {
            v2 = Some(path);
        } else if ctrls.split(|b| *b == b',').any(|c| c == b"cpu") {
            v1 = Some(path);
        }
    }
    (v2, v1)
}

/// Something that reads small files into a buffer; the real one uses libc,
/// tests use a table of sample files.
pub trait Files {
    fn read<'b>(&self, path: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]>;
}

/// The tightest quota on the way from this process's cgroup up to the root
/// (a parent's limit binds its children too), v2 first, then v1.
pub fn cgroup_quota(files: &dyn Files) -> Option<u32> {
    let mut own = [0u8; 4096];
    let content = files.read(b"/proc/self/cgroup", &mut own)?;
    let (v2, v1) = cgroup_paths(content);
    let mut best: Option<u32> = None;
    let mut keep = |q: Option<u32>| {
        if let Some(q) = q {
            best = Some(best.map_or(q, |b| b.min(q)));
        }
    };
    if let Some(path) = v2 {
        walk_up(path, |dir| {
            let mut p = StackBuf::<1024>::new();
            let _ = write!(p, "/sys/fs/cgroup");
            p.push_bytes(dir);
            p.push_bytes(b"/cpu.max");
            let mut buf = [0u8; 128];
            if !p.truncated {
                keep(files.read(p.as_bytes(), &mut buf).and_then(parse_cpu_max));
            }
        });
    }
    if let Some(path) = v1 {
        for mount in [&b"/sys/fs/cgroup/cpu,cpuacct"[..], b"/sys/fs/cgroup/cpu"] {
            walk_up(path, |dir| {
                let mut q = StackBuf::<1024>::new();
                q.push_bytes(mount);
                q.push_bytes(dir);
                let mut p = StackBuf::<1024>::new();
                p.push_bytes(q.as_bytes());
                q.push_bytes(b"/cpu.cfs_quota_us");
                p.push_bytes(b"/cpu.cfs_period_us");
                let (mut qb, mut pb) = ([0u8; 64], [0u8; 64]);
                if !q.truncated
                    && !p.truncated
                    && let (Some(qv), Some(pv)) = (
                        files.read(q.as_bytes(), &mut qb),
                        files.read(p.as_bytes(), &mut pb),
                    )
                {
                    keep(parse_cfs(qv, pv));
                }
            });
        }
    }
    best
}

/// Calls `f` with `path`, each parent of it, and finally "" (the mount root):
/// "/a/b" gives "/a/b", "/a", "".
fn walk_up(path: &[u8], mut f: impl FnMut(&[u8])) {
    let mut p = trim(path);
    while p.last() == Some(&b'/') {
        p = &p[..p.len() - 1];
    }
    loop {
        f(p);
        if p.is_empty() {
            break;
        }
        match p.iter().rposition(|b| *b == b'/') {
            Some(i) => p = &p[..i],
            None => p = b"",
        }
    }
}

/// Counts the CPUs in an affinity mask given as bytes of a `cpu_set_t`.
pub fn count_cpus(mask: &[u8]) -> u32 {
    mask.iter().map(|b| b.count_ones()).sum()
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn parse_i64(v: &[u8]) -> Option<i64> {
    let (neg, digits) = match v.first() {
        Some(b'-') => (true, &v[1..]),
        _ => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 18 {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Some(if neg { -n } else { n })
}

/// Reads files with plain `open`/`read`: no std, no allocation.
pub struct LibcFiles;

impl Files for LibcFiles {
    fn read<'b>(&self, path: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let mut p = StackBuf::<1100>::new();
        p.push_bytes(path);
        let c = p.as_cstr()?;
        // SAFETY: `c` is a NUL-terminated path on our stack; the fd is closed below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let mut len = 0;
        while len < buf.len() {
            // SAFETY: writes at most the remaining room of `buf`.
            let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        // SAFETY: `fd` was opened above and is not used after this.
        unsafe { libc::close(fd) };
        Some(&buf[..len])
    }
}

/// The CPUs this process may really use: affinity capped by the cgroup quota.
pub fn detect() -> Budget {
    choose(affinity_cpus(), cgroup_quota(&LibcFiles))
}

/// The CPUs in this process's affinity mask: what OpenMP runtimes and
/// OpenBLAS size their pools to when nobody tells them otherwise (none of
/// them reads a cgroup quota).
pub fn affinity_cpus() -> u32 {
    // SAFETY: cpu_set_t is plain bytes; sched_getaffinity fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        if libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let bytes = core::slice::from_raw_parts(
                (&set as *const libc::cpu_set_t).cast::<u8>(),
                core::mem::size_of::<libc::cpu_set_t>(),
            );
            count_cpus(bytes)
        } else {
            // More CPUs than a cpu_set_t holds, or no answer: the online count.
            libc::sysconf(libc::_SC_NPROCESSORS_ONLN).clamp(1, i64::from(MAX_CORES)) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Sample(HashMap<&'static str, &'static str>);
    impl Files for Sample {
        fn read<'b>(&self, path: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
            let s = self.0.get(std::str::from_utf8(path).ok()?)?;
            buf[..s.len()].copy_from_slice(s.as_bytes());
            Some(&buf[..s.len()])
        }
    }

    #[test]
    fn cores_values() {
        assert_eq!(parse_cores(b"8"), Ok(8));
        assert_eq!(parse_cores(b" 2\n"), Ok(2));
        assert_eq!(parse_cores(b"4096"), Ok(4096));
        for bad in ["abc", "-3", "2.5", "1e9", "4 cores", "0x10", "", "+2"] {
            assert_eq!(
                parse_cores(bad.as_bytes()),
                Err(BadCores::NotAnInteger),
                "{bad}"
            );
        }
        assert_eq!(parse_cores(b"0"), Err(BadCores::Zero));
        assert_eq!(parse_cores(b"4097"), Err(BadCores::TooLarge));
        assert_eq!(
            parse_cores(b"99999999999999999999"),
            Err(BadCores::TooLarge)
        );
    }

    #[test]
    fn cpu_max_rounds_up() {
        assert_eq!(parse_cpu_max(b"max 100000\n"), None);
        assert_eq!(parse_cpu_max(b"200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max(b"150000 100000"), Some(2));
        assert_eq!(parse_cpu_max(b"50000 100000"), Some(1));
        assert_eq!(parse_cpu_max(b"garbage"), None);
        assert_eq!(parse_cfs(b"-1\n", b"100000\n"), None);
        assert_eq!(parse_cfs(b"250000\n", b"100000\n"), Some(3));
    }

    #[test]
    fn affinity_and_choice() {
        assert_eq!(count_cpus(&[0b1011, 0, 0x80]), 4);
        assert_eq!(
            choose(64, Some(2)),
            Budget {
                cores: 2,
                source: Source::Cgroup
            }
        );
        assert_eq!(
            choose(2, Some(8)),
            Budget {
                cores: 2,
                source: Source::Affinity
            }
        );
        assert_eq!(
            choose(4, None),
            Budget {
                cores: 4,
                source: Source::Affinity
            }
        );
    }

    #[test]
    fn container_v2_limit_found_in_parent() {
        let files = Sample(HashMap::from([
            ("/proc/self/cgroup", "0::/kubepods/pod1/ctr\n"),
            ("/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n"),
            ("/sys/fs/cgroup/kubepods/pod1/cpu.max", "200000 100000\n"),
            ("/sys/fs/cgroup/cpu.max", "max 100000\n"),
        ]));
        assert_eq!(cgroup_quota(&files), Some(2));
    }

    #[test]
    fn namespaced_v2_root() {
        let files = Sample(HashMap::from([
            ("/proc/self/cgroup", "0::/\n"),
            ("/sys/fs/cgroup/cpu.max", "300000 100000\n"),
        ]));
        assert_eq!(cgroup_quota(&files), Some(3));
    }

    #[test]
    fn v1_cfs_quota() {
        let files = Sample(HashMap::from([
            (
                "/proc/self/cgroup",
                "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "150000\n",
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
        ]));
        assert_eq!(cgroup_quota(&files), Some(2));
    }

    #[test]
    fn no_cgroup_files_means_no_quota() {
        let files = Sample(HashMap::from([("/proc/self/cgroup", "0::/user.slice\n")]));
        assert_eq!(cgroup_quota(&files), None);
    }
}
