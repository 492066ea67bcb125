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
    .env("MP_POOL", "1")
    .timeout(90)
    .run();
    r.ok();
    assert_eq!(r.int("parent"), 2);
    assert_eq!(
        r.get("pool_results"),
        "2,2,2,2",
        "the forked worker keeps the full budget (policy fresh)"
    );
    assert!(
        !r.stderr.contains("WARN"),
        "nothing hangs, nothing slows: no warning: {}",
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
    assert_eq!(r.int("osfork_child"), 2);
    assert_eq!(r.int("osfork_status"), 0);
    assert!(!r.stderr.contains("WARN"), "{}", r.stderr);
}

#[test]
fn multiprocessing_fork_after_scikit_learn_vendored_libgomp_completes() {
    // One worker at a time has the whole budget: its fit equals the
    // parent's bitwise, with teams of 2.
    let dir = tempdir("sklearn-fork");
    let r = cmd(&python(), &[&py("mp_fork.py"), "sklearn"])
        .shim()
        .cores(2)
        .env("MP_POOL", "1")
        .report_into(&dir)
        .timeout(120)
        .run();
    r.ok();
    let parent = r.get("parent");
    assert_eq!(
        r.get("pool_results"),
        [parent.as_str(); 4].join(","),
        "the fork-started worker computes what the parent computed"
    );
    let reps = reports(&dir);
    let parent_rep = reps
        .iter()
        .find(|x| {
            x["warnings"].as_array().unwrap().iter().any(|w| {
                w["kind"] == "fork_after_gomp"
                    && w["message"]
                        .as_str()
                        .unwrap()
                        .contains("scikit_learn.libs/libgomp")
            })
        })
        .expect("the parent's report records the fork");
    // The parent's children are the pool worker and multiprocessing's
    // resource tracker (an exec'd Python that loads no runtime).
    let worker = reps
        .iter()
        .find(|x| x["ppid"] == parent_rep["pid"] && !runtimes_of(x, "libgomp").is_empty())
        .expect("the worker's own report");
    assert_eq!(
        runtimes_of(worker, "libgomp")[0]["mean_team"],
        2.0,
        "worker regions at the full budget: {worker}"
    );
    assert!(!r.stderr.contains(" WARN "), "{}", r.stderr);

    // Two workers at once share the budget: scikit-learn asks
    // omp_get_max_threads(), gets the truth (sometimes 1) and sizes its
    // reductions by it. Labels are equal; the inertia, a floating-point
    // reduction over the team, may differ in the last bits, as it does
    // between machines with different core counts.
    let r = cmd(&python(), &[&py("mp_fork.py"), "sklearn"])
        .shim()
        .cores(2)
        .timeout(120)
        .run();
    r.ok();
    let (p_inertia, p_labels) = r
        .get("parent")
        .split_once('/')
        .map(|(a, b)| (a.parse::<f64>().unwrap(), b.to_string()))
        .unwrap();
    for w in r.get("pool_results").split(',') {
        let (inertia, labels) = w.split_once('/').unwrap();
        assert_eq!(labels, p_labels);
        let rel = (inertia.parse::<f64>().unwrap() - p_inertia).abs() / p_inertia;
        assert!(rel < 1e-12, "{w} vs {p_inertia}");
    }
}

