//! Scaling out beyond one program: Ray workers that get the shim only
//! through `ray.init(runtime_env={"env_vars": ...})`, and a container's CPU
//! limit (a real cgroup CPU quota) as the default budget.

use crate::support::*;
use std::path::Path;

fn ray_run(mode: &str) -> Run {
    let r = cmd(
        &python(),
        &[
            &py("ray_blas.py"),
            &root()
                .join("target/release/parbudget")
                .display()
                .to_string(),
            mode,
        ],
    )
    .env("PYTHONPATH", &root().join("python").display().to_string())
    .env("PARBUDGET_LIB", &shim().display().to_string())
    .env("RAY_USAGE_STATS_ENABLED", "0")
    .timeout(90)
    .run();
    r.ok();
    r
}

#[test]
fn ray_runtime_env_preloads_the_workers_into_one_ledger_and_a_reused_worker_follows_the_budget() {
    // parbudget.environ() + PARBUDGET_LEDGER only: every worker loads the
    // shim and joins the named ledger, but Ray sets OMP_NUM_THREADS to the
    // task's CPUs (1) before the worker's first task imports numpy, and a
    // reused worker's OpenBLAS keeps that 1 (ray#35937): the shim keeps a
    // pool's configured size as the ceiling.
    let ray = ray_run("ray");
    assert_eq!(
        ray.int("driver_preloaded"),
        0,
        "only the workers get the shim"
    );
    assert_eq!(ray.int("pair_workers"), 2, "{}", ray.stdout);
    assert_eq!(ray.get("pair_preloaded"), "1,1");
    assert!(
        ray.get("pair_ledgers").starts_with("/parbudget-raytest-")
            && !ray.get("pair_ledgers").contains(','),
        "both workers in one named ledger: {}",
        ray.stdout
    );
    assert_eq!(
        ray.int("workers_in_audit"),
        2,
        "`parbudget ledger --json` lists both workers: {}",
        ray.stdout
    );
    assert_eq!(ray.int("audit_budget"), 2);
    assert_eq!(ray.int("alone_reused"), 1, "{}", ray.stdout);
    assert_eq!(ray.get("alone_omp"), "1", "Ray's per-task rule");
    assert_eq!(ray.get("alone_tp_openblas"), "1");
    assert!(ray.float("alone_team") < 1.1, "{}", ray.stdout);

    // With OMP_NUM_THREADS=<budget> in env_vars, Ray keeps it, OpenBLAS
    // loads with the budget, and the shim sizes every call from the ledger:
    // the reused worker's lone task gets the whole budget.
    let budget = ray_run("budget");
    assert_eq!(budget.int("pair_workers"), 2, "{}", budget.stdout);
    assert_eq!(budget.get("pair_preloaded"), "1,1");
    assert_eq!(budget.int("workers_in_audit"), 2, "{}", budget.stdout);
    assert_eq!(budget.int("alone_reused"), 1, "{}", budget.stdout);
    assert_eq!(budget.get("alone_omp"), "2");
    assert_eq!(budget.get("alone_tp_openblas"), "2");
    assert_eq!(
        budget.int("alone_calls"),
        6,
        "each matmul sized by the ledger"
    );
    assert!(
        budget.float("alone_team") >= 1.9,
        "a lone task on a reused worker gets the whole budget: {}",
        budget.stdout
    );
    assert_eq!(
        budget.get("digest"),
        ray.get("digest"),
        "the same results at any pool size"
    );
}

#[test]
fn a_real_cgroup_cpu_quota_is_the_default_budget() {
    // What a Kubernetes CPU limit is inside a container: a cgroup quota
    // (v2 cpu.max, v1 cpu.cfs_quota_us). One CPU's worth of quota, on a
    // machine of 2: the budget is 1 and the pool variables are exported.
    let name = format!("parbudget-test-{}", std::process::id());
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dir = if v2 {
        Path::new("/sys/fs/cgroup").join(&name)
    } else {
        Path::new("/sys/fs/cgroup/cpu").join(&name)
    };
    if let Err(e) = std::fs::create_dir(&dir) {
        eprintln!(
            "skipped: cannot create the cgroup {} ({e}); the quota arithmetic is unit-tested in src/budget.rs",
            dir.display()
        );
        return;
    }
    let set = if v2 {
        std::fs::write(dir.join("cpu.max"), "100000 100000")
    } else {
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000")
            .and_then(|_| std::fs::write(dir.join("cpu.cfs_quota_us"), "100000"))
    };
    if let Err(e) = set {
        let _ = std::fs::remove_dir(&dir);
        eprintln!("skipped: cannot set a CPU quota in {} ({e})", dir.display());
        return;
    }
    let out = tempdir("cgroup");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} -c \"import os, numpy; from threadpoolctl import threadpool_info; \
         print('omp=%s' % os.environ.get('OMP_NUM_THREADS')); \
         print('pool=%d' % [i for i in threadpool_info() if i['internal_api'] == 'openblas'][0]['num_threads'])\"",
        dir.display(),
        python()
    );
    let r = cmd("sh", &["-c", &script])
        .shim()
        .report_into(&out)
        .timeout(60)
        .run();
    let _ = std::fs::remove_dir(&dir);
    r.ok();
    let reps = reports(&out);
    assert_eq!(reps[0]["budget"], 1, "{}", reps[0]);
    assert_eq!(reps[0]["budget_source"], "cgroup", "{}", reps[0]);
    assert_eq!(r.get("omp"), "1", "below the affinity CPUs: exported");
    assert_eq!(r.int("pool"), 1, "numpy's OpenBLAS loaded under the quota");
}
