//! One ledger, teams sized at every region, across threads and
//! processes of one tree.

use crate::support::*;

/// The plain run of a `threads_omp` fixture (4 threads x 2,000 regions,
/// teams of 2): it shows what the fixture can see without the shim, more
/// than one extra worker inside region bodies at once. That needs two
/// threads' regions to overlap, which a loaded machine can keep from
/// happening for a whole run (300 regions often hid it; a CI run of 2,000
/// under load read max_extras=1), so it is retried a few times.
fn plain_overlap(fixture_name: &str) -> Run {
    let mut last = None;
    for _ in 0..5 {
        let base = cmd(&fixture(fixture_name), &["4", "2000"])
            .env("OMP_NUM_THREADS", "2")
            .run();
        base.ok();
        if base.int("max_extras") >= 2 {
            return base;
        }
        last = Some(base.stdout.clone());
    }
    panic!("the plain run never showed two extras at once: {last:?}");
}

/// Under the shim (2 cores): every run keeps at most one extra worker inside
/// region bodies at once, and a run whose threads overlapped shows cut
/// teams (mean below 1.5). Threads that never overlap (a loaded machine can
/// run each one's 300 regions in its own time slices) have nothing to cut,
/// so a run without cuts is retried, up to five in all.
fn shared_budget(fixture_name: &str) {
    let mut means = vec![];
    for _ in 0..5 {
        let r = cmd(&fixture(fixture_name), &["4", "300"])
            .shim()
            .cores(2)
            .run();
        r.ok();
        assert!(r.int("max_extras") <= 1, "{}", r.stdout);
        if r.float("mean_team") < 1.5 {
            return;
        }
        means.push(r.float("mean_team"));
    }
    panic!("no run showed cut teams: mean_team {means:?}");
}

#[test]
fn four_threads_share_the_budget_and_a_lone_caller_keeps_it() {
    let base = plain_overlap("threads_omp_gcc");
    assert_eq!(
        base.float("mean_team"),
        2.0,
        "without the shim each thread runs teams of 2"
    );
    // The budget bounds what runs at once: with 4 callers and 2 cores at
    // most one extra worker is ever inside a region body (without the shim
    // there are up to 4). How many regions got one depends on how the
    // threads drift apart, so the mean only has to show cuts.
    shared_budget("threads_omp_gcc");
    let lone = cmd(&fixture("threads_omp_gcc"), &["1", "300"])
        .shim()
        .cores(2)
        .run();
    assert!(lone.ok().float("mean_team") >= 1.9, "{}", lone.stdout);
}

#[test]
fn llvm_libomp_regions_are_sized_by_the_ledger_too() {
    let base = plain_overlap("threads_omp_clang");
    assert_eq!(base.float("mean_team"), 2.0);
    shared_budget("threads_omp_clang");
    let lone = cmd(&fixture("threads_omp_clang"), &["1", "300"])
        .shim()
        .cores(2)
        .run();
    assert!(lone.ok().float("mean_team") >= 1.9, "{}", lone.stdout);
    let dir = tempdir("kmpc");
    let r = cmd(&fixture("regions_clang"), &["500", "4096"])
        .shim()
        .cores(2)
        .report_into(&dir)
        .run();
    r.ok();
    let rep = &reports(&dir)[0];
    let omp = runtimes_of(rep, "libomp");
    assert_eq!(omp[0]["regions"], 500, "{rep}");
    assert_eq!(omp[0]["mean_team"], 2.0);
}

#[test]
fn nested_regions_stay_within_the_budget_and_return_it() {
    let base = cmd(&fixture("nested_gcc"), &["2", "2"]).run();
    assert_eq!(base.ok().int("inner_max"), 2);
    let r = cmd(&fixture("nested_gcc"), &["2", "2"])
        .shim()
        .cores(2)
        .run();
    r.ok();
    assert_eq!(r.int("outer_team"), 2);
    assert_eq!(
        r.int("inner_max"),
        2,
        "an explicit num_threads(2) within the thread limit gets exactly 2, over the budget if need be"
    );
    assert_eq!(r.int("after_team"), 2, "and comes back after");
    let dir = tempdir("nested-over");
    let r = cmd(&fixture("nested_gcc"), &["2", "2"])
        .shim()
        .cores(2)
        .report_into(&dir)
        .run();
    r.ok();
    let g = &runtimes_of(&reports(&dir)[0], "libgomp")[0].clone();
    assert!(
        g["over_budget"].as_u64().unwrap() >= 1,
        "keeping the promise over the budget is counted: {g}"
    );
}