#[test]
fn fork_after_teams_in_two_libgomp_copies_keeps_both_full_and_equal() {
    // scikit-learn's vendored libgomp (KMeans) and the system one (a ctypes
    // library) both ran teams on the forking thread: both pools are freed
    // before fork, and the child computes what the parent computed.
    let dir = tempdir("fork-two-copies");
    let r = cmd(
        &python(),
        &[&py("fork_two_copies.py"), &fixture("libregions.so")],
    )
    .shim()
    .cores(2)
    .report_into(&dir)
    .timeout(120)
    .run();
    r.ok();
    assert_eq!(r.int("child_status"), 0);
    assert_eq!(r.get("child_fit"), r.get("parent_fit"));
    assert_eq!(r.get("parent_after_fit"), r.get("parent_fit"));
    assert_eq!(r.int("child_team"), 2);
    assert_eq!(r.int("parent_after_team"), 2);
    let reps = reports(&dir);
    let forks: Vec<_> = reps
        .iter()
        .flat_map(|x| x["warnings"].as_array().unwrap().iter())
        .filter(|w| w["kind"] == "fork_after_gomp")
        .map(|w| w["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(forks.len(), 2, "one entry per libgomp copy: {forks:?}");
    assert!(forks.iter().any(|m| m.contains("scikit_learn.libs")));
    assert!(forks.iter().all(|m| m.contains("freed before fork")));
    assert!(!r.stderr.contains(" WARN "), "{}", r.stderr);
}

#[test]
fn numba_omp_layer_fork_is_named_with_what_to_do_instead() {
    // numba's `omp` layer terminates a forked child itself: the shim cannot
    // rescue it, and its one warning must say so and name the way out.
    let r = cmd(&python(), &[&py("numba_fork.py")])
        .shim()
        .cores(2)
        .env("NUMBA_THREADING_LAYER", "omp")
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.get("parent"), "4999950000.0");
    assert_eq!(r.get("layer"), "omp");
    assert_eq!(
        r.int("child_status"),
        -15,
        "numba's own SIGTERM: {}",
        r.stderr
    );
    let w: Vec<_> = r
        .shim_lines()
        .into_iter()
        .filter(|l| l.contains(" WARN fork_after_gomp"))
        .collect();
    assert_eq!(w.len(), 1, "{}", r.stderr);
    assert!(
        w[0].contains("numba") && w[0].contains("NUMBA_THREADING_LAYER=workqueue"),
        "{}",
        w[0]
    );
    assert!(
        !w[0].contains("full teams"),
        "no promise of a rescue: {}",
        w[0]
    );
}

#[test]
fn joblib_loky_workers_join_the_ledger_and_compute_the_plain_results() {
    let base = cmd(&python(), &[&py("joblib_blas.py")]).timeout(120).run();
    base.ok();
    let dir = tempdir("joblib");
    let r = cmd(&python(), &[&py("joblib_blas.py")])
        .shim()
        .cores(2)
        .report_into(&dir)
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.get("digest"), base.get("digest"));
    let reps = reports(&dir);
    let workers: Vec<i64> = r
        .get("workers")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    for w in &workers {
        let rep = reps
            .iter()
            .find(|x| x["pid"].as_i64() == Some(*w))
            .unwrap_or_else(|| panic!("worker {w} wrote no report: {reps:?}"));
        assert_eq!(rep["ledger"]["scope"], "tree", "{rep}");
        assert_eq!(rep["ledger"]["joined"], true, "{rep}");
        assert_eq!(
            rep["ledger"]["name"], reps[0]["ledger"]["name"],
            "the worker shares the parent's ledger: {rep}"
        );
        assert!(
            runtimes_of(rep, "openblas")
                .iter()
                .any(|o| o["regions"].as_u64().unwrap() > 0),
            "its BLAS calls were sized from the ledger: {rep}"
        );
    }
}

#[test]
fn dask_local_cluster_workers_share_one_ledger_and_compute_the_plain_results() {
    let base = cmd(&python(), &[&py("dask_blas.py"), "2"])
        .timeout(240)
        .run();
    base.ok();
    let r = cmd(
        &root()
            .join("target/release/parbudget")
            .display()
            .to_string(),
        &[
            "run",
            "--cores",
            "2",
            "--",
            &python(),
            &py("dask_blas.py"),
            "2",
        ],
    )
    .timeout(240)
    .run();
    r.ok();
    dask_workers_share_one_ledger(&r, &base, "/parbudget-");
    assert_eq!(base.get("worker_openblas_env"), "1");
}

