//! Ledger scaling (issue 16, goal 4): 1 to 64 threads entering short regions
//! at once under a budget of 2. Correctness only: every region's team follows
//! the team rule and the ledger comes back to zero. The timings are the
//! bench's (`scripts/bench --only scale_t1,...`), never asserted here.

use crate::support::*;

const BUDGET: u32 = 2;
const LONE: i64 = 20;

/// Runs `ledger_scaling T N CLAUSE` under the shim and checks what holds for
/// every clause; returns the program's output and its one report.
fn run(threads: u32, entries: u32, clause: u32) -> (Run, serde_json::Value) {
    let dir = tempdir(&format!("scaling-{threads}-{clause}"));
    let r = cmd(
        &fixture("ledger_scaling"),
        &[
            &threads.to_string(),
            &entries.to_string(),
            &clause.to_string(),
            &LONE.to_string(),
        ],
    )
    .shim()
    .cores(BUDGET)
    .report_into(&dir)
    .timeout(30)
    .run();
    r.ok();
    let what = format!("T={threads} clause={clause}: {}", r.stdout);
    let all = i64::from(threads) * i64::from(entries);
    assert_eq!(r.int("entries"), all, "{what}");
    let (lo, hi) = (r.int("min_team"), r.int("max_team"));
    assert!(
        lo >= 1 && hi <= i64::from(BUDGET),
        "teams within 1..=budget: {what}"
    );
    // After every thread has left its regions, a lone caller gets the whole
    // budget again: nothing leaked in this process.
    assert_eq!(r.int("lone_min_team"), i64::from(BUDGET), "{what}");
    assert_eq!(r.int("lone_max_team"), i64::from(BUDGET), "{what}");

    let mut reps = reports(&dir);
    assert_eq!(reps.len(), 1, "one process, one report: {reps:?}");
    let rep = reps.remove(0);
    assert_eq!(rep["budget"], BUDGET, "{rep}");
    assert_eq!(
        rep["ledger"]["used"], 0,
        "the ledger is back to zero: {rep}"
    );
    assert_eq!(rep["ledger"]["held_here"], 0, "{rep}");
    assert_eq!(rep["other_threads"]["created"], threads, "{rep}");
    assert_eq!(rep["other_threads"]["live"], 0, "all joined: {rep}");
    let gomp = runtimes_of(&rep, "libgomp");
    assert_eq!(gomp.len(), 1, "{rep}");
    let g = gomp[0];
    let regions = g["regions"].as_i64().unwrap();
    assert_eq!(regions, all + LONE, "every region counted once: {rep}");
    // The report's mean team is the program's own (its regions and the lone
    // caller's), to the report's 3 decimals.
    let mean =
        (r.float("mean_team") * all as f64 + f64::from(BUDGET) * LONE as f64) / regions as f64;
    let reported = g["mean_team"].as_f64().unwrap();
    assert!(
        (reported - mean).abs() < 2e-3,
        "report mean_team {reported} vs program {mean}: {rep}"
    );
    (r, rep)
}

#[test]
fn scaling_without_a_clause_one_to_64_threads_stay_within_the_budget() {
    for threads in [1u32, 2, 4, 8, 16, 64] {
        // About 1000 entries per run in all, at least 50 per thread.
        let entries = (1000 / threads).max(50);
        let (r, rep) = run(threads, entries, 0);
        let what = format!("T={threads}: {}", r.stdout);
        if threads == 1 {
            // A lone caller keeps the whole budget, region after region.
            assert_eq!(r.int("min_team"), i64::from(BUDGET), "{what}");
        }
        // Extra workers are granted only from what is free, so at no instant
        // do more than budget - 1 of them run region bodies at once.
        assert!(
            r.int("max_extras") < i64::from(BUDGET),
            "extra workers over the budget at once: {what}"
        );
        let g = runtimes_of(&rep, "libgomp")[0];
        assert_eq!(g["over_budget"], 0, "no clause, no promise: {rep}");
    }
}

#[test]
fn scaling_clauses_are_kept_exactly_by_64_threads() {
    for clause in [1u32, 2] {
        let (r, _) = run(64, 50, clause);
        let what = format!("num_threads({clause}): {}", r.stdout);
        assert_eq!(r.int("min_team"), i64::from(clause), "{what}");
        assert_eq!(r.int("max_team"), i64::from(clause), "{what}");
    }
}
