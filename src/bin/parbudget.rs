//! `parbudget`: run a program under the budget, ask what it loads, or install
//! a Jupyter kernel that runs under it.
//!
//! This binary must never link the shim: the shim exports `pthread_create`,
//! `fork` and `_exit`, which would interpose the launcher itself. The library
//! target is a cdylib only, so it cannot be linked here by accident.

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

const SHIM_HELP: &str = "\
The shim is libparbudget.so, found at PARBUDGET_LIB, else beside this binary,
else in ../lib (where `pip install parbudget` puts it).";

#[derive(Parser, Debug)]
#[command(
    name = "parbudget",
    version,
    about = "One core budget for every native thread pool in a process tree.",
    long_about = "One core budget for every native thread pool in a process tree.\n\n\
        `parbudget run` execs a program with libparbudget.so preloaded, `parbudget doctor` \
        runs it and reports the pools it loaded, `parbudget kernel` manages Jupyter \
        kernels that run under the budget.",
    after_help = SHIM_HELP,
    subcommand_required = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Exec CMD with libparbudget.so first in LD_PRELOAD and PARBUDGET_* set.
    #[command(
        long_about = "Exec CMD with the absolute path of libparbudget.so first in LD_PRELOAD \
            (your own entries stay after it) and the PARBUDGET_* variables set. Signals and \
            the exit code are CMD's own.",
        after_help = SHIM_HELP,
        args_override_self = true
    )]
    Run(RunArgs),
    /// Run CMD under the shim, then print the pools it loaded and advice.
    #[command(
        long_about = "Run CMD under the shim with reporting on, then print what it loaded: the \
            budget, each runtime copy (kind, path, version), the threads each made, clamps, \
            conflicts, fork hazards and advice. CMD's own output goes to stderr, so stdout \
            holds only the summary (or, with --json, the report JSON with the child \
            processes' reports under `children`).",
        after_help = SHIM_HELP,
        args_override_self = true
    )]
    Doctor(DoctorArgs),
    /// Jupyter kernels that run every notebook under the budget.
    #[command(
        subcommand,
        long_about = "Jupyter kernelspecs whose kernels run under the budget: the argv of the \
            Python's own ipykernel kernel, with LD_PRELOAD and PARBUDGET_* added to its env. \
            Needs ipykernel in the Python parbudget is installed for: the one running \
            `python -m parbudget`, else the python beside this binary (a venv), else the \
            pythonX.Y whose site-packages under this binary's prefix hold parbudget.",
        subcommand_required = true
    )]
    Kernel(KernelCmd),
    /// Audit a shared ledger: its budget, threads in use, and each member.
    #[command(
        long_about = "Print a shared ledger as it is now: its budget, the threads counted in \
            use, and each member slot (pid, threads held, whether the process lives). NAME is \
            a PARBUDGET_LEDGER name such as /parbudget-myjob; without one, every ledger of \
            this user in /dev/shm is listed. Read-only: the ledger is validated like the \
            shim does and never locked or changed.",
        args_override_self = true
    )]
    Ledger(LedgerArgs),
}

#[derive(Args, Debug)]
struct LedgerArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// The ledger's name (default: every ledger of this user)
    #[arg(value_name = "NAME")]
    name: Option<String>,
}

/// The PARBUDGET_* variables the launcher can set.
#[derive(Args, Debug, Default)]
struct Budget {
    /// The core budget, 1 to 4096 (PARBUDGET_CORES); default: the affinity
    /// mask capped by the cgroup CPU quota
    #[arg(long, value_name = "N", value_parser = parse_cores)]
    cores: Option<u32>,
    /// error|warn|info|debug|trace or env_logger directives (PARBUDGET_LOG)
    #[arg(long, value_name = "LEVEL")]
    log: Option<String>,
    /// What a fork after GNU OpenMP does (PARBUDGET_FORK)
    #[arg(long, value_name = "POLICY", value_parser = ["fresh", "serial", "abort", "warn"])]
    fork: Option<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    budget: Budget,
    /// 'stderr' for a table at exit, or a JSON file where %p is the pid
    /// (PARBUDGET_REPORT)
    #[arg(long, value_name = "PATH")]
    report: Option<String>,
    /// The program and its arguments (after --, or from the first word that
    /// is not an option)
    #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true)]
    cmd: Vec<OsString>,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Print the report JSON only, on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    budget: Budget,
    /// The program and its arguments
    #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true)]
    cmd: Vec<OsString>,
}

