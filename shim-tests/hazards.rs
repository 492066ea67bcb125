//! Faults and hazards the shim must survive: libraries unloaded and others
//! loaded at the same address, threads created on small stacks, `_exit`
//! from a signal handler that interrupted the loader, non-ASCII paths in
//! the report.

use crate::support::*;

fn vendored_gomp() -> String {
    fixture("vendored/libgomp-deadbeef.so.1")
}

#[test]
fn dlopen_dlclose_cycles_at_one_address_never_reach_a_stale_copy() {
    // Two libraries built from one object (same call-site offsets), one bound
    // to the system libgomp and one to a renamed copy, loaded in turn at the
    // same address. The plain run pins both libgomp copies (without the shim,
    // unloading a libgomp whose pool threads run crashes the process).
    let (a, b) = (fixture("libbound_sys.so"), fixture("libbound.so"));
    let base = cmd(
        &fixture("dlcycle"),
        &["200", &a, &b, "libgomp.so.1", &vendored_gomp()],
    )
    .timeout(60)
    .run();
    base.ok();
    assert_eq!(base.int("wrong"), 0, "{}", base.stdout);
    let dir = tempdir("dlcycle");
    let r = cmd(&fixture("dlcycle"), &["1000", &a, &b])
        .shim()
        .cores(2)
        .report_into(&dir)
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.int("cycles"), 1000);
    assert!(
        r.int("same_address") > 900,
        "the test is only meaningful when the libraries share an address: {}",
        r.stdout
    );
    assert_eq!(
        r.int("wrong"),
        0,
        "a region went to a stale copy: {}",
        r.stdout
    );
    assert_eq!(r.int("min_team"), 2);
    let rep = &reports(&dir)[0];
    let gomps = runtimes_of(rep, "libgomp");
    assert_eq!(gomps.len(), 2, "two copies, registered once each: {rep}");
    assert_eq!(rep["ledger"]["held_here"], 0, "{rep}");
}

#[test]
fn pthread_create_from_a_small_stack_after_a_new_runtime_loaded() {
    // 16 KiB is PTHREAD_STACK_MIN on x86-64: the hook's discovery scan (a new
    // libgomp copy was just loaded) must fit beside the thread's own needs.
    for kib in ["16", "64"] {
        let r = cmd(&fixture("smallstack"), &[kib, &vendored_gomp()])
            .shim()
            .timeout(30)
            .run();
        r.ok();
        assert_eq!(r.int("ok"), 1, "{kib} KiB");
    }
}

#[test]
fn exit_from_a_signal_handler_during_dlopen_completes_with_a_whole_report() {
    let dir = tempdir("sigexit");
    for _ in 0..50 {
        let r = cmd(&fixture("sigexit"), &[&fixture("libbound.so")])
            .shim()
            .report_into(&dir)
            .timeout(20)
            .run();
        assert!(!r.timed_out, "hung in _exit: {}", r.stderr);
        assert_eq!(r.code, 3, "{}", r.stderr);
    }
    // Every report is whole (written to a temporary name, then renamed).
    let reps = reports(&dir);
    assert_eq!(reps.len(), 50);
    assert!(
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .all(|e| e.path().extension().is_some_and(|x| x == "json")),
        "no temporary file left behind"
    );
}

