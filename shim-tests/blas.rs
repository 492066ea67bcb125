//! BLAS calls sized from the same ledger as OpenMP regions. These
//! tests judge correctness and team sizes; speed claims live in scripts/bench.

use crate::support::*;

fn openblas_of(rep: &serde_json::Value) -> serde_json::Value {
    runtimes_of(rep, "openblas")
        .into_iter()
        .find(|r| r["regions"].as_u64().unwrap_or(0) > 0)
        .cloned()
        .unwrap_or_else(|| panic!("no sized OpenBLAS copy: {rep}"))
}

fn report_run(c: Cmd, name: &str) -> (Run, Vec<serde_json::Value>) {
    let dir = tempdir(name);
    let r = c.report_into(&dir).timeout(180).run();
    r.ok();
    let reps = reports(&dir);
    (r, reps)
}

#[test]
fn debian_openblas_from_c_threads_shares_the_budget() {
    let (r, reps) = report_run(
        cmd(&fixture("blas_threads"), &["4", "20"]).shim().cores(2),
        "blas-c4",
    );
    assert_eq!(r.int("results_ok"), 1);
    let ob = openblas_of(&reps[0]);
    assert_eq!(ob["regions"], 80);
    assert!(
        ob["mean_team"].as_f64().unwrap() <= 1.5,
        "four callers on two cores: {ob}"
    );

    let (r, reps) = report_run(
        cmd(&fixture("blas_threads"), &["1", "20"]).shim().cores(2),
        "blas-c1",
    );
    assert_eq!(r.int("results_ok"), 1);
    assert_eq!(
        openblas_of(&reps[0])["mean_team"],
        2.0,
        "a lone caller keeps the whole budget"
    );
}

#[test]
fn numpy_from_a_thread_pool_and_from_one_thread() {
    let (r, reps) = report_run(
        cmd(&python(), &[&py("blas_tasks.py"), "threads", "8", "15"])
            .shim()
            .cores(2),
        "np-threads",
    );
    assert_eq!(r.int("checksum_ok"), 1);
    let ob = openblas_of(&reps[0]);
    assert!(ob["path"].as_str().unwrap().contains("numpy.libs"));
    assert!(ob["mean_team"].as_f64().unwrap() <= 1.5, "{ob}");

    let (r, reps) = report_run(
        cmd(&python(), &[&py("blas_tasks.py"), "serial", "2", "15"])
            .shim()
            .cores(2),
        "np-serial",
    );
    assert_eq!(r.int("checksum_ok"), 1);
    assert!(openblas_of(&reps[0])["mean_team"].as_f64().unwrap() >= 1.9);
}

#[test]
fn numpy_in_multiprocessing_workers_shares_the_tree_budget() {
    for method in ["fork", "spawn"] {
        let (r, reps) = report_run(
            cmd(&python(), &[&py("blas_tasks.py"), method, "8", "15"])
                .shim()
                .cores(2),
            &format!("np-{method}"),
        );
        assert_eq!(r.int("checksum_ok"), 1);
        let workers: Vec<f64> = reps
            .iter()
            .filter_map(|rep| {
                runtimes_of(rep, "openblas")
                    .into_iter()
                    .find(|o| o["regions"].as_u64().unwrap_or(0) > 0)
                    .map(|o| o["mean_team"].as_f64().unwrap())
            })
            .collect();
        assert!(
            workers.len() >= 4,
            "{method}: {} worker reports",
            workers.len()
        );
        let avg = workers.iter().sum::<f64>() / workers.len() as f64;
        assert!(
            avg <= 1.5,
            "{method}: four workers on two cores: {workers:?}"
        );
    }
}

#[test]
fn threadpoolctl_limits_remain_the_ceiling() {
    let code = "import numpy as np\nfrom threadpoolctl import threadpool_limits\n\
                a = np.ones((400, 400))\nwith threadpool_limits(1, user_api='blas'):\n    [a @ a for _ in range(10)]\nprint('ok=1')";
    let (r, reps) = report_run(cmd(&python(), &["-c", code]).shim().cores(2), "tpc");
    assert_eq!(r.int("ok"), 1);
    assert_eq!(
        openblas_of(&reps[0])["mean_team"],
        1.0,
        "the user's limit of 1 wins over the budget of 2"
    );
}

