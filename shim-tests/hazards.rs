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