#[derive(Subcommand, Debug)]
enum KernelCmd {
    /// Write a kernelspec whose kernel runs under the budget.
    #[command(
        long_about = "Write a Jupyter kernelspec NAME: the Python's own ipykernel argv, with \
            LD_PRELOAD (the absolute path of libparbudget.so) and the PARBUDGET_* variables \
            given here in its env, so every notebook started on it runs under the budget. \
            An existing kernelspec NAME is replaced only with --force.",
        after_help = SHIM_HELP,
        args_override_self = true
    )]
    Install(KernelInstall),
    /// List the kernelspecs that run under parbudget.
    List,
    /// Remove a kernelspec that parbudget installed.
    Remove {
        /// The kernelspec's name
        name: String,
    },
}

#[derive(Args, Debug)]
struct KernelInstall {
    #[command(flatten)]
    budget: Budget,
    /// The kernelspec's name (letters, digits, '.', '_', '-')
    #[arg(long, default_value = "parbudget", value_parser = parse_kernel_name)]
    name: String,
    /// Install for this user, in Jupyter's user data directory (the default)
    #[arg(long, conflicts_with = "sys_prefix")]
    user: bool,
    /// Install into the Python's prefix (sys.prefix/share/jupyter), e.g. a venv
    #[arg(long)]
    sys_prefix: bool,
    /// Replace a kernelspec of that name if one exists
    #[arg(long)]
    force: bool,
}

fn parse_cores(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=4096).contains(&n) && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err("expected a whole number from 1 to 4096".into()),
    }
}

fn parse_kernel_name(v: &str) -> Result<String, String> {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        Ok(v.to_string())
    } else {
        Err("expected lowercase letters, digits, '.', '_' or '-'".into())
    }
}

/// Bad usage: one line on stderr, exit 2.
fn die(msg: &str) -> ExitCode {
    eprintln!("parbudget: {msg} (see parbudget --help)");
    ExitCode::from(2)
}

/// A broken install or environment: one line on stderr, exit 1.
fn fail(msg: &str) -> ExitCode {
    eprintln!("parbudget: {msg}");
    ExitCode::from(1)
}

/// clap's error as one line: its message, the values it lists, no usage block
/// and no "pass it as a value" tip (we take the command after `--` anyway).
fn one_line(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::MissingRequiredArgument && e.to_string().contains("<CMD>") {
        return "missing command: put it after --".into();
    }
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
    ) {
        let kernel = std::env::args().skip(1).any(|a| a == "kernel");
        return if kernel {
            "missing kernel command: install, list or remove".into()
        } else {
            "missing command: run, doctor or kernel".into()
        };
    }
    let text = e.render().to_string();
    let mut parts: Vec<String> = vec![];
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("Usage:") || l.starts_with("For more information") {
            break;
        }
        if l.is_empty() || l.starts_with("tip: to pass") {
            continue;
        }
        parts.push(l.strip_prefix("error: ").unwrap_or(l).to_string());
    }
    parts.join(" ")
}

/// libparbudget.so: PARBUDGET_LIB, else beside the binary, else in ../lib.
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
    let cands = [
        dir.join("libparbudget.so"),
        dir.parent()
            .unwrap_or(Path::new(".."))
            .join("lib/libparbudget.so"),
    ];
    for cand in &cands {
        if cand.is_file() {
            return Ok(std::fs::canonicalize(cand).unwrap_or(cand.clone()));
        }
    }
    Err(format!(
        "libparbudget.so not found: looked at {} and {} (a broken install: reinstall parbudget, or set PARBUDGET_LIB)",
        cands[0].display(),
        cands[1].display()
    ))
}

/// The Python `parbudget kernel` works with: the one that ran `python -m
/// parbudget` (PARBUDGET_PYTHON), else python3/python beside this binary (a
/// venv, conda or a Python's own prefix), else the pythonX.Y whose
/// site-packages under this binary's prefix hold the package (pip --user, a
/// system install beside another Python's bin).
fn find_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PARBUDGET_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own path: {e}"))?;
    let bin = exe.parent().unwrap_or(Path::new("."));
    for n in ["python3", "python"] {
        if bin.join(n).is_file() {
            return Ok(bin.join(n));
        }
    }
    let lib = bin.parent().unwrap_or(Path::new("..")).join("lib");
    let mut versions: Vec<String> = std::fs::read_dir(&lib)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("python3"))
                .filter(|n| {
                    ["site-packages", "dist-packages"]
                        .iter()
                        .any(|sp| lib.join(n).join(sp).join("parbudget/__init__.py").is_file())
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for v in versions.iter().rev() {
        for dir in std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&path)) {
            if dir.join(v).is_file() {
                return Ok(dir.join(v));
            }
        }
    }
    Err(format!(
        "cannot tell which Python parbudget is installed for: no python beside {} and no pythonX.Y on PATH for {}/python3.*/site-packages/parbudget; run `python -m parbudget kernel ...` with that Python",
        exe.display(),
        lib.display()
    ))
}

