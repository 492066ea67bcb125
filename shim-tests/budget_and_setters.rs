//! One budget that every runtime obeys, and bad input never fatal.

use crate::support::*;

#[test]
fn gcc_openmp_set_num_threads_64_runs_teams_of_at_most_the_budget() {
    // Without the shim the fixture really does run 64-thread teams.
    let base = cmd(&fixture("omp_teams_gcc"), &["64"]).run();
    base.ok();
    assert_eq!(base.int("team"), 64);

    let r = cmd(&fixture("omp_teams_gcc"), &["64"])
        .shim()
        .cores(2)
        .run();
    r.ok();
    assert_eq!(r.int("max_threads"), 2);
    assert!(r.int("team") <= 2 && r.int("team") >= 1);
    assert!(
        r.int("clause_team") <= 2,
        "num_threads(64) clause: {}",
        r.stdout
    );
    assert!(r.int("loop_team") <= 2);
    assert_eq!(r.int("sum"), 499500, "the work itself must be unchanged");
    assert!(
        r.shim_lines().is_empty(),
        "a valid budget prints nothing at the default level: {}",
        r.stderr
    );
}

#[test]
fn lone_gcc_program_keeps_the_whole_budget() {
    let r = cmd(&fixture("omp_teams_gcc"), &["0"]).shim().cores(2).run();
    r.ok();
    assert_eq!(r.int("team"), 2, "a lone caller must not be starved");
}

#[test]
fn clang_libomp_program_is_clamped_too() {
    let base = cmd(&fixture("omp_teams_clang"), &["64"]).run();
    assert_eq!(base.ok().int("team"), 64);
    let r = cmd(&fixture("omp_teams_clang"), &["64", "64"])
        .shim()
        .cores(2)
        .run();
    r.ok();
    assert_eq!(r.int("max_threads"), 2);
    assert_eq!(r.int("team"), 2);
    assert!(
        r.int("clause_team") <= 2,
        "__kmpc_push_num_threads clamp: {}",
        r.stdout
    );
    assert!(r.int("loop_team") <= 2);
}

