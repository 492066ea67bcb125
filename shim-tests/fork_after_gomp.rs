//! Fork after GNU OpenMP: the child lives, at full speed where the pool can be
//! freed first. Each measured variant of the hazard (default region, clause,
//! dynamic loop, sections, a 1-thread region first, new threads, helper
//! threads, grandchildren, exec, fork inside a region) is a mode of
//! c-fixtures/fork_gomp.c.

use crate::support::*;

/// A fork fixture under the shim with a budget of 2; the parent gives up on
/// a child still running after 8 s.
fn fork_cmd(bin: &str, mode: &str) -> Cmd {
    cmd(&fixture(bin), &[mode])
        .shim()
        .cores(2)
        .env("FORK_WAIT", "8")
        .timeout(40)
}

fn fork_run(bin: &str, mode: &str) -> Run {
    fork_cmd(bin, mode).run()
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

fn fork_run_policy(bin: &str, mode: &str, policy: &str) -> Run {
    fork_cmd(bin, mode).env("PARBUDGET_FORK", policy).run()
}

/// The `fork_after_gomp` entries of the parent's JSON report.
fn fork_entries(dir: &std::path::Path, parent_pid_of_first: bool) -> Vec<serde_json::Value> {
    let reps = reports(dir);
    let r = if parent_pid_of_first {
        &reps[0]
    } else {
        reps.last().unwrap()
    };
    r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "fork_after_gomp")
        .cloned()
        .collect()
}

#[test]
fn fresh_child_keeps_full_teams_and_the_right_sums_with_an_info_line() {
    let dir = tempdir("fork-fresh");
    let r = fork_cmd("fork_gomp_gcc", "both").report_into(&dir).run();
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_status"), 0);
    assert_eq!(
        r.int("child_team"),
        2,
        "the child builds a fresh, full pool"
    );
    assert_eq!(
        r.int("child_clause_team"),
        2,
        "num_threads(4) is cut to the thread limit (the budget), not to 1"
    );
    assert_eq!(r.int("child_sum_ok"), 1);
    assert_eq!(
        r.int("parent_after_team"),
        2,
        "the parent rebuilds its pool"
    );
    assert_eq!(r.int("parent_sum_ok"), 1);
    assert!(
        fork_warnings(&r).is_empty(),
        "nothing hangs and nothing slows: no warn line: {}",
        r.stderr
    );
    let e = fork_entries(&dir, true);
    assert_eq!(e.len(), 1, "the report still records the fork");
    assert!(
        e[0]["message"]
            .as_str()
            .unwrap()
            .contains("freed before fork")
    );
}

#[test]
fn a_child_that_ran_nothing_writes_its_report_and_its_vfork_child_none() {
    // The forked child sees the shim's fork words wiped (process::ForkWords),
    // its pid among them; it runs no region, vforks a grandchild that
    // _exits at once (as after a failed exec), then _exits itself. The
    // child's exit must still know itself (its report is written), and the
    // grandchild, sharing its memory, must write nothing.
    let dir = tempdir("fork-vfork");
    let r = fork_cmd("fork_gomp_gcc", "vfork").report_into(&dir).run();
    r.ok();
    assert_eq!(r.int("child_status"), 0, "{}", r.stderr);
    let pids = child_reports_but_none_from_its_vfork_child(&r, &dir);
    assert_eq!(pids.len(), 2, "the parent's and the child's: {pids:?}");
}

/// fork_gomp mode `vfork`: the child's report is there, its vfork child's
/// is not. Returns the pids of every report.
fn child_reports_but_none_from_its_vfork_child(r: &Run, dir: &std::path::Path) -> Vec<i64> {
    assert_eq!(r.int("vfork_status"), 3);
    let pids: Vec<i64> = reports(dir)
        .iter()
        .map(|x| x["pid"].as_i64().unwrap())
        .collect();
    assert!(
        pids.contains(&r.int("child_pid")),
        "the child's report: {pids:?}"
    );
    assert!(
        !pids.contains(&r.int("vfork_pid")),
        "no report from the vfork child: {pids:?}"
    );
    pids
}

#[test]
fn without_a_wipe_on_fork_page_the_static_fork_words_keep_every_fork_right() {
    // c-fixtures/no_wipeonfork refuses madvise(MADV_WIPEONFORK) through a
    // seccomp filter, as Linux before 4.14 would: the shim keeps its fork
    // words (the fork gate, the pid) in its static copy, and the child
    // handler resets them. The same forks must come out the same.
    let wrapped = |mode: &str| {
        cmd(
            &fixture("no_wipeonfork"),
            &[&fixture("fork_gomp_gcc"), mode],
        )
        .shim()
        .cores(2)
        .env("FORK_WAIT", "8")
        .env("PARBUDGET_LOG", "info")
        .timeout(40)
    };
    let r = wrapped("both").run();
    r.ok();
    assert!(
        r.shim_lines()
            .iter()
            .any(|l| l.contains("fork_words place=static")),
        "the fallback is in use: {}",
        r.stderr
    );
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_status"), 0);
    assert_eq!(r.int("child_team"), 2);
    assert_eq!(r.int("child_clause_team"), 2);
    assert_eq!(r.int("child_sum_ok"), 1);
    assert_eq!(r.int("parent_after_team"), 2);
    assert_eq!(r.int("parent_sum_ok"), 1);

    let dir = tempdir("fork-vfork-static");
    let r = wrapped("vfork").report_into(&dir).run();
    r.ok();
    child_reports_but_none_from_its_vfork_child(&r, &dir);

    // The fork gate under a storm: 4 threads fork 200 children while others
    // walk the loader's list (runtime discovery), create threads and spawn.
    let r = cmd(&fixture("no_wipeonfork"), &[&fixture("storm"), "4", "200"])
        .shim()
        .cores(2)
        .timeout(120)
        .run();
    r.ok();
    assert_eq!(r.int("children_ok"), 200, "{}", r.stdout);
    assert_eq!(r.int("spawns_ok"), r.int("spawns"));
    assert_eq!(r.int("regions_bad"), 0);
}

