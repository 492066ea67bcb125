//! The `parbudget` command; its clap command line (bad usage is one
//! line and exit 2), the shim lookup, run and doctor.
//!
//! By default these test the launcher `cargo build --release` made, beside
//! target/release/libparbudget.so. scripts/test-wheel runs them again against
//! the launcher `pip install` put in a fresh venv (PARBUDGET_TEST_BIN=that
//! venv's bin/parbudget), with no cargo on PATH: then the shim expected is the
//! wheel's `<venv>/lib/libparbudget.so` and the Python is the venv's.

use crate::support::*;
use std::path::PathBuf;

/// The installed launcher under test, if scripts/test-wheel set one.
fn installed() -> Option<PathBuf> {
    std::env::var_os("PARBUDGET_TEST_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

fn bin() -> String {
    match installed() {
        Some(b) => b.display().to_string(),
        // The launcher built beside the shim (scripts/test builds both).
        None => root()
            .join("target/release/parbudget")
            .display()
            .to_string(),
    }
}

/// The shim the launcher must find without PARBUDGET_LIB.
fn expected_shim() -> String {
    match installed() {
        Some(b) => std::fs::canonicalize(b.parent().unwrap().join("../lib/libparbudget.so"))
            .expect("the wheel installs <prefix>/lib/libparbudget.so")
            .display()
            .to_string(),
        None => shim().display().to_string(),
    }
}

/// A Python with numpy: the installed venv's, else the project's.
fn numpy_python() -> String {
    match installed() {
        Some(b) => b.parent().unwrap().join("python").display().to_string(),
        None => python(),
    }
}

#[test]
fn run_puts_the_shim_first_and_keeps_the_users_preload() {
    let extra = fixture("libearly.so");
    let r = cmd(
        &bin(),
        &[
            "run",
            "--cores",
            "3",
            "--",
            "sh",
            "-c",
            "echo \"$LD_PRELOAD|$PARBUDGET_CORES\"",
        ],
    )
    .env("LD_PRELOAD", &extra)
    .run();
    r.ok();
    let line = r.stdout.trim();
    let (preload, cores) = line.split_once('|').unwrap();
    let parts: Vec<_> = preload.split(':').collect();
    assert_eq!(parts, vec![expected_shim(), extra], "{line}");
    assert_eq!(cores, "3");
}

#[test]
fn run_sets_the_short_spin_before_exec_so_a_libgomp_linked_into_the_program_takes_it() {
    // libgomp reads GOMP_SPINCOUNT in its own constructor, which runs before
    // the shim's, and reports what it took (OMP_DISPLAY_ENV=VERBOSE, stderr).
    let f = fixture("regions_gcc");
    let spin = |c: Cmd| {
        let r = c.env("OMP_DISPLAY_ENV", "VERBOSE").run();
        r.ok();
        r.stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("GOMP_SPINCOUNT = "))
            .map(|v| v.trim_matches('\'').to_string())
            .unwrap_or_else(|| panic!("libgomp reported no spin count:\n{}", r.stderr))
    };
    // The developer's own spin count must not decide the result.
    let clean = |c: Cmd| c.env_remove("GOMP_SPINCOUNT");
    let plain = || clean(cmd(&f, &["1", "64"]));
    let launched = || clean(cmd(&bin(), &["run", "--cores", "2", "--", &f, "1", "64"]));
    // A bare LD_PRELOAD comes too late for it: libgomp keeps its default.
    let default = spin(plain());
    assert_eq!(spin(plain().shim().cores(2)), default);
    assert_ne!(default, "1000");
    // The launcher sets it before exec.
    assert_eq!(spin(launched()), "1000");
    // What the user chose is kept: a spin count, or a wait policy (libgomp
    // then derives its own spin, as without the launcher).
    assert_eq!(spin(launched().env("GOMP_SPINCOUNT", "5000")), "5000");
    for policy in ["active", "passive"] {
        assert_eq!(
            spin(launched().env("OMP_WAIT_POLICY", policy)),
            spin(plain().env("OMP_WAIT_POLICY", policy)),
            "{policy}"
        );
    }
    // The other rows: set unless the user chose (the shim, whose init
    // exports the same rows, keeps both).
    let r = cmd(
        &bin(),
        &[
            "run",
            "--",
            "sh",
            "-c",
            "echo \"$KMP_BLOCKTIME|$OPENBLAS_THREAD_TIMEOUT\"",
        ],
    )
    .env_remove("KMP_BLOCKTIME")
    .env("OPENBLAS_THREAD_TIMEOUT", "9")
    .run();
    r.ok();
    assert_eq!(r.stdout.trim(), "1|9");
}

#[test]
fn run_takes_a_command_without_dashes_and_the_last_of_a_repeated_option() {
    let r = cmd(
        &bin(),
        &[
            "run",
            "--cores=3",
            "--cores",
            "4",
            "sh",
            "-c",
            "echo \"$PARBUDGET_CORES $PARBUDGET_FORK\" \"$@\"",
            "sh",
            "--cores",
            "9",
        ],
    )
    .run();
    r.ok();
    assert_eq!(
        r.stdout.trim(),
        "4  --cores 9",
        "the command's own options are its own"
    );
}

#[test]
fn a_missing_shim_is_one_line_naming_where_the_launcher_looked() {
    // A broken install: the launcher without its ../lib/libparbudget.so.
    let dir = tempdir("broken-install");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let copy = dir.join("bin/parbudget");
    // A hard link, not a copy: a file just written can be "busy" at exec
    // while another test thread forks with its write descriptor open.
    std::fs::hard_link(bin(), &copy).unwrap();
    for sub in [vec!["run", "--", "true"], vec!["doctor", "--", "true"]] {
        let r = cmd(copy.to_str().unwrap(), &sub).run();
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        let d = dir.display();
        assert!(
            r.stderr.contains(&format!(
                "looked at {d}/bin/libparbudget.so and {d}/lib/libparbudget.so"
            )),
            "{}",
            r.stderr
        );
    }
    let r = cmd(copy.to_str().unwrap(), &["run", "--", "true"])
        .env("PARBUDGET_LIB", "/nonexistent/libparbudget.so")
        .run();
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        "parbudget: PARBUDGET_LIB=/nonexistent/libparbudget.so is not a file"
    );
    // PARBUDGET_LIB repairs it.
    let so = expected_shim();
    let r = cmd(
        copy.to_str().unwrap(),
        &["run", "--", "sh", "-c", "echo $LD_PRELOAD"],
    )
    .env("PARBUDGET_LIB", &so)
    .run();
    r.ok();
    assert_eq!(r.stdout.trim(), so);
}