#[test]
fn multiprocessing_spawn_and_forkserver_workers_and_the_forkserver_join_the_ledger() {
    let launcher = root()
        .join("target/release/parbudget")
        .display()
        .to_string();
    let base = cmd(&python(), &[&py("mp_methods.py"), &launcher, "spawn"])
        .timeout(90)
        .run();
    base.ok();
    let mut digests = vec![];
    for method in ["spawn", "forkserver"] {
        let dir = tempdir(&format!("mp-{method}"));
        let r = cmd(&python(), &[&py("mp_methods.py"), &launcher, method])
            .shim()
            .cores(2)
            .report_into(&dir)
            .timeout(90)
            .run();
        r.ok();
        digests.push(r.get("digest"));
        let parent: i64 = r.int("parent");
        let workers: Vec<i64> = r
            .get("workers")
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(workers.len(), 2, "{method}: {}", r.stdout);
        assert_eq!(
            r.get("worker_ledgers"),
            r.get("ledger"),
            "{method}: every worker opened the parent's ledger"
        );
        // The parent and the forkserver run no BLAS call: they are in the
        // tree (their reports name its ledger) but join it only when they
        // need it; the workers, which do, are members.
        assert_eq!(
            r.int("workers_in_audit"),
            2,
            "{method}: `parbudget ledger` lists both workers: {}",
            r.stdout
        );
        // Who started the workers: the parent (spawn) or the forkserver,
        // itself started by the parent and a member too.
        let starter = if method == "forkserver" {
            r.int("forkserver")
        } else {
            parent
        };
        assert_eq!(r.get("worker_parents"), starter.to_string(), "{method}");
        let reps = reports(&dir);
        let rep_of = |pid: i64| {
            reps.iter()
                .find(|x| x["pid"].as_i64() == Some(pid))
                .unwrap_or_else(|| panic!("{method}: {pid} wrote no report: {reps:?}"))
        };
        let ledger = r.get("ledger");
        let in_tree = |rep: &serde_json::Value| {
            assert_eq!(rep["ledger"]["scope"], "tree", "{method}: {rep}");
            assert_eq!(rep["ledger"]["name"], ledger.as_str(), "{method}: {rep}");
        };
        in_tree(rep_of(parent));
        if method == "forkserver" {
            let fs = rep_of(starter);
            assert_eq!(fs["ppid"].as_i64(), Some(parent), "{fs}");
            in_tree(fs);
        }
        for w in &workers {
            let rep = rep_of(*w);
            assert_eq!(rep["ppid"].as_i64(), Some(starter), "{rep}");
            in_tree(rep);
            assert_eq!(rep["ledger"]["joined"], true, "{method}: {rep}");
            assert!(
                runtimes_of(rep, "openblas")
                    .iter()
                    .any(|o| o["regions"].as_u64().unwrap() > 0),
                "{method}: its BLAS calls were sized from the ledger: {rep}"
            );
        }
    }
    assert_eq!(
        digests,
        [base.get("digest"), base.get("digest")],
        "the plain results"
    );
}

#[test]
fn dask_pre_spawn_environ_alone_preloads_the_workers_into_one_named_ledger() {
    // The route for workers whose command cannot be wrapped: the driver runs
    // without the shim; Dask's Nanny applies pre-spawn-environ to os.environ
    // right before it spawns each worker process, whose exec loads the shim.
    let base = cmd(&python(), &[&py("dask_blas.py"), "2"])
        .timeout(240)
        .run();
    base.ok();
    let r = cmd(&python(), &[&py("dask_blas.py"), "2", "config"])
        .env("PYTHONPATH", &root().join("python").display().to_string())
        .env("PARBUDGET_LIB", &shim().display().to_string())
        .timeout(240)
        .run();
    r.ok();
    assert_eq!(
        r.int("driver_preloaded"),
        0,
        "only the workers get the shim"
    );
    dask_workers_share_one_ledger(&r, &base, "/parbudget-dasktest-");
}

/// What both Dask routes must show (shim-tests/py/dask_blas.py's lines): the
/// plain results, two workers in one ledger whose name starts with `prefix`,
/// both members at once (the client joins only when it runs BLAS itself),
/// and Dask's static OPENBLAS_NUM_THREADS=1 left out, so the ledger sizes
/// the calls.
fn dask_workers_share_one_ledger(r: &Run, base: &Run, prefix: &str) {
    assert_eq!(r.get("digest"), base.get("digest"));
    assert_eq!(r.int("worker_pids"), 2);
    let ledgers = r.get("ledgers");
    assert!(
        ledgers.starts_with(prefix) && !ledgers.contains(','),
        "every worker in one ledger: {ledgers}"
    );
    assert!(r.int("max_members") >= 2, "{}", r.stdout);
    assert_eq!(r.get("worker_openblas_env"), "unset");
}
