//! `parbudget`: run a program under the budget, or ask what it loads.
//!
//! This binary must never link the shim: the shim exports `pthread_create`,
//! `fork` and `_exit`, which would interpose the launcher itself. The library
//! target is a cdylib only, so it cannot be linked here by accident.

use serde_json::Value;
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

const USAGE: &str = "\
usage: parbudget run [--cores N] [--log LEVEL] [--report PATH] [--fork POLICY] -- CMD [ARGS...]
       parbudget doctor [--json] [--cores N] -- CMD [ARGS...]
       parbudget --help | --version

run     exec CMD with libparbudget.so first in LD_PRELOAD and the PARBUDGET_*
        variables set; signals and the exit code are CMD's own.
doctor  run CMD under the shim with reporting on, then print what it loaded:
        the budget, each runtime copy (kind, path, version), the threads each
        made, clamps, conflicts, fork hazards, and advice. CMD's own output goes
        to stderr so stdout holds only the summary (or, with --json, the report).

options:
  --cores N       the core budget (PARBUDGET_CORES); default: affinity and cgroup quota
  --log LEVEL     error|warn|info|debug|trace or env_logger directives (PARBUDGET_LOG)
  --report PATH   'stderr' for a table at exit, or a JSON file; %p is the pid (PARBUDGET_REPORT)
  --fork POLICY   fresh|serial|abort|warn: a fork after GNU OpenMP (PARBUDGET_FORK)
  --json          doctor: print the report JSON only, on stdout

The shim is found beside this binary, in ../lib, or at PARBUDGET_LIB.";

struct Opts {
    cores: Option<String>,
    log: Option<String>,
    report: Option<String>,
    fork: Option<String>,
    json: bool,
    cmd: Vec<OsString>,
}

fn die(msg: &str) -> ExitCode {
    eprintln!("parbudget: {msg} (see parbudget --help)");
    ExitCode::from(2)
}

fn parse(args: &[OsString], doctor: bool) -> Result<Opts, String> {
    let mut o = Opts {
        cores: None,
        log: None,
        report: None,
        fork: None,
        json: false,
        cmd: vec![],
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy().to_string();
        if a == "--" {
            o.cmd = args[i + 1..].to_vec();
            break;
        }
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            i += 1;
            args.get(i)
                .map(|v| v.to_string_lossy().to_string())
                .ok_or(format!("{name} needs a value"))
        };
        match key.as_str() {
            "--cores" => {
                let v = value("--cores")?;
                match v.parse::<u32>() {
                    Ok(n) if (1..=4096).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => {
                        o.cores = Some(v)
                    }
                    _ => {
                        return Err(format!(
                            "bad --cores value '{v}': expected a whole number from 1 to 4096"
                        ));
                    }
                }
            }
            "--log" => o.log = Some(value("--log")?),
            "--report" if !doctor => o.report = Some(value("--report")?),
            "--fork" => {
                let v = value("--fork")?;
                if !["fresh", "serial", "abort", "warn"].contains(&v.as_str()) {
                    return Err(format!(
                        "bad --fork value '{v}': expected fresh, serial, abort or warn"
                    ));
                }
                o.fork = Some(v);
            }
            "--json" if doctor => o.json = true,
            _ if a.starts_with('-') => return Err(format!("unknown option '{a}'")),
            _ => {
                // A command without "--" is accepted too.
                o.cmd = args[i..].to_vec();
                break;
            }
        }
        i += 1;
    }
    if o.cmd.is_empty() {
        return Err("missing command: put it after --".into());
    }
    Ok(o)
}