#[test]
fn run_passes_exit_codes_and_signals_through() {
    let r = cmd(&bin(), &["run", "--", "sh", "-c", "exit 42"]).run();
    assert_eq!(r.code, 42);
    let r = cmd(&bin(), &["run", "--", "sh", "-c", "kill -TERM $$"]).run();
    assert_eq!(r.code, 128 + 15, "killed by its own SIGTERM, as without us");
    let r = cmd(&bin(), &["run", "--", "/nonexistent/program"]).run();
    assert_eq!(r.code, 127);
}

#[test]
fn run_applies_the_budget_and_options() {
    let r = cmd(
        &bin(),
        &[
            "run",
            "--cores",
            "2",
            "--log",
            "info",
            "--",
            &fixture("omp_teams_gcc"),
            "64",
        ],
    )
    .run();
    r.ok();
    assert_eq!(r.int("team"), 2);
    assert!(
        r.stderr.contains("INFO budget cores=2 source=env"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    for (args, says) in [
        (
            vec!["run", "--cores", "0", "--", "true"],
            "invalid value '0' for '--cores <N>': expected a whole number from 1 to 4096",
        ),
        (
            vec!["run", "--cores", "abc", "--", "true"],
            "invalid value 'abc'",
        ),
        (
            vec!["run", "--cores", "+3", "--", "true"],
            "invalid value '+3'",
        ),
        (
            vec!["run", "--frobnicate", "--", "true"],
            "unexpected argument '--frobnicate'",
        ),
        (vec!["run"], "missing command: put it after --"),
        (
            vec!["run", "--fork", "sometimes", "--", "true"],
            "[possible values: fresh, serial, abort, warn]",
        ),
        (vec!["doctor", "--json"], "missing command: put it after --"),
        (
            vec!["doctor", "--report", "x", "--", "true"],
            "unexpected argument '--report'",
        ),
        (vec!["launch"], "unrecognized subcommand 'launch'"),
        (vec![], "missing command: run, doctor or kernel"),
        (vec!["--frob"], "unexpected argument '--frob'"),
        (
            vec!["kernel"],
            "missing kernel command: install, list or remove",
        ),
        (vec!["kernel", "add"], "unrecognized subcommand 'add'"),
        (
            vec!["kernel", "install", "--user", "--sys-prefix"],
            "cannot be used with",
        ),
        (
            vec!["kernel", "install", "--name", "My Kernel"],
            "invalid value 'My Kernel' for '--name <NAME>'",
        ),
        (
            vec!["kernel", "install", "--cores", "5000"],
            "invalid value '5000'",
        ),
        (vec!["kernel", "remove"], "<NAME>"),
        (
            vec!["kernel", "list", "extra"],
            "unexpected argument 'extra'",
        ),
    ] {
        let r = cmd(&bin(), &args).run();
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("parbudget: "),
            "{args:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
}

#[test]
fn help_comes_from_the_parser_and_version_from_cargo_toml() {
    let r = cmd(&bin(), &["--help"]).run();
    r.ok();
    assert!(
        r.stdout.contains("Usage: parbudget <COMMAND>"),
        "{}",
        r.stdout
    );
    for sub in ["run", "doctor", "kernel"] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub}: {}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("PARBUDGET_LIB"));
    let r = cmd(&bin(), &["run", "--help"]).run();
    r.ok();
    assert!(
        r.stdout.contains("Usage: parbudget run [OPTIONS] <CMD>..."),
        "{}",
        r.stdout
    );
    for opt in [
        "--cores <N>",
        "--log <LEVEL>",
        "--report <PATH>",
        "--fork <POLICY>",
        "fresh, serial, abort, warn",
    ] {
        assert!(r.stdout.contains(opt), "{opt}: {}", r.stdout);
    }
    let r = cmd(&bin(), &["doctor", "-h"]).run();
    r.ok();
    assert!(
        r.stdout.contains("--json") && !r.stdout.contains("--report"),
        "{}",
        r.stdout
    );
    let r = cmd(&bin(), &["kernel", "install", "--help"]).run();
    r.ok();
    for opt in [
        "--cores <N>",
        "--name <NAME>",
        "--user",
        "--sys-prefix",
        "--force",
    ] {
        assert!(r.stdout.contains(opt), "{opt}: {}", r.stdout);
    }
    let r = cmd(&bin(), &["help", "kernel"]).run();
    r.ok();
    assert!(
        r.stdout.contains("Usage: parbudget kernel <COMMAND>"),
        "{}",
        r.stdout
    );
    let r = cmd(&bin(), &["--version"]).run();
    r.ok();
    assert_eq!(
        r.stdout.trim(),
        format!("parbudget {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn doctor_names_libgomp_and_the_fork_hazard() {
    let r = cmd(
        &bin(),
        &[
            "doctor",
            "--cores",
            "2",
            "--",
            &fixture("fork_gomp_gcc"),
            "both",
        ],
    )
    .timeout(60)
    .run();
    r.ok();
    assert!(
        r.stdout.contains("budget: 2 cores (from env)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("libgomp") && l.contains("libgomp.so")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("fork_after_gomp"));
    assert!(r.stdout.contains("spawn"));
    assert!(
        !r.stdout.contains("parent_team="),
        "the program's output goes to stderr"
    );
    assert!(r.stderr.contains("parent_team=2"));
}

#[test]
fn doctor_json_is_the_report_only() {
    let r = cmd(
        &bin(),
        &["doctor", "--json", "--", &fixture("omp_teams_gcc"), "64"],
    )
    .run();
    r.ok();
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(runtimes_of(&v, "libgomp")[0]["requested_max"], 64);
    assert!(v["runtimes"][0]["clamped"].as_u64().unwrap() >= 1);
    assert_eq!(v["exit_code"], 0);
}

#[test]
fn doctor_shows_the_numpy_openblas_version() {
    let r = cmd(
        &bin(),
        &[
            "doctor",
            "--",
            &numpy_python(),
            "-c",
            "import numpy; numpy.ones((300,300)) @ numpy.ones((300,300))",
        ],
    )
    .timeout(90)
    .run();
    r.ok();
    assert!(
        r.stdout.contains("openblas") && r.stdout.contains("[numpy 2."),
        "{}",
        r.stdout
    );
}
