//! Correctness of what the shim forwards: every call reaches the runtime copy
//! its caller is bound to, and a region gets the team its body splits its
//! work by. Both defects give wrong answers, not slow ones, so these tests
//! judge the programs' results.

use crate::support::*;

/// `bound_main` dlopens `libbound.so` (linked only to the renamed
/// `vendored/libgomp-deadbeef.so.1`, as auditwheel does) RTLD_LOCAL, runs a
/// region, then (when `global`) loads the system `libgomp.so.1`
/// RTLD_GLOBAL and runs a region from a call site first used after that.
fn bound_main(global: bool) -> Cmd {
    cmd(
        &fixture("bound_main"),
        &[&fixture("libbound.so"), if global { "1" } else { "0" }],
    )
}

/// One region's results are right: the sum over 1..N split by thread number
/// and team size, every id 0..team-1 seen exactly once. A body run by a team
/// of another libgomp copy asks its own copy, which says "thread 0 of 1" to
/// every worker: sum = workers x expected, id 0 seen twice, team 1.
fn assert_region_right(r: &Run, tag: &str) {
    assert_eq!(
        r.int(&format!("{tag}_sum")),
        r.int(&format!("{tag}_expected")),
        "{tag}: each thread must add its own chunk once\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(
        r.int(&format!("{tag}_ids_ok")),
        1,
        "{tag}: thread ids 0..team-1 each once\n{}\n{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn a_library_bound_to_a_renamed_libgomp_runs_its_regions_on_that_copy() {
    let base = bound_main(false).run();
    base.ok();
    assert_eq!(base.int("gomp_copies"), 1, "{}", base.stdout);
    assert_region_right(&base, "before");
    assert_region_right(&base, "after");

    let r = bound_main(false).shim().cores(2).run();
    r.ok();
    assert_eq!(r.int("gomp_copies"), 1, "{}", r.stdout);
    for tag in ["before", "after"] {
        assert_region_right(&r, tag);
        assert_eq!(
            r.int(&format!("{tag}_team")),
            2,
            "{tag}: a lone caller gets the whole budget\n{}",
            r.stdout
        );
    }
}

#[test]
fn a_call_site_first_used_after_a_global_libgomp_still_reaches_the_callers_copy() {
    // Without the shim the loader bound libbound's GOMP_parallel to its own
    // copy at load time; a later RTLD_GLOBAL copy changes nothing.
    let base = bound_main(true).run();
    base.ok();
    assert_eq!(
        base.int("gomp_copies"),
        2,
        "the scenario needs both copies mapped: {}",
        base.stdout
    );
    assert_region_right(&base, "before");
    assert_region_right(&base, "after");

    // Under the shim, bound_after's call site is resolved after the global
    // load: a lookup that tries the global scope first forwards it to the
    // system copy, whose workers then call libbound's omp_get_thread_num()
    // in the vendored copy and are all "thread 0 of 1" (after_sum twice the
    // expected, after_team=1, after_ids_ok=0).
    let r = bound_main(true).shim().cores(2).run();
    r.ok();
    assert_eq!(r.int("gomp_copies"), 2, "{}", r.stdout);
    for tag in ["before", "after"] {
        assert_region_right(&r, tag);
        assert_eq!(
            r.int(&format!("{tag}_team")),
            2,
            "{tag}: the body must see the team its copy started\n{}",
            r.stdout
        );
    }
}

/// `split_by_n T R MODE`: T pthreads at once, R calls each; each region
/// splits 64 blocks by the n it asked for (MODE `clause`: num_threads(2);
/// `noclause`: n = omp_get_max_threads(), then a region without clause).
/// A team smaller than n skips the blocks of the threads that never came:
/// that call's sum is wrong and counted in wrong_calls.
fn split_by_n(threads: u32, calls: u32, mode: &str) -> Cmd {
    cmd(
        &fixture("split_by_n"),
        &[&threads.to_string(), &calls.to_string(), mode],
    )
}

#[test]
fn split_by_n_fixture_catches_an_undersized_team() {
    // Without the shim every region gets exactly the n it split by.
    for mode in ["clause", "noclause"] {
        let base = split_by_n(4, 2000, mode).run();
        base.ok();
        assert_eq!(base.int("calls"), 8000, "{mode}: {}", base.stdout);
        assert_eq!(base.int("wrong_calls"), 0, "{mode}: {}", base.stdout);
        assert_eq!(base.int("dynamic"), 0, "{mode}: {}", base.stdout);
    }
    // A team one short of the split (num_threads(1), split by 2) must be
    // caught on every call: the check above can fail.
    let short = split_by_n(1, 200, "selfcheck").run();
    short.ok();
    assert_eq!(short.int("max_team"), 1, "{}", short.stdout);
    assert_eq!(short.int("calls"), 200, "{}", short.stdout);
    assert_eq!(short.int("wrong_calls"), 200, "{}", short.stdout);

    // A lone caller under the shim gets the whole budget.
    for mode in ["clause", "noclause"] {
        let r = split_by_n(1, 2000, mode).shim().cores(2).run();
        r.ok();
        assert_eq!(r.int("calls"), 2000, "{mode}: {}", r.stdout);
        assert_eq!(r.int("wrong_calls"), 0, "{mode}: {}", r.stdout);
        assert_eq!(r.int("min_team"), 2, "{mode}: {}", r.stdout);
    }
}

#[test]
fn num_threads_clause_regions_get_the_team_they_split_by_under_contention() {
    // Four threads at once on a 2-core budget, each asking num_threads(2).
    // A team cut to 1 runs only blocks 0..31 of 64: a wrong sum.
    let r = split_by_n(4, 2000, "clause").shim().cores(2).run();
    r.ok();
    assert_eq!(r.int("calls"), 8000, "{}", r.stdout);
    assert_eq!(
        r.int("wrong_calls"),
        0,
        "a num_threads(n) region whose body splits by n must get n threads\n{}\n{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn no_clause_regions_get_omp_get_max_threads_under_contention() {
    // n = omp_get_max_threads(), then `#pragma omp parallel` with no clause:
    // with dynamic adjustment off OpenMP promises exactly n threads.
    let r = split_by_n(4, 2000, "noclause").shim().cores(2).run();
    r.ok();
    assert_eq!(r.int("dynamic"), 0, "{}", r.stdout);
    assert_eq!(r.int("calls"), 8000, "{}", r.stdout);
    assert_eq!(
        r.int("wrong_calls"),
        0,
        "a no-clause region must get the omp_get_max_threads() just answered\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.int("max_n") <= 2, "within the budget: {}", r.stdout);
    assert!(r.int("max_team") <= 2, "within the budget: {}", r.stdout);
}

/// A run of `split_by_n 4 200 noclause` (with the fixture's variables `env`
/// set) whose four threads did ask `omp_get_max_threads()` together: their
/// first questions within 80 ms, and none ended (ending gives its hold-back
/// back) before the last one was answered. The window is real time, so a run
/// that missed it proves nothing and is retried, up to 8 in all. Every run
/// must split correctly.
fn asked_together(env: &[(&str, &str)]) -> Run {
    for _ in 0..8 {
        let mut c = split_by_n(4, 200, "noclause").shim().cores(2);
        for (k, v) in env {
            c = c.env(k, v);
        }
        let r = c.run();
        r.ok();
        assert_eq!(r.int("wrong_calls"), 0, "{}", r.stdout);
        if r.float("first_ask_spread_ms") < 80.0 && r.int("ended_before_last_answer") == 0 {
            return r;
        }
    }
    panic!("{env:?}: no run had its four threads ask together (within 80 ms, none ended before)");
}

#[test]
fn threads_that_ask_together_share_the_budget_they_are_promised() {
    // Four threads released by one barrier each ask omp_get_max_threads()
    // before any of them has run a region. The ledger is empty for all four;
    // a promise made within the last 100 ms holds its extras back from the
    // next askers, so one thread is promised 2 and the others 1 (without it,
    // all four were promised 2 and ran 8 threads on 2 cores, for good).
    they_share_the_budget(&[], "threads asking together");
}

/// Four threads that asked together (`asked_together`) were promised at
/// most the budget (2) between them: one extra thread in all.
fn they_share_the_budget(env: &[(&str, &str)], who: &str) {
    let r = asked_together(env);
    assert!(
        r.int("first_extras") <= 1,
        "{who} were promised more extras than the budget holds\n{}",
        r.stdout
    );
}

#[test]
fn a_worker_that_asked_and_starts_helper_threads_keeps_holding_back() {
    // Each of four threads asks omp_get_max_threads(), then starts and joins
    // a helper thread, then runs its regions itself (scikit-learn's
    // HistGradientBoosting bins on a joblib thread pool between its question
    // and its regions). Only the process's main thread hands its work on by
    // starting threads: a worker's helper must not end its hold-back, or the
    // next askers see the whole budget (measured: all four promised 2, 8
    // threads on 2 cores, HistGradientBoosting 1.27x of loky's rule).
    they_share_the_budget(&[("HELPERS", "1")], "workers that start helpers");
}

#[test]
fn a_thread_that_asked_and_then_starts_workers_leaves_them_the_budget() {
    // The main thread asks omp_get_max_threads() (promised 2), then starts
    // four threads and runs nothing itself: starting a thread ends its
    // hold-back, so the four share the whole budget (2, 1, 1, 1) instead of
    // the 1 each they would get if it still held 2 back. ASK_FIRST=set: the
    // threads exist already, and main's omp_set_num_threads(1) ends it.
    for how in ["start", "set"] {
        let r = asked_together(&[("ASK_FIRST", how)]);
        assert_eq!(r.int("main_n"), 2, "{}", r.stdout);
        assert_eq!(r.int("first_extras"), 1, "{how}: {}", r.stdout);
    }
}

#[test]
fn two_processes_on_one_ledger_get_the_teams_they_split_by() {
    for mode in ["clause", "noclause"] {
        let dir = tempdir(&format!("split-{mode}"));
        let name = format!("/parbudget-test-split-{}-{mode}", std::process::id());
        let bin = fixture("split_by_n");
        let script = format!(
            "{bin} 2 5000 {mode} > {d}/a.txt & {bin} 2 5000 {mode} > {d}/b.txt & wait",
            d = dir.display()
        );
        let r = cmd("sh", &["-c", &script])
            .shim()
            .cores(2)
            .env("PARBUDGET_LEDGER", &name)
            .run();
        // A name the user chose is kept for reuse: remove it before judging.
        let _ = std::fs::remove_file(format!("/dev/shm{name}"));
        r.ok();
        for f in ["a.txt", "b.txt"] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            let kv = |k: &str| -> i64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or_else(|| panic!("{mode} {f}: no {k}=\n{text}\n{}", r.stderr))
                    .parse()
                    .unwrap()
            };
            assert_eq!(kv("calls"), 10000, "{mode} {f}:\n{text}");
            assert_eq!(
                kv("wrong_calls"),
                0,
                "{mode} {f}: each region must get the n it splits by\n{text}\n{}",
                r.stderr
            );
        }
    }
}