#[test]
fn cpu_waiting_loop_completes_with_both_runtimes_sized() {
    let (r, reps) = report_run(
        cmd(
            &python(),
            &[&py("cpu_waiting.py"), &fixture("libregions.so"), "20"],
        )
        .shim()
        .cores(2),
        "cpuwait",
    );
    assert_eq!(r.int("ok"), 1);
    assert_eq!(
        r.float("mean_region_team"),
        2.0,
        "alternating phases each get the whole budget"
    );
    let rep = &reps[0];
    assert_eq!(openblas_of(rep)["mean_team"], 2.0);
    assert!(runtimes_of(rep, "libgomp")[0]["regions"].as_u64().unwrap() >= 420);
}

#[test]
fn mkl_setter_is_clamped_and_its_openmp_regions_share_the_ledger() {
    // libmkl_rt from PyPI's mkl threads through Intel OpenMP: each call's
    // internal regions enter libiomp5's __kmpc_fork_call, sized per region.
    // MKL_DYNAMIC=FALSE: MKL would otherwise cap requests at the cores itself.
    let base = cmd(&fixture("mkl_threads"), &["64", "1", "2"])
        .env("MKL_DYNAMIC", "FALSE")
        .run();
    base.ok();
    assert_eq!(
        base.int("after_set"),
        64,
        "without the shim MKL takes 64: {}",
        base.stdout
    );

    let (r, reps) = report_run(
        cmd(&fixture("mkl_threads"), &["64", "1", "10"])
            .shim()
            .cores(2)
            .env("MKL_DYNAMIC", "FALSE")
            .env("PARBUDGET_LOG", "info"),
        "mkl1",
    );
    assert_eq!(r.int("after_set"), 2);
    assert_eq!(r.int("results_ok"), 1);
    assert!(
        r.stderr
            .contains("clamp symbol=\"MKL_Set_Num_Threads\" requested=64 granted=2 impl=mkl"),
        "{}",
        r.stderr
    );
    let iomp = runtimes_of(&reps[0], "libiomp");
    assert!(!runtimes_of(&reps[0], "mkl").is_empty(), "{}", reps[0]);
    let lone = iomp[0]["mean_team"].as_f64().unwrap();
    assert!(
        lone >= 1.9,
        "a lone MKL caller keeps the budget: {}",
        reps[0]
    );

    let (r, reps) = report_run(
        cmd(&fixture("mkl_threads"), &["0", "4", "10"])
            .shim()
            .cores(2),
        "mkl4",
    );
    assert_eq!(r.int("results_ok"), 1);
    // MKL pushes an explicit team size for its internal regions, and nothing
    // shows that its kernels adapt to a smaller team: each region gets what
    // it asked for (the clamped budget), and what that costs the ledger is
    // counted, not refused.
    // (Whether the four callers' regions overlap, and so go over the
    // budget, is up to timing; the nested-regions test counts over_budget
    // deterministically.)
    let iomp = runtimes_of(&reps[0], "libiomp")[0].clone();
    assert_eq!(iomp["mean_team"], 2.0, "{}", reps[0]);
    assert_eq!(reps[0]["ledger"]["used"], 0, "{}", reps[0]);
}

#[test]
fn blis_setter_is_clamped() {
    let base = cmd(&fixture("blis_threads"), &["64"]).run();
    assert_eq!(base.ok().int("after_set"), 64);
    let r = cmd(&fixture("blis_threads"), &["64"]).shim().cores(2).run();
    assert_eq!(r.ok().int("after_set"), 2);
}

#[test]
fn scipy_fortran_gemm_on_its_own_openblas_copy_is_sized_per_call() {
    let (r, reps) = report_run(
        cmd(&python(), &[&py("scipy_gemm.py"), "serial"])
            .shim()
            .cores(2),
        "scipy",
    );
    assert_eq!(r.int("ok"), 1);
    let scipy_copy = runtimes_of(&reps[0], "openblas")
        .into_iter()
        .find(|o| o["path"].as_str().unwrap().contains("scipy.libs"))
        .cloned()
        .unwrap_or_else(|| panic!("{}", reps[0]));
    assert_eq!(
        scipy_copy["regions"], 30,
        "every dgemm call sized: {scipy_copy}"
    );
    assert_eq!(scipy_copy["mean_team"], 2.0);
}