#[test]
fn fresh_every_team_starting_form_runs_full_in_the_child() {
    for (mode, key) in [
        ("dynamic", "child_dynamic_team"),
        ("sections", "child_sections_team"),
        ("clause4", "child_clause_team"),
        ("one_then_default", "child_team"),
    ] {
        let r = fork_run("fork_gomp_gcc", mode);
        r.ok();
        assert_eq!(r.int("child_hung"), 0, "{mode}: {}", r.stdout);
        assert_eq!(r.int("child_status"), 0, "{mode}: {}", r.stderr);
        assert_eq!(r.int(key), 2, "{mode}");
        assert_eq!(r.int("child_sum_ok"), 1, "{mode}");
    }
}

#[test]
fn serial_policy_shrinks_only_bodies_that_adapt() {
    // Dynamic loops and sections hand out work to whichever thread comes:
    // a team of one is correct. A no-clause region on a thread that was
    // never told a team size is too.
    for (mode, key) in [
        ("dynamic", "child_dynamic_team"),
        ("sections", "child_sections_team"),
        ("default", "child_team"),
    ] {
        let r = fork_run_policy("fork_gomp_gcc", mode, "serial");
        r.ok();
        assert_eq!(r.int("child_hung"), 0, "{mode}");
        assert_eq!(r.int("child_status"), 0, "{mode}: {}", r.stderr);
        assert_eq!(r.int(key), 1, "{mode}");
        assert_eq!(r.int("child_sum_ok"), 1, "{mode}");
        assert_eq!(fork_warnings(&r).len(), 1, "{mode}: {}", r.stderr);
    }
    // num_threads(4) counts on 4 threads: the child exits with a message
    // rather than compute with 1.
    let r = fork_run_policy("fork_gomp_gcc", "clause4", "serial");
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_status"), 70, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR fork_after_gomp_abort") && r.stderr.contains("requested=4"),
        "{}",
        r.stderr
    );
}

#[test]
fn fork_inside_a_region_falls_back_with_a_warning_and_no_hang() {
    let r = fork_cmd("fork_gomp_gcc", "inregion").run();
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_status"), 0, "{}", r.stderr);
    assert_eq!(r.int("child_team"), 1);
    assert_eq!(r.int("child_sum_ok"), 1);
    assert_eq!(r.int("parent_after_team"), 2);
    let w = fork_warnings(&r);
    assert_eq!(w.len(), 1, "{}", r.stderr);
    assert!(
        w[0].contains(" WARN ") && w[0].contains("inside a parallel region"),
        "{}",
        w[0]
    );
    // A region that counts on 4 threads in that child: exit 70, not a hang
    // and not a wrong answer.
    let r = fork_cmd("fork_gomp_gcc", "inregion")
        .env("CHILD_CLAUSE", "4")
        .run();
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_status"), 70, "{}", r.stderr);
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
    assert_eq!(r.int("grandchild_team"), 2, "fresh in every generation");

    let r = fork_run_policy("fork_gomp_gcc", "grandchild", "serial");
    r.ok();
    assert_eq!(r.int("grandchild_hung"), 0);
    assert_eq!(r.int("grandchild_team"), 1);
    assert_eq!(fork_warnings(&r).len(), 2, "one per fork: {}", r.stderr);

    let r = fork_run("fork_gomp_gcc", "forkthread");
    r.ok();
    assert_eq!(r.int("parent_team"), 2);
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_team"), 2);
}

#[test]
fn a_child_that_execs_starts_clean() {
    let r = fork_run("fork_gomp_gcc", "exec");
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("exec_child_team"), 2);
}

#[test]
fn intel_libiomp5_forks_silently_and_keeps_its_team() {
    // libiomp5 resets itself in its own atfork handlers: nothing to free.
    let dir = tempdir("fork-iomp");
    let r = fork_cmd("fork_gomp_iomp", "both").report_into(&dir).run();
    r.ok();
    assert_eq!(r.int("child_hung"), 0);
    assert_eq!(r.int("child_team"), 2);
    assert_eq!(r.int("child_clause_team"), 2);
    assert_eq!(r.int("child_sum_ok"), 1);
    assert!(r.shim_lines().is_empty(), "{}", r.stderr);
    for rep in reports(&dir) {
        assert!(
            rep["warnings"].as_array().unwrap().is_empty(),
            "no fork entry for Intel OpenMP: {rep}"
        );
    }
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
