//! CPython with numpy, threadpoolctl, scikit-learn and ctypes-loaded OpenMP.

use crate::support::*;

#[test]
fn numpy_openblas_and_ctypes_libgomp_loaded_later_obey_budget_1() {
    let lib = fixture("libregions.so");
    let r = cmd(&python(), &[&py("pools.py"), &lib])
        .shim()
        .cores(1)
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.int("pool_openblas_numpy"), 1, "{}", r.stdout);
    assert_eq!(r.int("pool_openmp_libgomp"), 1, "{}", r.stdout);
    assert_eq!(r.int("fix_team"), 1);
    assert_eq!(r.int("fix_clause_team"), 1);
    assert_eq!(r.int("matmul_ok"), 1);
    assert_eq!(
        r.int("tasks_after"),
        r.int("tasks_before"),
        "a 1500x1500 matmul must add no thread"
    );
    assert_eq!(r.int("tasks_after"), 1);
    assert!(
        r.shim_lines()
            .iter()
            .all(|l| !l.contains(" WARN ") || l.contains("conflict")),
        "{}",
        r.stderr
    );
}

#[test]
fn numpy_and_ctypes_libgomp_under_budget_2() {
    let base = cmd(&python(), &[&py("pools.py"), &fixture("libregions.so")])
        .timeout(120)
        .run();
    base.ok();
    assert_eq!(
        base.int("fix_clause_team"),
        64,
        "without the shim the clause wins"
    );
    let r = cmd(&python(), &[&py("pools.py"), &fixture("libregions.so")])
        .shim()
        .cores(2)
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.int("pool_openblas_numpy"), 2);
    assert_eq!(r.int("fix_team"), 2);
    assert_eq!(r.int("fix_clause_team"), 2);
}

#[test]
fn multiprocessing_fork_after_ctypes_openmp_completes() {
    let r = cmd(
        &python(),
        &[&py("mp_fork.py"), "ctypes", &fixture("libregions.so")],
    )
    .shim()
    .cores(2)
    .timeout(90)
    .run();
    r.ok();
    assert_eq!(r.int("parent"), 2);
    assert_eq!(
        r.get("pool_results"),
        "1,1,1,1",
        "inherited threads run serially"
    );
    let warns = r
        .shim_lines()
        .into_iter()
        .filter(|l| l.contains("WARN fork_after_gomp"))
        .count();
    assert_eq!(
        warns, 1,
        "one warning per libgomp copy, not one per worker: {}",
        r.stderr
    );
}

#[test]
fn os_fork_after_ctypes_openmp_completes() {
    let r = cmd(
        &python(),
        &[
            &py("mp_fork.py"),
            "ctypes",
            &fixture("libregions.so"),
            "osfork",
        ],
    )
    .shim()
    .cores(2)
    .timeout(90)
    .run();
    r.ok();
    assert_eq!(r.int("osfork_child"), 1);
    assert_eq!(r.int("osfork_status"), 0);
    assert!(r.stderr.contains("WARN fork_after_gomp"));
}

#[test]
fn multiprocessing_fork_after_scikit_learn_vendored_libgomp_completes() {
    let dir = tempdir("sklearn-fork");
    let r = cmd(&python(), &[&py("mp_fork.py"), "sklearn"])
        .shim()
        .cores(2)
        .report_into(&dir)
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.get("pool_results"), "1,1,1,1");
    let w: Vec<_> = r
        .shim_lines()
        .into_iter()
        .filter(|l| l.contains("fork_after_gomp"))
        .collect();
    assert!(
        !w.is_empty() && w.iter().all(|l| l.contains("scikit_learn.libs/libgomp")),
        "{}",
        r.stderr
    );
    let reps = reports(&dir);
    assert!(
        reps.len() >= 3,
        "parent and each pool worker write their own report: {}",
        reps.len()
    );
}
