//! Issue 8: the `parbudget` command.

use crate::support::*;

fn bin() -> String {
    // The launcher built beside the shim (scripts/test builds both).
    root()
        .join("target/release/parbudget")
        .display()
        .to_string()
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
    assert_eq!(parts, vec![shim().display().to_string(), extra], "{line}");
    assert_eq!(cores, "3");
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
    for args in [
        vec!["run", "--cores", "0", "--", "true"],
        vec!["run", "--cores", "abc", "--", "true"],
        vec!["run", "--frobnicate", "--", "true"],
        vec!["run"],
        vec!["run", "--fork", "sometimes", "--", "true"],
        vec!["doctor", "--json"],
        vec!["launch"],
    ] {
        let r = cmd(&bin(), &args).run();
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with("parbudget: "));
    }
}

#[test]
fn help_and_version() {
    let r = cmd(&bin(), &["--help"]).run();
    r.ok();
    assert!(r.stdout.contains("parbudget run") && r.stdout.contains("parbudget doctor"));
    let r = cmd(&bin(), &["--version"]).run();
    r.ok();
    assert!(r.stdout.starts_with("parbudget 0."));
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
            &python(),
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