#[test]
fn a_non_ascii_library_path_survives_the_json_report() {
    let dir = tempdir("utf8");
    let lib_dir = dir.join("café-日本");
    std::fs::create_dir_all(lib_dir.join("vendored")).unwrap();
    std::fs::copy(fixture("libbound.so"), lib_dir.join("libbound.so")).unwrap();
    let gomp = lib_dir.join("vendored/libgomp-deadbeef.so.1");
    std::fs::copy(vendored_gomp(), &gomp).unwrap();
    let reports_dir = dir.join("reports");
    std::fs::create_dir_all(&reports_dir).unwrap();
    let r = cmd(
        &fixture("bound_main"),
        &[lib_dir.join("libbound.so").to_str().unwrap(), "0"],
    )
    .shim()
    .cores(2)
    .report_into(&reports_dir)
    .run();
    r.ok();
    assert_eq!(r.int("before_ids_ok"), 1);
    let rep = &reports(&reports_dir)[0];
    let paths: Vec<&str> = runtimes_of(rep, "libgomp")
        .iter()
        .map(|g| g["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&gomp.to_str().unwrap()),
        "the path reads back as it is: {paths:?}"
    );
}

fn launcher() -> String {
    root()
        .join("target/release/parbudget")
        .display()
        .to_string()
}

#[test]
fn a_fork_and_thread_storm_completes_and_gives_the_ledger_back() {
    // 8 threads fork 1,000 children in all (each forking thread leads a
    // GNU OpenMP team first, so every fork pauses a pool), while other threads
    // run regions and BLAS calls, create threads, vfork+exec and posix_spawn.
    let dir = tempdir("fork-storm");
    let r = cmd(&fixture("storm"), &["8", "1000"])
        .shim()
        .cores(2)
        .report_into(&dir)
        .timeout(240)
        .run();
    r.ok();
    assert_eq!(r.int("children"), 1000, "{}", r.stdout);
    assert_eq!(r.int("children_ok"), 1000, "every child ran a right region");
    assert!(r.int("spawns") > 0);
    assert_eq!(r.int("spawns_ok"), r.int("spawns"));
    assert_eq!(r.int("regions_bad"), 0);
    assert_eq!(r.int("blas_bad"), 0);
    assert_eq!(r.int("threads_bad"), 0);
    let reps = reports(&dir);
    let parent = reps
        .iter()
        .find(|x| {
            runtimes_of(x, "libgomp")
                .first()
                .is_some_and(|g| g["regions"].as_u64().unwrap() > 1000)
        })
        .expect("the storm's own report");
    assert_eq!(parent["ledger"]["held_here"], 0, "{parent}");
    assert_eq!(
        parent["ledger"]["used"], 0,
        "the ledger's used returns to 0: {parent}"
    );
}

#[test]
fn chaos_kills_never_leak_budget_and_the_audit_shows_it() {
    // 200 rounds: three members of one named ledger run regions back to back
    // (threads_omp: 2 threads each); after a random moment (inside regions,
    // inside the ledger's lock, around a fork), all three get SIGKILL. A
    // fresh process then gets the whole budget, and the audit shows no live
    // member holding anything.
    let name = format!("/parbudget-test-chaos-{}", std::process::id());
    let file = format!("/dev/shm{name}");
    let _ = std::fs::remove_file(&file);
    let members_bin = fixture("threads_omp_gcc");
    let teams = fixture("omp_teams_gcc");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let kids: Vec<_> = (0..3)
            .map(|_| {
                cmd(&members_bin, &["2", "1000000"])
                    .shim()
                    .cores(2)
                    .env("PARBUDGET_LEDGER", &name)
                    .spawn()
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_micros(rand() % 20_000));
        for mut k in kids {
            send_signal(k.id(), 9);
            let _ = k.wait();
        }
        let t = std::time::Instant::now();
        let r = cmd(&teams, &["0", "2"])
            .shim()
            .cores(2)
            .env("PARBUDGET_LEDGER", &name)
            .timeout(20)
            .run();
        r.ok();
        assert_eq!(r.int("clause_team"), 2, "round {round}: {}", r.stderr);
        assert_eq!(
            r.int("initial_max_threads"),
            2,
            "round {round}: a fresh process gets the whole budget: {}",
            r.stderr
        );
        assert!(
            t.elapsed() < std::time::Duration::from_millis(2000),
            "round {round}: took {:?}",
            t.elapsed()
        );
    }
    let audit = cmd(&launcher(), &["ledger", "--json", &name]).run();
    audit.ok();
    let v: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    let l = &v[0];
    let live_held: u64 = l["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["alive"] == true)
        .map(|m| m["held"].as_u64().unwrap())
        .sum();
    assert_eq!(live_held, 0, "no live member holds anything: {l}");
    let _ = std::fs::remove_file(&file);
}
