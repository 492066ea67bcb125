//! Issue "Hardening", signals: the report signal (`PARBUDGET_REPORT_SIGNAL`)
//! arriving at any moment (during forks, during ledger updates, during the
//! shim's initialisation) never changes what the program computes, never
//! hangs it, and never leaves a half-written report: a reader polling the
//! report file while signals land only ever reads whole JSON (reports are
//! written to a temporary name and renamed). A program that installs its own
//! handler later keeps its own behaviour.

use crate::support::*;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

const SIGUSR2: i32 = 12;

/// Sends SIGUSR2 to each pid every `every` (faster during the first
/// `fast_for`) until stopped; returns how many were sent. Through pidfds
/// opened now, while the children are unreaped: a signal sent after a child
/// was reaped reaches no other process that took its pid.
fn hammer(
    pids: Vec<u32>,
    every: Duration,
    fast_for: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let targets: Vec<Pidfd> = pids.into_iter().map(Pidfd::open).collect();
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0;
        while !stop.load(Relaxed) {
            for p in &targets {
                p.signal(SIGUSR2);
                sent += 1;
            }
            std::thread::sleep(if start.elapsed() < fast_for {
                Duration::from_micros(50)
            } else {
                every
            });
        }
        sent
    })
}

/// Waits until `pid` catches SIGUSR2 (the shim's constructor installed its
/// handler): before that the signal's default action would end it, with or
/// without the shim.
fn wait_caught(pid: u32) {
    let start = Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (SIGUSR2 - 1)) != 0);
        if caught {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{pid} never caught SIGUSR2:\n{status}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Polls the report files until stopped: every read that finds a file must
/// be whole JSON of that process. Returns (whole reads, torn reads).
fn reader(
    paths: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    torn: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut whole = 0;
        while !stop.load(Relaxed) {
            for p in &paths {
                let Ok(text) = std::fs::read_to_string(p) else {
                    continue;
                };
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(v) if v["pid"].is_i64() => whole += 1,
                    _ => {
                        torn.fetch_add(1, Relaxed);
                        eprintln!("torn report {}: {text:?}", p.display());
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        whole
    })
}

fn no_temporary_files(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert!(left.is_empty(), "temporary report files left: {left:?}");
}

#[test]
fn report_signals_during_forks_and_ledger_updates_change_nothing_and_tear_no_report() {
    // Two members of one named ledger: a fork storm (2 threads fork 150
    // children, each after leading a GNU OpenMP team; other threads run
    // regions and BLAS calls, create threads, vfork+exec and posix_spawn) and
    // 4 threads entering regions back to back (the ledger's lock taken
    // thousands of times a second). Both get SIGUSR2 every 2 ms: the signal
    // lands in forks, in atfork handlers, in ledger updates, in regions.
    let dir = tempdir("sig-storm");
    let name = format!("/parbudget-test-sig-{}", std::process::id());
    let _ = std::fs::remove_file(format!("/dev/shm{name}"));
    let start = |program: &str, args: &[&str]| {
        cmd(&fixture(program), args)
            .shim()
            .cores(2)
            .env("PARBUDGET_LEDGER", &name)
            .env("PARBUDGET_REPORT_SIGNAL", "USR2")
            .report_into(&dir)
            .spawn()
    };
    let storm = start("storm", &["2", "150"]);
    let member = start("threads_omp_gcc", &["4", "3000"]);
    let (sp, mp) = (storm.id(), member.id());
    wait_caught(sp);
    wait_caught(mp);
    let stop = Arc::new(AtomicBool::new(false));
    let torn = Arc::new(AtomicUsize::new(0));
    let h = hammer(
        vec![sp, mp],
        Duration::from_millis(2),
        Duration::ZERO,
        stop.clone(),
    );
    let rd = reader(
        vec![
            dir.join(format!("r-{sp}.json")),
            dir.join(format!("r-{mp}.json")),
        ],
        stop.clone(),
        torn.clone(),
    );
    let (rs, rm) = (
        finish(storm, Duration::from_secs(240)),
        finish(member, Duration::from_secs(240)),
    );
    stop.store(true, Relaxed);
    let sent = h.join().unwrap();
    let whole = rd.join().unwrap();
    let audit = cmd(
        &root()
            .join("target/release/parbudget")
            .display()
            .to_string(),
        &["ledger", "--json", &name],
    )
    .run();
    let _ = std::fs::remove_file(format!("/dev/shm{name}"));
    rs.ok();
    rm.ok();
    assert_eq!(rs.int("children"), 150, "{}", rs.stdout);
    assert_eq!(rs.int("children_ok"), 150, "every child ran a right region");
    assert_eq!(rs.int("spawns_ok"), rs.int("spawns"));
    assert_eq!(rs.int("regions_bad"), 0);
    assert_eq!(rs.int("blas_bad"), 0);
    assert_eq!(rs.int("threads_bad"), 0);
    assert_eq!(rm.int("regions"), 12000, "{}", rm.stdout);
    assert!(sent > 100, "signals sent: {sent}");
    assert!(whole > 0, "the reader saw signal reports while they ran");
    assert_eq!(torn.load(Relaxed), 0, "a report was read half-written");
    // Every report (the two members' and the storm's children's) is whole,
    // and nothing is left counted.
    let reps = reports(&dir);
    assert!(reps.len() > 150, "{}", reps.len());
    no_temporary_files(&dir);
    for r in reps.iter().filter(|r| r["pid"] == sp || r["pid"] == mp) {
        assert_eq!(r["ledger"]["held_here"], 0, "{r}");
        assert_eq!(r["ledger"]["scope"], "tree", "{r}");
    }
    audit.ok();
    let v: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!(v[0]["used"], 0, "the ledger's used is back to 0: {v}");
}

#[test]
fn report_signals_from_before_the_shims_constructor_on_change_nothing() {
    // The signal is ignored (SIG_IGN, kept across exec) until the shim's
    // constructor installs its handler, which chains to that disposition; it
    // is sent from before the exec on, every 50 us for the first 300 ms (the
    // constructor, the lazy initialisation at the first hook, numpy's import
    // with its dlopens and OpenBLAS threads), then every millisecond.
    let dir = tempdir("sig-init");
    let report = dir.join("r-%p.json");
    let code = "import ctypes, sys\nimport numpy as np\n\
        a = np.full((300, 300), 1.0)\n\
        ok = all(bool(((a @ a) == 300.0).all()) for _ in range(20))\n\
        lib = ctypes.CDLL(sys.argv[1]); lib.fix_regions.restype = ctypes.c_long\n\
        teams = lib.fix_regions(2000, 256)\n\
        print('blas_ok=%d' % ok); print('teams_ok=%d' % (2000 <= teams <= 4000))";
    let shell = "trap '' USR2; echo armed; LD_PRELOAD=\"$SHIM\" exec \"$@\"";
    for round in 0..3 {
        let mut child = cmd(
            "sh",
            &[
                "-c",
                shell,
                "sh",
                &python(),
                "-c",
                code,
                &fixture("libregions.so"),
            ],
        )
        .env("SHIM", &shim().display().to_string())
        .cores(2)
        .env("PARBUDGET_REPORT_SIGNAL", "USR2")
        .env("PARBUDGET_REPORT", report.to_str().unwrap())
        .spawn();
        // Wait for the shell to ignore the signal, then hammer.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "armed");
        let stop = Arc::new(AtomicBool::new(false));
        let torn = Arc::new(AtomicUsize::new(0));
        let pid = child.id();
        let h = hammer(
            vec![pid],
            Duration::from_millis(1),
            Duration::from_millis(300),
            stop.clone(),
        );
        let rd = reader(
            vec![dir.join(format!("r-{pid}.json"))],
            stop.clone(),
            torn.clone(),
        );
        // Put the rest of stdout back for `finish`.
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let r = finish(child, Duration::from_secs(120));
        stop.store(true, Relaxed);
        let sent = h.join().unwrap();
        let whole = rd.join().unwrap();
        let stdout = rest.join().unwrap();
        let r = Run { stdout, ..r };
        r.ok();
        assert_eq!(r.get("blas_ok"), "1", "round {round}: {}", r.stderr);
        assert_eq!(r.get("teams_ok"), "1", "round {round}: {}", r.stderr);
        assert!(
            r.shim_lines().is_empty(),
            "round {round}: nothing to say: {}",
            r.stderr
        );
        assert!(sent > 1000, "round {round}: {sent} signals");
        assert!(whole > 0, "round {round}: signal reports were written");
        assert_eq!(torn.load(Relaxed), 0, "round {round}: a torn report");
        let rep = &reports(&dir)[0];
        assert_eq!(rep["pid"], pid, "{rep}");
        assert_eq!(rep["ledger"]["held_here"], 0, "{rep}");
        no_temporary_files(&dir);
        std::fs::remove_file(dir.join(format!("r-{pid}.json"))).unwrap();
    }
}

#[test]
fn a_process_ending_under_report_signals_leaves_its_exit_report_and_no_temporary_file() {
    // Four threads spin while the main thread ends the process (`exit`, or
    // `_exit` as multiprocessing children do) under a storm of report
    // signals, which land on any thread. A signal report still being written
    // on another thread when the process ends would leave its temporary file,
    // and one begun after the exit report would replace it: without the
    // exit's wait for signal reports in flight, 1 round in 5 left a file.
    let dir = tempdir("sig-exit");
    let report = dir.join("r-%p.json");
    let mut total = 0;
    for (round, how) in ["exit", "_exit"].iter().cycle().take(40).enumerate() {
        let child = cmd(&fixture("exit_busy"), &["4", "80", how])
            .shim()
            .cores(2)
            .env("PARBUDGET_REPORT_SIGNAL", "USR2")
            .env("PARBUDGET_REPORT", report.to_str().unwrap())
            .spawn();
        let pid = child.id();
        wait_caught(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let h = hammer(
            vec![pid],
            Duration::from_micros(20),
            Duration::ZERO,
            stop.clone(),
        );
        let r = finish(child, Duration::from_secs(60));
        stop.store(true, Relaxed);
        let sent = h.join().unwrap();
        r.ok();
        assert_eq!(r.get("threads"), "4", "round {round}");
        // A loaded machine may send few in a round; the rounds together many.
        assert!(sent > 0, "round {round} ({how}): no signal sent");
        total += sent;
        no_temporary_files(&dir);
        let rep = &reports(&dir)[0];
        assert_eq!(rep["pid"], pid, "{rep}");
        assert_eq!(
            rep["trigger"], "exit",
            "round {round} ({how}): the last report is the exit's: {rep}"
        );
        std::fs::remove_file(dir.join(format!("r-{pid}.json"))).unwrap();
    }
    assert!(total > 200, "{total} signals in 40 rounds");
}

#[test]
fn a_program_that_installs_its_own_handler_later_keeps_its_behaviour() {
    // Python replaces the shim's SIGUSR2 handler with its own after start:
    // its handler runs (ours no longer does: the README says so), the
    // program computes what it computes, and the exit report is whole. Then
    // it restores the default action and dies of the signal, as it would
    // without the shim.
    let dir = tempdir("sig-own");
    let code = "import ctypes, os, signal, sys, time\nimport numpy as np\n\
        got = []\n\
        signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))\n\
        lib = ctypes.CDLL(sys.argv[1]); lib.fix_regions.restype = ctypes.c_long\n\
        teams = 0\n\
        for i in range(20):\n    os.kill(os.getpid(), signal.SIGUSR2); teams += lib.fix_regions(50, 256)\n\
        time.sleep(0.05)\n\
        a = np.full((200, 200), 1.0)\n\
        print('handled=%d' % (len(got) > 0)); print('blas_ok=%d' % bool(((a @ a) == 200.0).all()))\n\
        print('teams_ok=%d' % (1000 <= teams <= 2000), flush=True)\n\
        if sys.argv[2] == 'die':\n    signal.signal(signal.SIGUSR2, signal.SIG_DFL); os.kill(os.getpid(), signal.SIGUSR2); time.sleep(5)";
    for how in ["live", "die"] {
        let r = cmd(&python(), &["-c", code, &fixture("libregions.so"), how])
            .shim()
            .cores(2)
            .env("PARBUDGET_REPORT_SIGNAL", "USR2")
            .report_into(&dir)
            .timeout(60)
            .run();
        assert!(!r.timed_out, "{how}: {}", r.stderr);
        assert_eq!(r.get("handled"), "1", "{how}: {}", r.stderr);
        assert_eq!(r.get("blas_ok"), "1", "{how}");
        assert_eq!(r.get("teams_ok"), "1", "{how}");
        if how == "live" {
            r.ok();
            let rep = &reports(&dir)[0];
            assert_eq!(rep["ledger"]["held_here"], 0, "{rep}");
            assert!(
                runtimes_of(rep, "libgomp")[0]["regions"].as_u64().unwrap() >= 1000,
                "{rep}"
            );
        } else {
            assert_eq!(r.code, 128 + SIGUSR2, "{}", r.stderr);
        }
        no_temporary_files(&dir);
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
}