/// Four exec'd processes of one tree (children of a shell under the shim).
fn four_processes(scope: &str) -> Vec<f64> {
    let dir = tempdir(&format!("procs-{scope}"));
    let bin = fixture("regions_gcc");
    let script = format!(
        "for i in 1 2 3 4; do {bin} 3000 40960 > {d}/out-$i.txt & done; wait",
        d = dir.display()
    );
    let r = cmd("sh", &["-c", &script])
        .shim()
        .cores(2)
        .env("PARBUDGET_SCOPE", scope)
        .timeout(120)
        .run();
    r.ok();
    (1..=4)
        .map(|i| {
            let text = std::fs::read_to_string(dir.join(format!("out-{i}.txt"))).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("mean_team="))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn processes_of_one_tree_share_one_ledger() {
    let per_process = four_processes("process");
    assert!(
        per_process.iter().all(|m| *m == 2.0),
        "scope=process: each process alone: {per_process:?}"
    );
    let tree = four_processes("tree");
    let avg = tree.iter().sum::<f64>() / 4.0;
    assert!(
        avg < 1.5,
        "four processes on a 2-core tree budget: {tree:?}"
    );
}

#[test]
fn forked_and_spawned_python_workers_share_one_ledger() {
    for method in ["fork", "spawn"] {
        let r = cmd(
            &python(),
            &[
                &root()
                    .join("shim-tests/py/workers_regions.py")
                    .display()
                    .to_string(),
                &fixture("libregions.so"),
                method,
                "4",
                // Enough regions (a worker runs them for tens of
                // milliseconds) that the workers overlap even when a loaded
                // machine starts them far apart.
                "20000",
            ],
        )
        .shim()
        .cores(2)
        .timeout(120)
        .run();
        r.ok();
        assert!(r.float("mean_of_means") < 1.5, "{method}: {}", r.stdout);
    }
}

#[test]
fn a_holder_killed_by_sigkill_gives_its_share_back() {
    // block_in_region holds a 2-thread team forever. While it lives, a new
    // member of the tree gets a team of 1; after SIGKILL, the whole budget.
    // The two omp_teams runs write JSON reports (nothing else does): the
    // ledger each saw at its exit.
    let blocker = fixture("block_in_region");
    let teams = fixture("omp_teams_gcc");
    let dir = tempdir("reclaim");
    let (during_dir, after_dir) = (dir.join("during"), dir.join("after"));
    std::fs::create_dir_all(&during_dir).unwrap();
    std::fs::create_dir_all(&after_dir).unwrap();
    let script = format!(
        "f=$(mktemp -u); mkfifo $f; {blocker} > $f & b=$!; read ready < $f; rm $f; \
         echo during=$(PARBUDGET_REPORT={d}/r-%p.json {teams} 0 | grep '^team=' | cut -d= -f2); \
         kill -9 $b; wait $b 2>/dev/null; \
         echo after=$(PARBUDGET_REPORT={a}/r-%p.json {teams} 0 | grep '^team=' | cut -d= -f2)",
        d = during_dir.display(),
        a = after_dir.display()
    );
    let r = cmd("sh", &["-c", &script])
        .shim()
        .cores(2)
        .timeout(60)
        .run();
    r.ok();
    assert_eq!(
        r.int("during"),
        1,
        "the blocked holder counts: {}",
        r.stderr
    );
    assert_eq!(r.int("after"), 2, "its share came back: {}", r.stderr);
    let one = |d: &std::path::Path| {
        let mut v = reports(d);
        assert_eq!(v.len(), 1, "one report in {}: {v:?}", d.display());
        v.remove(0)
    };
    let (during, after) = (one(&during_dir), one(&after_dir));
    for (what, rep) in [("during", &during), ("after", &after)] {
        assert_eq!(rep["ledger"]["scope"], "tree", "{what}: {rep}");
        assert_eq!(rep["ledger"]["held_here"], 0, "{what}: {rep}");
    }
    // While the holder lives, its 2 threads are what the tree uses once the
    // first run has given its own back.
    assert_eq!(
        during["ledger"]["used"], 2,
        "the live holder's threads counted: {during}"
    );
    // The holder never ran its exit (SIGKILL): only a reclaim of its slot
    // takes its threads off the shared ledger.
    assert_eq!(
        after["ledger"]["used"], 0,
        "the killed holder's threads reclaimed: {after}"
    );
    let g = runtimes_of(&after, "libgomp");
    assert_eq!(g.len(), 1, "{after}");
    assert_eq!(g[0]["mean_team"].as_f64(), Some(2.0), "{after}");
}

#[test]
fn a_killed_zombie_holder_is_reclaimed_before_it_is_reaped() {
    // The parent (Python, which reaps nothing by itself) does not wait for
    // the killed child: it stays a zombie while the new member asks.
    let blocker = fixture("block_in_region");
    let teams = fixture("omp_teams_gcc");
    let code = format!(
        "import os, signal, subprocess, time\n\
         p = subprocess.Popen(['{blocker}'], stdout=subprocess.PIPE)\n\
         assert p.stdout.readline().strip() == b'ready=1'\n\
         os.kill(p.pid, signal.SIGKILL)\n\
         stat = lambda: open('/proc/%d/stat' % p.pid).read().rsplit(')', 1)[1].split()[0]\n\
         threads = lambda: int([l for l in open('/proc/%d/status' % p.pid) if l.startswith('Threads:')][0].split()[1])\n\
         while stat() != 'Z' or threads() > 1: time.sleep(0.001)\n\
         out = subprocess.run(['{teams}', '0'], capture_output=True, text=True).stdout\n\
         print('zombie=%d' % (stat() == 'Z'))\n\
         print([l for l in out.splitlines() if l.startswith('team=')][0].replace('team=', 'after='))\n\
         p.wait()\n"
    );
    let r = cmd("python3", &["-c", &code])
        .shim()
        .cores(2)
        .timeout(60)
        .run();
    r.ok();
    assert_eq!(r.int("zombie"), 1, "the holder was still a zombie");
    assert_eq!(r.int("after"), 2, "{}", r.stderr);
}

#[test]
fn the_ledger_is_private_validated_and_removed() {
    let name = format!("/parbudget-test-{}", std::process::id());
    let file = format!("/dev/shm{name}");
    // A segment with the wrong size or mode is refused, with a warning, and
    // the program still runs with a private ledger.
    std::fs::write(&file, b"not a ledger").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = teams_in_ledger(&name).run();
    r.ok();
    assert_eq!(r.int("team"), 2);
    assert!(
        r.stderr.contains("ledger_fallback") && r.stderr.contains("mode 0600"),
        "{}",
        r.stderr
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = teams_in_ledger(&name).run();
    assert!(r.ok().stderr.contains("wrong size"), "{}", r.stderr);
    std::fs::remove_file(&file).unwrap();

    // A name the user chose is created 0600 and stays for the next job.
    let r = cmd(
        "sh",
        &[
            "-c",
            &format!(
                "{} 0 | grep team; stat -c %a {file}",
                fixture("omp_teams_gcc")
            ),
        ],
    )
    .shim()
    .cores(2)
    .env("PARBUDGET_LEDGER", &name)
    .run();
    r.ok();
    // Created at the first region (the shell under the shim ran none).
    assert_eq!(r.stdout.lines().last().unwrap(), "600");
    assert!(std::path::Path::new(&file).exists());
    let again = teams_in_ledger(&name).run();
    assert!(
        again.ok().shim_lines().is_empty(),
        "reused silently: {}",
        again.stderr
    );
    std::fs::remove_file(&file).unwrap();

    // A generated name is 0600 (created at the first region) and removed by
    // the last member to leave.
    let code = format!(
        "import ctypes, os\nctypes.CDLL('{}').fix_regions(1, 256)\n\
         name = os.environ['PARBUDGET_LEDGER']\nprint('name=' + name)\n\
         print('mode=%o' % (os.stat('/dev/shm' + name).st_mode & 0o777))",
        fixture("libregions.so")
    );
    let r = cmd("python3", &["-c", &code]).shim().cores(2).run();
    r.ok();
    assert_eq!(r.get("mode"), "600");
    let generated = format!("/dev/shm{}", r.get("name"));
    assert!(r.get("name").starts_with("/parbudget-"));
    assert!(
        !std::path::Path::new(&generated).exists(),
        "removed at exit: {generated}"
    );
}

#[test]
fn libiomp5_from_pypi_is_clamped() {
    let r = cmd(&fixture("omp_teams_iomp"), &["64", "64"])
        .shim()
        .cores(2)
        .run();
    r.ok();
    assert_eq!(r.int("team"), 2);
    assert!(r.int("clause_team") <= 2);
    let base = cmd(&fixture("omp_teams_iomp"), &["64"]).run();
    assert_eq!(base.ok().int("team"), 64);
}

/// Also covers pointers that escape across objects: scikit-learn's
/// `_cython_blas` (linked to libc only) calls `scipy_dgemm_` through a pointer
/// scipy's cython_blas took, which is our hook; it must still reach scipy's
/// OpenBLAS copy.
#[test]
fn scikit_learn_vendored_libgomp_beside_the_system_one() {
    let dir = tempdir("two-gomp");
    let code = format!(
        "import ctypes, numpy as np\nfrom sklearn.cluster import KMeans\n\
         KMeans(n_clusters=3, n_init=1, random_state=0).fit(np.random.default_rng(0).random((3000, 4)))\n\
         lib = ctypes.CDLL('{}')\nprint('team=%d' % lib.fix_team(0))",
        fixture("libregions.so")
    );
    let r = cmd(&python(), &["-c", &code])
        .shim()
        .cores(2)
        .report_into(&dir)
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.int("team"), 2);
    let rep = &reports(&dir)[0];
    let gomps = runtimes_of(rep, "libgomp");
    assert_eq!(gomps.len(), 2, "{rep}");
    for g in &gomps {
        assert!(
            g["regions"].as_u64().unwrap() >= 1,
            "each copy's regions went to that copy: {g}"
        );
    }
    assert!(
        gomps
            .iter()
            .any(|g| g["path"].as_str().unwrap().contains("scikit_learn.libs"))
    );
    assert!(
        !r.stderr.contains(" WARN "),
        "two vendored libgomp copies and two OpenBLAS copies are normal: no warning: {}",
        r.stderr
    );
}
