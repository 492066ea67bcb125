//! Leases: a thread keeps its team counted between its regions, and a member
//! short of threads takes idle leases back (src/ledger/shared.rs, "Leases").

use crate::support::*;

/// The plain run of `lease_idle thread`: its sums are what every run must print.
fn plain_sum(mode: &str) -> String {
    let r = cmd(&fixture("lease_idle"), &[mode, "400", "50"])
        .env("OMP_NUM_THREADS", "2")
        .run();
    r.ok();
    r.get("sum")
}

#[test]
fn a_thread_short_of_threads_takes_an_idle_threads_lease() {
    let plain = plain_sum("thread");
    let dir = tempdir("lease-thread");
    // The main thread runs 400 regions (a team of 2 on a budget of 2, kept
    // as its lease), then waits for a thread that runs 400 of its own: that
    // thread is short by the main thread's lease at its first region, and
    // must take it (a team of 1 in every region otherwise). Then the main
    // thread runs 400 more: its lease is gone, and it counts them anew.
    let r = cmd(&fixture("lease_idle"), &["thread", "400"])
        .shim()
        .cores(2)
        .env("PARBUDGET_LOG", "debug")
        .report_into(&dir)
        .timeout(60)
        .run();
    r.ok();
    assert_eq!(r.int("first_min_team"), 2, "{}", r.stdout);
    assert_eq!(r.int("worker_min_team"), 2, "{}", r.stdout);
    assert_eq!(r.int("after_min_team"), 2, "{}", r.stdout);
    assert_eq!(r.get("sum"), plain, "the same sums as the plain run");
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("DEBUG lease_steal freed=2")),
        "the worker took the main thread's lease of 2:\n{}",
        r.stderr
            .lines()
            .filter(|l| !l.contains("DEBUG grant"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let reps = reports(&dir);
    assert_eq!(reps.len(), 1, "{reps:?}");
    // The worker gave its lease back when it ended, the main thread at exit.
    assert_eq!(reps[0]["ledger"]["used"], 0, "{}", reps[0]);
    assert_eq!(reps[0]["ledger"]["held_here"], 0, "{}", reps[0]);
}

#[test]
fn another_member_takes_an_idle_processs_lease_and_a_killed_holder_leaks_nothing() {
    let plain = plain_sum("idle");
    let dir = tempdir("lease-procs");
    let launcher = root().join("target/release/parbudget");
    let (during, after) = (dir.join("during"), dir.join("after"));
    std::fs::create_dir_all(&during).unwrap();
    std::fs::create_dir_all(&after).unwrap();
    let name = format!("/parbudget-lease-{}", std::process::id());
    // Holder A runs 400 regions and sleeps with its lease of 2 (the ledger
    // shows it); B, a member of the same tree, runs 300 regions meanwhile
    // and must get teams of 2 (A's lease taken). A then runs 400 more and
    // ends. Holder C keeps a lease and is killed by SIGKILL while idle; D
    // runs after it and must get the whole budget, and its report must see
    // nothing counted once it ends.
    let script = format!(
        "set -u; D={d}; \
         wait_idle() {{ n=0; until grep -q '^idle=1' $1; do sleep 0.01; n=$((n+1)); [ $n -gt 2000 ] && exit 9; done; }}; \
         PARBUDGET_REPORT_SIGNAL=USR1 PARBUDGET_REPORT=$D/sig-%p.json {lease} idle 400 1500 > $D/a.out & a=$!; wait_idle $D/a.out; \
         LD_PRELOAD= {launcher} ledger --json $PARBUDGET_LEDGER > $D/ledger_a.json; \
         kill -USR1 $a; n=0; until [ -s $D/sig-$a.json ]; do sleep 0.01; n=$((n+1)); [ $n -gt 2000 ] && exit 8; done; \
         cp $D/sig-$a.json $D/report_a.json; \
         echo during=$(PARBUDGET_REPORT={during}/r-%p.json {regions} 300 4096 | grep '^mean_team=' | cut -d= -f2); \
         wait $a; cat $D/a.out; \
         {lease} idle 400 20000 > $D/c.out & c=$!; wait_idle $D/c.out; \
         kill -9 $c; wait $c 2>/dev/null; \
         echo after=$(PARBUDGET_REPORT={after}/r-%p.json {regions} 300 4096 | grep '^mean_team=' | cut -d= -f2)",
        d = dir.display(),
        lease = fixture("lease_idle"),
        regions = fixture("regions_gcc"),
        launcher = launcher.display(),
        during = during.display(),
        after = after.display(),
    );
    let r = cmd("sh", &["-c", &script])
        .shim()
        .cores(2)
        .env("PARBUDGET_LEDGER", &name)
        .timeout(90)
        .run();
    let _ = std::fs::remove_file(format!("/dev/shm{name}"));
    r.ok();
    let l: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ledger_a.json")).unwrap()).unwrap();
    let members = l[0]["members"].as_array().expect("members").clone();
    assert_eq!(
        members
            .iter()
            .map(|m| m["leased"].as_u64().unwrap())
            .sum::<u64>(),
        2,
        "idle A keeps its team of 2 as a lease: {l}"
    );
    // A's live report (the report signal, while it idles): its lease is
    // held by it, and shown as leased.
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report_a.json")).unwrap()).unwrap();
    assert_eq!(a["trigger"], "signal", "{a}");
    assert_eq!(a["ledger"]["held_here"], 2, "{a}");
    assert_eq!(a["ledger"]["leased_here"], 2, "{a}");
    assert_eq!(
        r.get("during"),
        "2.000",
        "B took A's lease: {}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(
        r.int("after_min_team"),
        2,
        "A's own regions after B: {}",
        r.stdout
    );
    assert_eq!(r.get("sum"), plain, "A's sums as in the plain run");
    assert_eq!(
        r.get("after"),
        "2.000",
        "D got the killed holder's share: {}",
        r.stderr
    );
    let rep = reports(&after);
    assert_eq!(rep.len(), 1, "{rep:?}");
    assert_eq!(
        rep[0]["ledger"]["used"], 0,
        "nothing left counted: {}",
        rep[0]
    );
}
