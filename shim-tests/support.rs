//! Running fixtures under the shim: each in its own process, always with a
//! timeout (a hang is this project's typical failure), judged by the
//! `key=value` lines it prints.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shim built by `cargo build --release`, refused if older than any source.
pub fn shim() -> PathBuf {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let so = root().join("target/release/libparbudget.so");
            let built = std::fs::metadata(&so)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| {
                    panic!(
                        "{} missing: run `cargo build --release` (scripts/test does)",
                        so.display()
                    )
                });
            let newest = newest_mtime(&root().join("src"));
            assert!(
                built >= newest,
                "{} is older than src/: run `cargo build --release` (scripts/test does)",
                so.display()
            );
            so
        })
        .clone()
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.ends_with("bin") {
            continue; // the launcher's sources do not relink the shim
        }
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata().unwrap().modified().unwrap()
        };
        newest = newest.max(t);
    }
    newest
}

/// Builds the C fixtures once (make is incremental) and returns their folder.
pub fn fixtures() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = root().join("target/fixtures");
            let st = Command::new("make")
                .arg("-s")
                .arg("-C")
                .arg(root().join("c-fixtures"))
                .arg(format!("OUT={}", out.display()))
                .status()
                .expect("make");
            assert!(st.success(), "building c-fixtures failed (scripts/setup installs gcc, clang, libomp-dev, libopenblas-dev)");
            out
        })
        .clone()
}

pub fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

/// The project venv's python (numpy, scipy, scikit-learn, threadpoolctl).
pub fn python() -> String {
    let p = root().join("target/venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: scripts/setup creates the venv",
        p.display()
    );
    p.display().to_string()
}

/// A Python script of the suite (shim-tests/py/).
pub fn py(script: &str) -> String {
    root()
        .join("shim-tests/py")
        .join(script)
        .display()
        .to_string()
}

pub struct Run {
    pub stdout: String,
    pub stderr: String,
    /// Exit code, or 128+signal.
    pub code: i32,
    pub timed_out: bool,
}

impl Run {
    pub fn kv(&self) -> HashMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }
    pub fn get(&self, key: &str) -> String {
        self.kv().get(key).cloned().unwrap_or_else(|| {
            panic!(
                "no {key}= in output:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn int(&self, key: &str) -> i64 {
        self.get(key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not an integer: {}", self.stdout))
    }
    pub fn float(&self, key: &str) -> f64 {
        self.get(key).parse().unwrap()
    }
    /// Our log lines (the shim's stderr), excluding the program's own output.
    pub fn shim_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("parbudget["))
            .collect()
    }
    pub fn ok(&self) -> &Self {
        assert!(
            !self.timed_out,
            "timed out\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert_eq!(
            self.code, 0,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

pub struct Cmd {
    cmd: Command,
    timeout: Duration,
}

/// A command, run without the shim unless `.shim()` is called. The
/// environment is cleaned of every PARBUDGET_ and pool variable first, so the
/// developer's shell cannot change a result.
pub fn cmd(program: &str, args: &[&str]) -> Cmd {
    let mut c = Command::new(program);
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PARBUDGET_")
            || k == "LD_PRELOAD"
            || k.ends_with("_NUM_THREADS")
            || k.ends_with("_MAX_THREADS")
            || k == "VECLIB_MAXIMUM_THREADS"
            || k.starts_with("OMP_")
        {
            c.env_remove(k);
        }
    }
    Cmd {
        cmd: c,
        timeout: Duration::from_secs(60),
    }
}

impl Cmd {
    pub fn shim(mut self) -> Self {
        self.cmd.env("LD_PRELOAD", shim());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }
    pub fn env_remove(mut self, k: &str) -> Self {
        self.cmd.env_remove(k);
        self
    }
    pub fn cores(self, n: u32) -> Self {
        self.env("PARBUDGET_CORES", &n.to_string())
    }
    /// JSON reports of this process and its children into `dir` (r-PID.json).
    pub fn report_into(self, dir: &Path) -> Self {
        self.env("PARBUDGET_REPORT", &format!("{}/r-%p.json", dir.display()))
    }
    pub fn timeout(mut self, secs: u64) -> Self {
        self.timeout = Duration::from_secs(secs);
        self
    }
    pub fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        self.cmd.spawn().expect("spawn")
    }
    /// Runs to completion or timeout; on timeout the whole process group is killed.
    pub fn run(self) -> Run {
        let timeout = self.timeout;
        finish(self.spawn(), timeout)
    }
}

/// Collects the output of a child started by `Cmd::spawn` (its own process
/// group) until it exits, or kills the group after `timeout`. The caller may
/// have taken its stdout already (to read a `ready` line first).
pub fn finish(mut child: std::process::Child, timeout: Duration) -> Run {
    let (out, mut err) = (child.stdout.take(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut out) = out {
            let _ = out.read_to_string(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            // SAFETY: signalling the process group we created.
            unsafe { libc_kill(-(child.id() as i32), 9) };
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Run {
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        code,
        timed_out,
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2).
    unsafe { libc_kill(pid as i32, sig) };
}

/// A process by a pidfd: signals sent through it reach that process only,
/// never another that reuses its pid after it was reaped.
pub struct Pidfd(i32);

impl Pidfd {
    /// `pid` must not be reaped yet (a child still running, or a zombie).
    pub fn open(pid: u32) -> Pidfd {
        // SAFETY: pidfd_open(2) with no flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        Pidfd(fd as i32)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: pidfd_send_signal(2) on our open pidfd, no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

impl Drop for Pidfd {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// A fresh private directory under target/ for one test's files.
pub fn tempdir(name: &str) -> PathBuf {
    let d = root()
        .join("target/test-tmp")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every JSON report in `dir`, parsed.
pub fn reports(dir: &Path) -> Vec<serde_json::Value> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap();
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|err| panic!("{}: {err}\n{text}", e.path().display()))
        })
        .collect();
    // The process the test started first (its parent wrote no report), then
    // by pid: `reports(..)[0]` is the root even when a child's pid wrapped
    // around below its parent's.
    let pids: std::collections::HashSet<i64> = v.iter().filter_map(|r| r["pid"].as_i64()).collect();
    v.sort_by_key(|r| {
        let child = r["ppid"].as_i64().is_some_and(|p| pids.contains(&p));
        (child, r["pid"].as_i64())
    });
    v
}

pub fn runtimes_of<'a>(report: &'a serde_json::Value, imp: &str) -> Vec<&'a serde_json::Value> {
    report["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["impl"] == imp)
        .collect()
}

/// One default-team region (omp_teams_gcc 0) under the shim with a budget of
/// 2, in the ledger named `name`: the tests' way to make, join or probe a
/// named ledger.
pub fn teams_in_ledger(name: &str) -> Cmd {
    cmd(&fixture("omp_teams_gcc"), &["0"])
        .shim()
        .cores(2)
        .env("PARBUDGET_LEDGER", name)
}