/// libparbudget.so: beside the binary, in ../lib, or PARBUDGET_LIB.
fn find_shim() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PARBUDGET_LIB").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(std::fs::canonicalize(&p).unwrap_or(p))
        } else {
            Err(format!("PARBUDGET_LIB={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own path: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for cand in [
        dir.join("libparbudget.so"),
        dir.join("../lib/libparbudget.so"),
    ] {
        if cand.is_file() {
            return Ok(std::fs::canonicalize(&cand).unwrap_or(cand));
        }
    }
    Err(format!(
        "libparbudget.so not found beside {} or in ../lib; set PARBUDGET_LIB",
        exe.display()
    ))
}

/// Our shim first, then the user's entries (minus any other copy of ours).
fn compose_preload(shim: &Path, existing: Option<OsString>) -> OsString {
    let mut out = OsString::from(shim);
    if let Some(e) = existing {
        for entry in e
            .to_string_lossy()
            .split([':', ' '])
            .filter(|s| !s.is_empty())
        {
            if Path::new(entry)
                .file_name()
                .is_some_and(|n| n == "libparbudget.so")
            {
                continue;
            }
            out.push(":");
            out.push(entry);
        }
    }
    out
}

fn command(o: &Opts, shim: &Path) -> Command {
    let mut c = Command::new(&o.cmd[0]);
    c.args(&o.cmd[1..]);
    c.env(
        "LD_PRELOAD",
        compose_preload(shim, std::env::var_os("LD_PRELOAD")),
    );
    for (k, v) in [
        ("PARBUDGET_CORES", &o.cores),
        ("PARBUDGET_LOG", &o.log),
        ("PARBUDGET_REPORT", &o.report),
        ("PARBUDGET_FORK", &o.fork),
    ] {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c
}

fn run(args: &[OsString]) -> ExitCode {
    let o = match parse(args, false) {
        Ok(o) => o,
        Err(e) => return die(&e),
    };
    let shim = match find_shim() {
        Ok(s) => s,
        Err(e) => return die(&e),
    };
    let err = command(&o, &shim).exec();
    eprintln!(
        "parbudget: cannot run {}: {err}",
        o.cmd[0].to_string_lossy()
    );
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

fn doctor(args: &[OsString]) -> ExitCode {
    let mut o = match parse(args, true) {
        Ok(o) => o,
        Err(e) => return die(&e),
    };
    let shim = match find_shim() {
        Ok(s) => s,
        Err(e) => return die(&e),
    };
    let dir = std::env::temp_dir().join(format!("parbudget-doctor-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        return die(&format!("cannot create {}: {e}", dir.display()));
    }
    o.report = Some(format!("{}/r-%p.json", dir.display()));
    let mut c = command(&o, &shim);
    // The program's stdout goes to our stderr: our stdout is the summary.
    c.stdout(Stdio::from(
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .expect("dup stderr"),
    ));
    let status = match c.status() {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return die(&format!("cannot run {}: {e}", o.cmd[0].to_string_lossy()));
        }
    };
    let mut reports: Vec<Value> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    reports.sort_by_key(|r| r["pid"].as_i64());
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    // The main report: the process whose parent is us (exec keeps the pid).
    let me = std::process::id() as i64;
    let main_idx = reports
        .iter()
        .position(|r| r["ppid"].as_i64() == Some(me))
        .or(if reports.is_empty() { None } else { Some(0) });
    let Some(main_idx) = main_idx else {
        eprintln!(
            "parbudget: no report was written (the program may have been killed by a signal or replaced the environment)"
        );
        return ExitCode::from(code.clamp(0, 255) as u8);
    };
    let mut main = reports.remove(main_idx);
    if o.json {
        main["children"] = Value::Array(reports);
        main["exit_code"] = Value::from(code);
        println!("{}", serde_json::to_string_pretty(&main).unwrap());
    } else {
        print!("{}", summary(&main, &reports, code));
    }
    ExitCode::from(code.clamp(0, 255) as u8)
}

use std::os::fd::AsFd;

/// Version of a runtime copy where it can be read: the Python distribution
/// that ships it (numpy.libs -> numpy-X.dist-info), else the file's soname
/// version after resolving links.
fn version_of(path: &str) -> Option<String> {
    let p = Path::new(path);
    for anc in p.ancestors() {
        let Some(name) = anc.file_name().map(|n| n.to_string_lossy().to_string()) else {
            continue;
        };
        if let Some(pkg) = name.strip_suffix(".libs") {
            let site = anc.parent()?;
            let norm = pkg.replace('-', "_");
            for e in std::fs::read_dir(site).ok()?.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if let Some(rest) = n.strip_suffix(".dist-info") {
                    if let Some((d, v)) = rest.rsplit_once('-') {
                        if d.eq_ignore_ascii_case(&norm) {
                            return Some(format!("{pkg} {v}"));
                        }
                    }
                }
            }
        }
    }
    let real = std::fs::canonicalize(p).ok()?;
    let file = real.file_name()?.to_string_lossy().to_string();
    let (_, ver) = file.split_once(".so.")?;
    let llvm = real
        .to_string_lossy()
        .split("/llvm-")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .map(|v| format!(" (LLVM {v})"))
        .unwrap_or_default();
    Some(format!("{ver}{llvm}"))
}

fn summary(r: &Value, children: &[Value], code: i32) -> String {
    let mut s = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    s += &format!(
        "parbudget doctor: pid {} exited with {}\nbudget: {} cores (from {}), fork policy {}\n\nruntimes loaded:\n",
        r["pid"],
        code,
        r["budget"],
        r["budget_source"].as_str().unwrap_or("?"),
        r["fork_policy"].as_str().unwrap_or("?")
    );
    let rts = r["runtimes"].as_array().cloned().unwrap_or_default();
    if rts.is_empty() {
        s += "  (none: no OpenMP or BLAS runtime was loaded)\n";
    }
    let mut advice: Vec<String> = vec![];
    for rt in &rts {
        let path = rt["path"].as_str().unwrap_or("?");
        let ver = version_of(path)
            .map(|v| format!(" [{v}]"))
            .unwrap_or_default();
        s += &format!(
            "  {:<9} {:<6} {}{}\n            threads made {} (live {}, peak {}), largest request {}, clamped {} times",
            rt["impl"].as_str().unwrap_or("?"),
            rt["kind"].as_str().unwrap_or("?"),
            path,
            ver,
            n(&rt["threads_created"]),
            n(&rt["threads_live"]),
            n(&rt["threads_peak"]),
            n(&rt["requested_max"]),
            n(&rt["clamped"]),
        );
        if n(&rt["regions"]) > 0 {
            s += &format!(
                ", {} regions with mean team {:.2} ({} cut to fit)",
                n(&rt["regions"]),
                rt["mean_team"].as_f64().unwrap_or(0.0),
                n(&rt["requests_cut"])
            );
        }
        s += "\n";
        if n(&rt["requested_max"]) > n(&r["budget"]) {
            advice.push(format!("{} asked for {} threads on a budget of {}: the request was clamped; no code change is needed under parbudget.", rt["impl"].as_str().unwrap_or("?"), n(&rt["requested_max"]), n(&r["budget"])));
        }
    }
    s += &format!(
        "  other     -      threads made by the program and other libraries: {} (live {}, peak {})\n",
        n(&r["other_threads"]["created"]),
        n(&r["other_threads"]["live"]),
        n(&r["other_threads"]["peak"])
    );
    let mut warnings: Vec<Value> = r["warnings"].as_array().cloned().unwrap_or_default();
    for c in children {
        warnings.extend(c["warnings"].as_array().cloned().unwrap_or_default());
    }
    if !children.is_empty() {
        s += &format!("\nchild processes that reported: {}\n", children.len());
    }
    s += "\nwarnings:\n";
    if warnings.is_empty() {
        s += "  none\n";
    }
    for w in &warnings {
        let kind = w["kind"].as_str().unwrap_or("?");
        s += &format!("  {}: {}\n", kind, w["message"].as_str().unwrap_or(""));
        let a = match kind {
            "fork_after_gomp" => {
                "use the multiprocessing start method 'spawn' or 'forkserver' (or fork before the first GNU OpenMP region); under parbudget the child's regions on the forking thread run with one thread."
            }
            "openmp_conflict" => {
                "two OpenMP runtimes in one process: install packages built against the same runtime (e.g. all from conda-forge, or all wheels)."
            }
            "openblas_conflict" => {
                "several OpenBLAS copies (normal with numpy and scipy from PyPI): each has its own pool; parbudget sizes the calls of all of them from one ledger."
            }
            "split_binding" => {
                "an object is bound to two copies of one runtime (lazy binding after a later RTLD_GLOBAL load): import that library before the one that loads a second copy globally."
            }
            _ => "",
        };
        if !a.is_empty() && !advice.iter().any(|x| x == a) {
            advice.push(a.to_string());
        }
    }
    s += "\nadvice:\n";
    if advice.is_empty() {
        s += "  nothing to change: every pool stayed within the budget.\n";
    }
    for a in advice {
        s += &format!("  - {a}\n");
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args
        .first()
        .map(|a| a.to_string_lossy().to_string())
        .as_deref()
    {
        Some("run") => run(&args[1..]),
        Some("doctor") => doctor(&args[1..]),
        Some("--help") | Some("-h") | Some("help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("--version") | Some("-V") => {
            println!("parbudget {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => die(&format!("unknown command '{other}'")),
        None => die("missing command: run or doctor"),
    }
}