#[test]
fn debian_openblas_set_num_threads_64_reports_the_budget() {
    let base = cmd(&fixture("openblas_threads"), &["64"]).run();
    base.ok();
    assert!(
        base.int("after_set") > 2,
        "without the shim OpenBLAS takes more: {}",
        base.stdout
    );
    let r = cmd(&fixture("openblas_threads"), &["64"])
        .shim()
        .cores(2)
        .env("PARBUDGET_LOG", "info")
        .run();
    r.ok();
    assert!(r.int("after_set") <= 2);
    assert_eq!(r.int("dgemm_ok"), 1);
    assert!(
        r.stderr.contains(
            "clamp symbol=\"openblas_set_num_threads\" requested=64 granted=2 impl=openblas"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("runtime_found impl=openblas kind=blas"),
        "{}",
        r.stderr
    );
}

#[test]
fn constructor_threads_before_ours_are_safe_and_rpath_origin_still_works() {
    // early_main finds libearly.so through $ORIGIN; libearly's constructor
    // starts threads, which may reach our pthread_create hook before our
    // constructor ran.
    let dir = tempdir("early");
    let r = cmd(&fixture("early_main"), &[])
        .shim()
        .cores(1)
        .report_into(&dir)
        .run();
    r.ok();
    assert_eq!(r.int("early_threads"), 3);
    assert_eq!(r.int("team"), 1);
    let rep = &reports(&dir)[0];
    assert!(
        rep["other_threads"]["created"].as_u64().unwrap() >= 3,
        "{rep}"
    );
}

#[test]
fn budget_is_exported_to_later_libraries_and_children() {
    let echo = "echo omp=$OMP_NUM_THREADS; echo blas=$OPENBLAS_NUM_THREADS; echo mkl=$MKL_NUM_THREADS; echo numba=$NUMBA_NUM_THREADS; echo rayon=$RAYON_NUM_THREADS; echo veclib=$VECLIB_MAXIMUM_THREADS";
    let cpus = std::thread::available_parallelism().unwrap().get() as u32;
    // A budget the runtimes would not pick by themselves: every variable
    // says it.
    let small = cpus.saturating_sub(1).max(1);
    let r = cmd("sh", &["-c", echo])
        .shim()
        .cores(small)
        .env("OMP_NUM_THREADS", "8")
        .env("MKL_NUM_THREADS", "1")
        .env("PARBUDGET_LOG", "info")
        .run();
    r.ok();
    let s = small.to_string();
    assert_eq!(r.get("omp"), s, "above the budget: lowered");
    assert_eq!(r.get("mkl"), "1", "within the budget: kept");
    assert_eq!(r.get("blas"), s);
    assert_eq!(r.get("numba"), s);
    assert_eq!(r.get("rayon"), s);
    assert_eq!(r.get("veclib"), s);
    // The budget every runtime picks anyway (all the CPUs it may use): an
    // unset variable stays unset, so tools that size workers when it is
    // unset (joblib/loky) keep their rule; a value above it is lowered.
    let r2 = cmd("sh", &["-c", echo])
        .shim()
        .cores(cpus)
        .env("OMP_NUM_THREADS", "64")
        .run();
    r2.ok();
    assert_eq!(r2.get("omp"), cpus.to_string());
    assert_eq!(r2.get("blas"), "", "restating the default is not exported");
    assert_eq!(r2.get("numba"), "");
    assert!(
        r.stderr.contains(&format!(
            "env_lowered var=OMP_NUM_THREADS from=\"8\" to=\"{small}\""
        )),
        "{}",
        r.stderr
    );
}

#[test]
fn llvm_and_intel_openmp_workers_take_the_short_block_time_unless_the_user_chose() {
    // The runtimes themselves say what they took (kmp_get_blocktime, in ms):
    // 200 by default, 1 under the shim (exported before they initialise), and
    // whatever the user chose through KMP_BLOCKTIME or OMP_WAIT_POLICY.
    for f in ["omp_teams_clang", "omp_teams_iomp"] {
        let plain = cmd(&fixture(f), &[]).run();
        assert_eq!(plain.ok().int("blocktime_ms"), 200, "{f}");
        let shim = |k: &str, v: &str| {
            let c = cmd(&fixture(f), &[]).shim().cores(2);
            let c = if k.is_empty() { c } else { c.env(k, v) };
            let r = c.run();
            r.ok();
            r.int("blocktime_ms")
        };
        assert_eq!(shim("", ""), 1, "{f}");
        assert_eq!(shim("KMP_BLOCKTIME", "7"), 7, "{f}");
        assert_eq!(shim("OMP_WAIT_POLICY", "passive"), 0, "{f}");
        assert_eq!(
            shim("OMP_WAIT_POLICY", "active"),
            i64::from(i32::MAX),
            "{f}"
        );
    }
}

#[test]
fn affinity_mask_sets_the_budget_when_unset() {
    let dir = tempdir("affinity");
    let r = cmd("taskset", &["-c", "0", &fixture("omp_teams_gcc"), "0"])
        .report_into(&dir)
        .shim()
        .run();
    r.ok();
    assert_eq!(r.int("team"), 1);
    let reps = reports(&dir);
    let rep = reps
        .iter()
        .find(|r| !runtimes_of(r, "libgomp").is_empty())
        .expect("fixture report");
    assert_eq!(rep["budget"], 1);
    assert_eq!(rep["budget_source"], "affinity");
}

fn bad_value_gives_one_line(var: &str, value: &str, expect_using: &str) {
    let r = cmd(&fixture("omp_teams_gcc"), &["64"])
        .shim()
        .env(var, value)
        .run();
    assert!(!r.timed_out);
    assert_eq!(
        r.code, 0,
        "{var}={value:?} must not change the exit code: {}",
        r.stderr
    );
    let lines = r.shim_lines();
    assert_eq!(
        lines.len(),
        1,
        "{var}={value:?}: exactly one line, got {lines:?}"
    );
    let l = lines[0];
    assert!(
        l.contains(" WARN bad_env ") && l.contains(&format!("var={var}")),
        "{l}"
    );
    let quoted = value.replace('\\', "\\\\").replace('"', "\\\"");
    assert!(
        l.contains(&format!("value=\"{quoted}\"")),
        "names the value: {l}"
    );
    assert!(
        l.contains(&format!("using={expect_using}")),
        "says what is used: {l}"
    );
    // The program runs on with the budget the fallback names: its
    // omp_set_num_threads(64) is clamped to it and its region gets it.
    let detected = std::thread::available_parallelism().unwrap().get() as i64;
    assert_eq!(r.int("team"), detected, "{var}={value:?}");
}

#[test]
fn bad_parbudget_cores_values_each_get_their_line_and_exit_0() {
    let detected = std::thread::available_parallelism()
        .unwrap()
        .get()
        .to_string();
    for v in [
        "abc",
        "0",
        "-3",
        "2.5",
        "1e9",
        "99999999999999999999",
        "4 cores",
        "0x10",
        "5000",
    ] {
        bad_value_gives_one_line("PARBUDGET_CORES", v, &detected);
    }
}

#[test]
fn bad_log_and_fork_values_each_get_their_line() {
    bad_value_gives_one_line("PARBUDGET_LOG", "loud", "warn");
    bad_value_gives_one_line("PARBUDGET_FORK", "sometimes", "fresh");
    bad_value_gives_one_line("PARBUDGET_REPORT_SIGNAL", "KILL", "off");
}

#[test]
fn empty_value_means_unset_and_exit_codes_pass_through() {
    let r = cmd(&fixture("omp_teams_gcc"), &["0"])
        .shim()
        .env("PARBUDGET_CORES", "")
        .run();
    r.ok();
    assert!(r.shim_lines().is_empty(), "{}", r.stderr);
    let r = cmd("sh", &["-c", "exit 7"])
        .shim()
        .env("PARBUDGET_CORES", "abc")
        .run();
    assert_eq!(r.code, 7);
}

#[test]
fn log_levels_filter_and_format() {
    let r = cmd(&fixture("omp_teams_gcc"), &["64"])
        .shim()
        .cores(2)
        .env("PARBUDGET_LOG", "debug")
        .run();
    r.ok();
    let lines = r.shim_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" INFO budget cores=2 source=env")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" DEBUG grant symbol=\"GOMP_parallel\"")),
        "{lines:?}"
    );
    let pid_prefix = lines[0].split(' ').next().unwrap();
    assert!(pid_prefix.starts_with("parbudget[") && pid_prefix.ends_with(']'));
    let r = cmd(&fixture("omp_teams_gcc"), &["64"])
        .shim()
        .cores(2)
        .env("PARBUDGET_LOG", "error")
        .run();
    assert!(r.shim_lines().is_empty());
}