/// The PARBUDGET_* variables an option set asks for.
fn budget_env(b: &Budget) -> Vec<(&'static str, String)> {
    let mut v = vec![];
    if let Some(n) = b.cores {
        v.push(("PARBUDGET_CORES", n.to_string()));
    }
    if let Some(l) = &b.log {
        v.push(("PARBUDGET_LOG", l.clone()));
    }
    if let Some(f) = &b.fork {
        v.push(("PARBUDGET_FORK", f.clone()));
    }
    v
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

fn command(cmd: &[OsString], env: &[(&str, String)], shim: &Path) -> Command {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    c.env(
        "LD_PRELOAD",
        compose_preload(shim, std::env::var_os("LD_PRELOAD")),
    );
    // Set by `python -m parbudget` for `kernel` only; not the program's.
    c.env_remove("PARBUDGET_PYTHON");
    for (k, v) in env {
        c.env(k, v);
    }
    for (k, v) in spin_env(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty())) {
        c.env(k, v);
    }
    c
}

// The short spin settings, shared with the shim (a file with no dependency on
// the rest of the shim).
#[path = "../spin.rs"]
#[allow(dead_code)]
mod spin;

/// The spin rows the shim would export at init, set here before exec: a
/// runtime linked into the program reads them before the shim's constructor
/// runs (libgomp's spin count), so only the launcher can reach it. The same
/// rule as the shim's (`spin::wanted`), so a later export is a no-op.
fn spin_env(is_set: impl Fn(&str) -> bool) -> Vec<(&'static str, &'static str)> {
    spin::SPIN
        .iter()
        .filter(|s| spin::wanted(s, |v| v.to_str().is_ok_and(&is_set)))
        .filter_map(|s| Some((s.var.to_str().ok()?, s.value.to_str().ok()?)))
        .collect()
}

