//! Every thread accounted for, reports, conflict warnings.

use crate::support::*;
use std::time::{Duration, Instant};

#[test]
fn four_program_threads_and_libgomp_workers_are_attributed() {
    let dir = tempdir("attrib");
    let r = cmd(&fixture("threads_omp_gcc"), &["4", "50"])
        .shim()
        .cores(2)
        .report_into(&dir)
        .run();
    r.ok();
    let reps = reports(&dir);
    assert_eq!(reps.len(), 1);
    let rep = &reps[0];
    assert_eq!(rep["budget"], 2);
    assert_eq!(rep["budget_source"], "env");
    assert_eq!(rep["other_threads"]["created"], 4, "{rep}");
    assert_eq!(rep["other_threads"]["live"], 0, "all joined: {rep}");
    let gomp = runtimes_of(rep, "libgomp");
    assert_eq!(gomp.len(), 1, "{rep}");
    assert_eq!(gomp[0]["kind"], "openmp");
    let made = gomp[0]["threads_created"].as_u64().unwrap();
    assert!(
        made >= 1,
        "libgomp's workers are attributed to libgomp: {rep}"
    );
    assert!(gomp[0]["regions"].as_u64().unwrap() == 200);
    assert!(gomp[0]["path"].as_str().unwrap().contains("libgomp"));
}

#[test]
fn stderr_table_report() {
    let r = cmd(&fixture("omp_teams_gcc"), &["64"])
        .shim()
        .cores(2)
        .env("PARBUDGET_REPORT", "stderr")
        .run();
    r.ok();
    assert!(
        r.stderr
            .contains("report at exit: budget 2 cores (from env)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .lines()
            .any(|l| l.trim_start().starts_with("libgomp ") && l.contains("openmp")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .lines()
            .any(|l| l.trim_start().starts_with("other ")),
        "{}",
        r.stderr
    );
}

#[test]
fn gcc_program_with_libomp_preloaded_reports_the_conflict_at_info() {
    let dir = tempdir("conflict");
    let libomp = "/usr/lib/llvm-14/lib/libomp.so.5";
    assert!(
        std::path::Path::new(libomp).exists(),
        "libomp-dev must be installed"
    );
    let r = cmd(&fixture("omp_teams_gcc"), &["0"])
        .env("LD_PRELOAD", &format!("{}:{libomp}", shim().display()))
        .cores(2)
        .report_into(&dir)
        .run();
    r.ok();
    // libgomp beside libomp is no hazard by itself (each governs its own
    // regions, and the ledger sizes both): not a warning.
    assert!(!r.stderr.contains(" WARN "), "{}", r.stderr);
    let rep = &reports(&dir)[0];
    let w = rep["warnings"].as_array().unwrap();
    assert!(
        w.iter()
            .any(|w| w["kind"].as_str().unwrap().contains("conflict")
                && w["message"].as_str().unwrap().contains("libomp")),
        "{rep}"
    );
}

#[test]
fn forked_children_write_their_own_report() {
    let dir = tempdir("forkrep");
    let r = cmd(&fixture("fork_gomp_gcc"), &["both"])
        .shim()
        .cores(2)
        .report_into(&dir)
        .timeout(40)
        .run();
    r.ok();
    let reps = reports(&dir);
    assert_eq!(reps.len(), 2, "parent and child");
    let parent = reps
        .iter()
        .find(|x| {
            x["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["kind"] == "fork_after_gomp")
        })
        .expect("parent report has the fork warning");
    let child = reps
        .iter()
        .find(|x| x["ppid"] == parent["pid"])
        .expect("child report");
    assert_eq!(
        runtimes_of(child, "libgomp")[0]["mean_team"],
        2.0,
        "policy fresh: the child runs full teams"
    );
}

#[test]
fn thread_storm_is_counted_exactly() {
    // A third of the short threads return, a third call pthread_exit and a
    // third are cancelled: every end must be seen (live == 0 at exit).
    let dir = tempdir("storm");
    let r = cmd(&fixture("thread_storm"), &["4", "2500"])
        .shim()
        .report_into(&dir)
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.int("failed"), 0);
    let rep = &reports(&dir)[0];
    assert_eq!(rep["other_threads"]["created"], 4 + 4 * 2500, "{rep}");
    assert_eq!(rep["other_threads"]["live"], 0);
    let peak = rep["other_threads"]["peak"].as_u64().unwrap();
    assert!(
        (4..=8).contains(&peak),
        "4 creators + at most 4 short threads: {peak}"
    );
}

#[test]
fn signal_report_of_a_process_stalled_in_a_region() {
    let dir = tempdir("signal");
    let path = dir.join("stalled.json");
    let mut child = cmd(&fixture("block_in_region"), &[])
        .shim()
        .cores(2)
        .env("PARBUDGET_REPORT", path.to_str().unwrap())
        .env("PARBUDGET_REPORT_SIGNAL", "USR2")
        .spawn();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 16];
    use std::io::Read;
    let n = out.read(&mut buf).unwrap();
    assert!(std::str::from_utf8(&buf[..n]).unwrap().contains("ready=1"));
    send_signal(child.id(), 12); // SIGUSR2
    let start = Instant::now();
    while !path.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "the report must not end the stalled process");
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("signal report written"))
            .unwrap();
    let g = runtimes_of(&rep, "libgomp");
    assert_eq!(
        g[0]["threads_live"], 1,
        "the stalled region's worker: {rep}"
    );
    assert_eq!(g[0]["regions"], 1);
}

#[test]
fn thread_creation_inside_a_constructor_inside_dlopen_does_not_deadlock() {
    // dlopen holds the loader's lock while libctorwait's constructor waits for
    // a thread that creates a thread: the pthread_create hook must not take
    // that lock (no dladdr/dlopen there).
    let r = cmd(&fixture("dlopen_main"), &[&fixture("libctorwait.so")])
        .shim()
        .cores(2)
        .timeout(20)
        .run();
    r.ok();
    assert_eq!(r.int("done"), 1);
}
