//! Issue 6: BLAS calls sized from the same ledger as OpenMP regions. These
//! tests judge correctness and team sizes; speed claims live in scripts/bench.

use crate::support::*;

fn py(script: &str) -> String {
    root().join("shim-tests/py").join(script).display().to_string()
}

fn openblas_of(rep: &serde_json::Value) -> serde_json::Value {
    runtimes_of(rep, "openblas").into_iter().find(|r| r["regions"].as_u64().unwrap_or(0) > 0).cloned().unwrap_or_else(|| panic!("no sized OpenBLAS copy: {rep}"))
}

fn report_run(c: Cmd, name: &str) -> (Run, Vec<serde_json::Value>) {
    let dir = tempdir(name);
    let r = c.env("PARBUDGET_REPORT", &format!("{}/r-%p.json", dir.display())).timeout(180).run();
    r.ok();
    let reps = reports(&dir);
    (r, reps)
}

#[test]
fn debian_openblas_from_c_threads_shares_the_budget() {
    let (r, reps) = report_run(cmd(&fixture("blas_threads"), &["4", "20"]).shim().cores(2), "blas-c4");
    assert_eq!(r.int("results_ok"), 1);
    let ob = openblas_of(&reps[0]);
    assert_eq!(ob["regions"], 80);
    assert!(ob["mean_team"].as_f64().unwrap() <= 1.5, "four callers on two cores: {ob}");

    let (r, reps) = report_run(cmd(&fixture("blas_threads"), &["1", "20"]).shim().cores(2), "blas-c1");
    assert_eq!(r.int("results_ok"), 1);
    assert_eq!(openblas_of(&reps[0])["mean_team"], 2.0, "a lone caller keeps the whole budget");
}

#[test]
fn numpy_from_a_thread_pool_and_from_one_thread() {
    let (r, reps) = report_run(cmd(&python(), &[&py("blas_tasks.py"), "threads", "8", "15"]).shim().cores(2), "np-threads");
    assert_eq!(r.int("checksum_ok"), 1);
    let ob = openblas_of(&reps[0]);
    assert!(ob["path"].as_str().unwrap().contains("numpy.libs"));
    assert!(ob["mean_team"].as_f64().unwrap() <= 1.5, "{ob}");

    let (r, reps) = report_run(cmd(&python(), &[&py("blas_tasks.py"), "serial", "2", "15"]).shim().cores(2), "np-serial");
    assert_eq!(r.int("checksum_ok"), 1);
    assert!(openblas_of(&reps[0])["mean_team"].as_f64().unwrap() >= 1.9);
}

#[test]
fn numpy_in_multiprocessing_workers_shares_the_tree_budget() {
    for method in ["fork", "spawn"] {
        let (r, reps) = report_run(cmd(&python(), &[&py("blas_tasks.py"), method, "8", "15"]).shim().cores(2), &format!("np-{method}"));
        assert_eq!(r.int("checksum_ok"), 1);
        let workers: Vec<f64> = reps
            .iter()
            .filter_map(|rep| runtimes_of(rep, "openblas").into_iter().find(|o| o["regions"].as_u64().unwrap_or(0) > 0).map(|o| o["mean_team"].as_f64().unwrap()))
            .collect();
        assert!(workers.len() >= 4, "{method}: {} worker reports", workers.len());
        let avg = workers.iter().sum::<f64>() / workers.len() as f64;
        assert!(avg <= 1.5, "{method}: four workers on two cores: {workers:?}");
    }
}

#[test]
fn threadpoolctl_limits_remain_the_ceiling() {
    let code = "import numpy as np\nfrom threadpoolctl import threadpool_limits\n\
                a = np.ones((400, 400))\nwith threadpool_limits(1, user_api='blas'):\n    [a @ a for _ in range(10)]\nprint('ok=1')";
    let (r, reps) = report_run(cmd(&python(), &["-c", code]).shim().cores(2), "tpc");
    assert_eq!(r.int("ok"), 1);
    assert_eq!(openblas_of(&reps[0])["mean_team"], 1.0, "the user's limit of 1 wins over the budget of 2");
}

#[test]
fn cpu_waiting_loop_completes_with_both_runtimes_sized() {
    let (r, reps) = report_run(cmd(&python(), &[&py("cpu_waiting.py"), &fixture("libregions.so"), "20"]).shim().cores(2), "cpuwait");
    assert_eq!(r.int("ok"), 1);
    assert_eq!(r.float("mean_region_team"), 2.0, "alternating phases each get the whole budget");
    let rep = &reps[0];
    assert_eq!(openblas_of(rep)["mean_team"], 2.0);
    assert!(runtimes_of(rep, "libgomp")[0]["regions"].as_u64().unwrap() >= 420);
}