fn run(a: RunArgs) -> ExitCode {
    let shim = match find_shim() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut env = budget_env(&a.budget);
    if let Some(r) = a.report {
        env.push(("PARBUDGET_REPORT", r));
    }
    let err = command(&a.cmd, &env, &shim).exec();
    eprintln!(
        "parbudget: cannot run {}: {err}",
        a.cmd[0].to_string_lossy()
    );
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

fn doctor(a: DoctorArgs) -> ExitCode {
    let shim = match find_shim() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let dir = std::env::temp_dir().join(format!("parbudget-doctor-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&dir) {
        return fail(&format!("cannot create {}: {e}", dir.display()));
    }
    let mut env = budget_env(&a.budget);
    env.push(("PARBUDGET_REPORT", format!("{}/r-%p.json", dir.display())));
    let mut c = command(&a.cmd, &env, &shim);
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
            return fail(&format!("cannot run {}: {e}", a.cmd[0].to_string_lossy()));
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
    if a.json {
        main["children"] = Value::Array(reports);
        main["exit_code"] = Value::from(code);
        println!("{}", serde_json::to_string_pretty(&main).unwrap());
    } else {
        print!("{}", summary(&main, &reports, code));
    }
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The kernelspec work is Jupyter's (its data paths, the ipykernel argv of
/// the Python that will run the kernel), so it runs in that Python:
/// `parbudget._kernel` from the installed package, which prints one line and
/// exits 1 on failure.
fn kernel(k: KernelCmd) -> ExitCode {
    let python = match find_python() {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let mut args: Vec<OsString> = vec![];
    match k {
        KernelCmd::Install(a) => {
            let shim = match find_shim() {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            args.extend(["install".into(), "--name".into(), a.name.into()]);
            args.push(
                if a.sys_prefix {
                    "--sys-prefix"
                } else {
                    "--user"
                }
                .into(),
            );
            if a.force {
                args.push("--force".into());
            }
            let mut pre = OsString::from("LD_PRELOAD=");
            pre.push(&shim);
            args.extend(["--env".into(), pre]);
            for (k, v) in budget_env(&a.budget) {
                args.extend(["--env".into(), format!("{k}={v}").into()]);
            }
        }
        KernelCmd::List => args.push("list".into()),
        KernelCmd::Remove { name } => args.extend(["remove".into(), name.into()]),
    }
    // `-c`, not `-m`: a Python without the package gets one parbudget line,
    // not a traceback; the current directory is not searched for modules.
    const BOOT: &str = "import sys\n\
        sys.path = [p for p in sys.path if p not in ('', '.')]\n\
        try:\n    from parbudget import _kernel\n\
        except ImportError as e:\n    \
        sys.exit('parbudget: ' + sys.executable + ' cannot import parbudget (' + str(e) + '): install parbudget for it, or run `python -m parbudget kernel ...` with the Python it is installed for')\n\
        sys.exit(_kernel.main(sys.argv[1:]))\n";
    let mut c = Command::new(&python);
    c.arg("-c").arg(BOOT).args(&args);
    c.env_remove("LD_PRELOAD");
    let err = c.exec();
    fail(&format!("cannot run {}: {err}", python.display()))
}

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
                if let Some(rest) = n.strip_suffix(".dist-info")
                    && let Some((d, v)) = rest.rsplit_once('-')
                    && d.eq_ignore_ascii_case(&norm)
                {
                    return Some(format!("{pkg} {v}"));
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
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    print!("{}", e.render());
                    ExitCode::SUCCESS
                }
                _ => die(&one_line(&e)),
            };
        }
    };
    match cli.cmd {
        Sub::Run(a) => run(a),
        Sub::Doctor(a) => doctor(a),
        Sub::Kernel(k) => kernel(k),
        Sub::Ledger(a) => ledger(a),
    }
}

// The ledger's layout, shared with the shim's own reader (a file with no
// dependency on the rest of the shim; the launcher never links the shim).
#[path = "../ledger/layout.rs"]
#[allow(dead_code)]
mod layout;

/// One ledger as read from /dev/shm, validated, as JSON.
fn read_ledger(name: &str) -> Result<Value, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = format!("/dev/shm/{}", name.trim_start_matches('/'));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))?;
    let md = f.metadata().map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if md.uid() != uid || md.mode() & 0o077 != 0 || !md.is_file() {
        return Err(format!("{path}: not a private ledger of this user"));
    }
    let mut img = Vec::with_capacity(layout::SIZE);
    f.by_ref()
        .take(layout::SIZE as u64 + 1)
        .read_to_end(&mut img)
        .map_err(|e| format!("{path}: {e}"))?;
    layout::check(&img, None).map_err(|e| format!("{path}: {e}"))?;
    let u32_at = |o: usize| u32::from_le_bytes(img[o..o + 4].try_into().unwrap_or([0; 4]));
    let i32_at = |o: usize| i32::from_le_bytes(img[o..o + 4].try_into().unwrap_or([0; 4]));
    let slots = core::mem::offset_of!(layout::Header, slots);
    let slot = core::mem::size_of::<layout::Slot>();
    let mut members = vec![];
    let mut held_sum: u64 = 0;
    for i in 0..layout::SLOTS {
        let base = slots + i * slot;
        let pid = i32_at(base + core::mem::offset_of!(layout::Slot, pid));
        if pid == 0 {
            continue;
        }
        // Its slot's count and its threads' cells.
        let held = layout::member_held(&img, i);
        held_sum += held;
        members.push(serde_json::json!({
            "pid": pid,
            "held": held,
            "leased": layout::member_leased(&img, i),
            "alive": Path::new(&format!("/proc/{pid}")).exists(),
        }));
    }
    Ok(serde_json::json!({
        "name": format!("/{}", name.trim_start_matches('/')),
        "budget": u32_at(core::mem::offset_of!(layout::Header, budget)),
        "used": u32_at(core::mem::offset_of!(layout::Header, used)) & !layout::FENCE,
        "held_by_members": held_sum,
        "members": members,
    }))
}

fn ledger(a: LedgerArgs) -> ExitCode {
    let names: Vec<String> = match &a.name {
        Some(n) => vec![n.clone()],
        None => {
            // SAFETY: getuid has no preconditions.
            let prefix = format!("parbudget-{}-", unsafe { libc::getuid() });
            let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().to_string())
                        .filter(|n| n.starts_with(&prefix))
                        .map(|n| format!("/{n}"))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        }
    };
    let mut out = vec![];
    let mut failed = false;
    for n in &names {
        match read_ledger(n) {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("parbudget: {e}");
                failed = true;
            }
        }
    }
    if a.json {
        println!("{}", Value::Array(out));
    } else {
        for l in &out {
            println!(
                "{}  budget {}  used {}  (held by members {})",
                l["name"].as_str().unwrap_or("?"),
                l["budget"],
                l["used"],
                l["held_by_members"]
            );
            for m in l["members"].as_array().into_iter().flatten() {
                println!(
                    "  pid {:>8}  held {:>4}  (leased {:>4})  {}",
                    m["pid"],
                    m["held"],
                    m["leased"],
                    if m["alive"] == true {
                        "alive"
                    } else {
                        "dead (reclaimed at the next short request)"
                    }
                );
            }
        }
        if out.is_empty() && !failed {
            println!("no ledger");
        }
    }
    if failed && a.name.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
