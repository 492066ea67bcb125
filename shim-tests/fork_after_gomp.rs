//! Issue 4: fork after GNU OpenMP is warned at fork time and the child lives.
//! Each variant of FIELD-NOTES section 1 is a mode of c-fixtures/fork_gomp.c.

use crate::support::*;

fn fork_run(bin: &str, mode: &str) -> Run {
    cmd(&fixture(bin), &[mode])
        .shim()
        .cores(2)
        .env("FORK_WAIT", "8")
        .timeout(40)
        .run()
}

fn fork_warnings(r: &Run) -> Vec<&str> {
    r.shim_lines()
        .into_iter()
        .filter(|l| l.contains("fork_after_gomp"))
        .collect()
}

#[test]
fn the_hazard_is_real_without_the_shim() {
    let r = cmd(&fixture("fork_gomp_gcc"), &["both"])
        .env("FORK_WAIT", "3")
        .timeout(30)
        .run();
    r.ok();
    assert_eq!(r.int("parent_team"), 2);
    assert_eq!(
        r.int("child_hung"),
        1,
        "libgomp's child should hang without the shim: {}",
        r.stdout
    );
}

#[test]
fn child_completes_default_and_clause_regions_with_a_warning() {
    let r = fork_run("fork_gomp_gcc", "both");
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_status"), 0);
    assert_eq!(r.int("child_team"), 1);
    assert_eq!(
        r.int("child_clause_team"),
        1,
        "num_threads(4) must not reopen the hazard"
    );
    assert_eq!(
        r.int("parent_after_team"),
        2,
        "the parent keeps its full team"
    );
    let w = fork_warnings(&r);
    assert_eq!(w.len(), 1, "{}", r.stderr);
    assert!(
        w[0].contains(" WARN fork_after_gomp child=")
            && w[0].contains("libgomp=\"")
            && w[0].contains("spawn"),
        "{}",
        w[0]
    );
    let child_pid = w[0]
        .split("child=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(child_pid.parse::<u32>().unwrap() > 0);
}

#[test]
fn every_team_starting_form_is_made_serial_in_the_child() {
    for (mode, key) in [
        ("dynamic", "child_dynamic_team"),
        ("sections", "child_sections_team"),
        ("clause4", "child_clause_team"),
    ] {
        let r = fork_run("fork_gomp_gcc", mode);
        r.ok();
        assert_eq!(r.int("child_hung"), 0, "{mode}: {}", r.stdout);
        assert_eq!(r.int(key), 1, "{mode}");
        assert_eq!(fork_warnings(&r).len(), 1, "{mode}");
    }
}

#[test]
fn a_one_thread_region_does_not_repair_the_child_but_serial_does() {
    let r = fork_run("fork_gomp_gcc", "one_then_default");
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_one_team"), 1);
    assert_eq!(r.int("child_team"), 1);
}

#[test]
fn threads_created_in_the_child_get_full_teams() {
    let r = fork_run("fork_gomp_gcc", "newthread");
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_newthread_team"), 2);
}

#[test]
fn no_warning_and_full_teams_when_there_is_no_hazard() {
    // The team ran on a helper thread; or only teams of 1 ever ran.
    for mode in ["helper", "teams1"] {
        let r = fork_run("fork_gomp_gcc", mode);
        r.ok();
        assert_eq!(r.int("child_hung"), 0, "{mode}");
        assert_eq!(r.int("child_team"), 2, "{mode}: no hazard, full team");
        assert!(fork_warnings(&r).is_empty(), "{mode}: {}", r.stderr);
    }
}

#[test]
fn grandchildren_and_forks_from_other_threads_are_protected() {
    let r = fork_run("fork_gomp_gcc", "grandchild");
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("grandchild_hung"), 0);
    assert_eq!(r.int("grandchild_team"), 1);
    assert_eq!(fork_warnings(&r).len(), 2, "one per fork: {}", r.stderr);

    let r = fork_run("fork_gomp_gcc", "forkthread");
    r.ok();
    assert_eq!(r.int("parent_team"), 2);
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_team"), 1);
    assert_eq!(fork_warnings(&r).len(), 1);
}

#[test]
fn a_child_that_execs_starts_clean() {
    let r = fork_run("fork_gomp_gcc", "exec");
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("exec_child_team"), 2);
}

#[test]
fn llvm_libomp_forks_silently_and_keeps_its_team() {
    let r = fork_run("fork_gomp_clang", "both");
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_team"), 2);
    assert!(r.int("child_clause_team") >= 2);
    assert!(r.shim_lines().is_empty(), "{}", r.stderr);
}

#[test]
fn abort_policy_exits_the_child_with_a_message() {
    let r = cmd(&fixture("fork_gomp_gcc"), &["default"])
        .shim()
        .cores(2)
        .env("PARBUDGET_FORK", "abort")
        .timeout(30)
        .run();
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_status"), 70);
    assert!(
        r.stderr.contains("ERROR fork_after_gomp_abort"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("policy=abort"));
}

#[test]
fn warn_policy_only_warns() {
    let r = cmd(&fixture("fork_gomp_gcc"), &["default"])
        .shim()
        .cores(2)
        .env("PARBUDGET_FORK", "warn")
        .env("FORK_WAIT", "2")
        .timeout(30)
        .run();
    r.ok();
    assert_eq!(
        r.int("child_hung"),
        1,
        "as asked: the child is not protected"
    );
    assert!(
        r.stderr.contains("policy=warn") && r.stderr.contains("will hang"),
        "{}",
        r.stderr
    );
}
