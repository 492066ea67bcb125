//! Issue "Hardening", memory safety: C fixtures and a Python workload under
//! `valgrind --tool=memcheck` with the shim preloaded, and no error that is
//! the shim's.
//!
//! CPython, numpy's OpenBLAS, libgomp and the loader have memcheck reports of
//! their own (uninitialised bytes in CPython's int code, the loader's
//! word-wise `strncmp`, pools still running at exit), so the exit code says
//! nothing: each report is judged by its stack (`--xml=yes`, one file per
//! process with `%p`, forked children included). A report is the shim's when
//! - (any error but a leak) a frame of its stack is in libparbudget.so, other
//!   than the shim's thread trampoline `launch` at the bottom of a thread it
//!   started (every thread created through `pthread_create` runs on it, so it
//!   says nothing about the error); a library function the shim called into
//!   counts as the shim's (it may have passed it a bad team size);
//! - (a definite leak) the allocation was made by the shim's own code (the
//!   first frame past the allocator), in the process the test started. A
//!   forked child leaks what belonged to the threads it does not have.
//!
//! The shim's own blocks come from its arena (src/arena.rs), which memcheck
//! does not see as heap blocks: the leak rule judges what the shim's code
//! takes from the C heap once the arena is used up (heap.rs checks that a
//! normal run takes nothing). The error rule still covers what the shim
//! reads uninitialised and how it touches the program's memory; an overrun
//! of one arena block into the next is an access memcheck cannot tell from
//! a valid one.
//!
//! That the check can fail is shown twice: a canary program passes an
//! uninitialised thread count through `omp_set_num_threads` into the hooks
//! (memcheck then reports conditional jumps inside libparbudget.so, and the
//! test requires it to), and the filter is run on synthetic reports.

use crate::support::*;
use std::path::Path;

#[derive(Debug)]
struct Frame {
    func: String,
    obj: String,
}

#[derive(Debug)]
struct VgError {
    kind: String,
    what: String,
    frames: Vec<Frame>,
}

/// The text of the first `<tag>...</tag>` in `s`.
fn tag<'a>(s: &'a str, t: &str) -> Option<&'a str> {
    let open = format!("<{t}>");
    let close = format!("</{t}>");
    let a = s.find(&open)? + open.len();
    let b = s[a..].find(&close)? + a;
    Some(&s[a..b])
}

/// Every `<t>...</t>` block of `s`.
fn blocks<'a>(s: &'a str, t: &str) -> Vec<&'a str> {
    let open = format!("<{t}>");
    let close = format!("</{t}>");
    let mut out = vec![];
    let mut rest = s;
    while let Some(a) = rest.find(&open) {
        let body = &rest[a + open.len()..];
        let Some(b) = body.find(&close) else { break };
        out.push(&body[..b]);
        rest = &body[b + close.len()..];
    }
    out
}

/// One memcheck XML file: the process's pid and ppid and its errors. Read
/// block by block: a child that exec'd (vfork + exec, posix_spawn) leaves a
/// file that ends early, with no error in it.
fn parse(xml: &str) -> (i64, i64, Vec<VgError>) {
    let num = |t| {
        tag(xml, t)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    };
    let errors = blocks(xml, "error")
        .into_iter()
        .map(|e| VgError {
            kind: tag(e, "kind").unwrap_or("").to_string(),
            what: tag(e, "what")
                .or_else(|| tag(e, "text"))
                .unwrap_or("")
                .to_string(),
            // The first stack: where it happened, or where a leaked block
            // was allocated (later stacks are auxiliary: where freed, ...).
            frames: blocks(tag(e, "stack").unwrap_or(""), "frame")
                .into_iter()
                .map(|f| Frame {
                    func: tag(f, "fn").unwrap_or("?").to_string(),
                    obj: tag(f, "obj").unwrap_or("?").to_string(),
                })
                .collect(),
        })
        .collect();
    (num("pid"), num("ppid"), errors)
}

fn in_shim(f: &Frame) -> bool {
    f.obj.ends_with("/libparbudget.so")
}

/// Is this report the shim's (see the module comment)? `root`: the report
/// is from the process the test started, not from a forked child.
fn blamed(e: &VgError, root: bool) -> bool {
    if e.kind.starts_with("Leak_") {
        if !root {
            return false;
        }
        let allocator = |f: &Frame| {
            f.obj.contains("/vgpreload_")
                || ["malloc", "calloc", "realloc", "memalign", "posix_memalign"]
                    .contains(&f.func.as_str())
        };
        return e.frames.iter().find(|f| !allocator(f)).is_some_and(in_shim);
    }
    // Frames above the shim's thread trampoline, if this thread started on
    // it (launch, then only libc's start_thread and clone below it) and the
    // error is not in the trampoline itself.
    let n = e
        .frames
        .iter()
        .rposition(|f| in_shim(f) && f.func.ends_with("launch"))
        .filter(|&i| i > 0 && e.frames[i + 1..].iter().all(|f| f.obj.contains("/libc.so")))
        .unwrap_or(e.frames.len());
    e.frames[..n].iter().any(in_shim)
}

fn show(e: &VgError) -> String {
    let mut s = format!("{}: {}\n", e.kind, e.what);
    for f in e.frames.iter().take(16) {
        s += &format!("    {}  ({})\n", f.func, f.obj);
    }
    s
}

/// Runs `program args` under memcheck with the shim preloaded; returns its
/// run and the shim's reports (every process of the run), after checking
/// that memcheck wrote at least the root process's report.
fn memcheck(
    dir: &Path,
    name: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Run, Vec<String>) {
    let xml = format!("--xml-file={}/{name}-%p.xml", dir.display());
    let mut argv = vec![
        "--tool=memcheck",
        "--xml=yes",
        xml.as_str(),
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite",
        "--num-callers=40",
        program,
    ];
    argv.extend_from_slice(args);
    // The preload is set on valgrind itself (Debian's /usr/bin/valgrind is
    // a sh script, so the shell and valgrind's launcher load the shim too,
    // harmlessly); memcheck passes it on to the program, after its own.
    let mut c = cmd("valgrind", &argv).shim().cores(2).timeout(240);
    for (k, v) in env {
        c = c.env(k, v);
    }
    let run = c.run();
    assert!(
        !run.timed_out,
        "{name}: timed out under valgrind\n{}",
        run.stderr
    );
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&format!("{name}-")) && f.ends_with(".xml"))
        })
        .collect();
    files.sort();
    let parsed: Vec<_> = files
        .iter()
        .map(|p| (p, parse(&std::fs::read_to_string(p).unwrap())))
        .collect();
    let pids: Vec<i64> = parsed.iter().map(|(_, (pid, _, _))| *pid).collect();
    assert!(
        parsed.iter().any(|(_, (_, ppid, _))| !pids.contains(ppid)),
        "{name}: no memcheck report of the program itself in {}: {}",
        dir.display(),
        run.stderr
    );
    let mut shim_errors = vec![];
    for (p, (_, ppid, errors)) in &parsed {
        let root = !pids.contains(ppid);
        for e in errors.iter().filter(|e| blamed(e, root)) {
            shim_errors.push(format!("{}:\n{}", p.display(), show(e)));
        }
    }
    (run, shim_errors)
}

fn assert_clean(name: &str, shim_errors: &[String]) {
    assert!(
        shim_errors.is_empty(),
        "{name}: {} memcheck report(s) through libparbudget.so:\n{}",
        shim_errors.len(),
        shim_errors.join("\n")
    );
}

/// (name, program, args, key=value lines it must print)
type Case<'a> = (&'a str, String, Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[test]
fn memcheck_finds_nothing_of_the_shim_in_the_c_fixtures() {
    let dir = tempdir("memcheck-c");
    let f = fixture;
    let (sys, vendored) = (f("libbound_sys.so"), f("libbound.so"));
    let gomp = f("vendored/libgomp-deadbeef.so.1");
    let cases: Vec<Case> = vec![
        (
            "teams_gcc",
            f("omp_teams_gcc"),
            vec!["0", "2"],
            vec![("clause_team", "2"), ("sum", "499500")],
        ),
        (
            "teams_clang",
            f("omp_teams_clang"),
            vec!["0", "2"],
            vec![("clause_team", "2"), ("sum", "499500")],
        ),
        (
            "threads_gcc",
            f("threads_omp_gcc"),
            vec!["2", "20"],
            vec![("regions", "40")],
        ),
        (
            "threads_clang",
            f("threads_omp_clang"),
            vec!["2", "20"],
            vec![("regions", "40")],
        ),
        (
            "blas",
            f("blas_threads"),
            vec!["2", "2"],
            vec![("results_ok", "1")],
        ),
        (
            "fork_gomp",
            f("fork_gomp_gcc"),
            vec![],
            vec![("child_hung", "0")],
        ),
        (
            "dlcycle",
            f("dlcycle"),
            vec!["5", &sys, &vendored],
            vec![("cycles", "5"), ("wrong", "0")],
        ),
        (
            "smallstack",
            f("smallstack"),
            vec!["16", &gomp],
            vec![("ok", "1")],
        ),
        (
            "storm",
            f("storm"),
            vec!["2", "6"],
            vec![
                ("children_ok", "6"),
                ("regions_bad", "0"),
                ("blas_bad", "0"),
            ],
        ),
    ];
    let mut all = vec![];
    for (name, program, args, expect) in &cases {
        let (run, errs) = memcheck(&dir, name, program, args, &[]);
        run.ok();
        for (k, v) in expect {
            assert_eq!(run.get(k), *v, "{name} under valgrind: {}", run.stdout);
        }
        all.extend(errs);
    }
    assert_clean("C fixtures", &all);
}

#[test]
fn memcheck_finds_nothing_of_the_shim_in_python_with_numpy_and_openmp() {
    // numpy matmuls from two threads (numpy's OpenBLAS, sized per call by
    // the shim), then GNU OpenMP regions through ctypes; PYTHONMALLOC=malloc
    // so memcheck sees CPython's allocations plainly.
    let dir = tempdir("memcheck-py");
    let code = "import ctypes, sys, threading\nimport numpy as np\n\
        a = np.full((64, 64), 1.0); b = np.full((64, 64), 0.5); ok = []\n\
        def f():\n    for _ in range(4): ok.append(bool(((a @ b) == 32.0).all()))\n\
        ts = [threading.Thread(target=f) for _ in range(2)]\n\
        [t.start() for t in ts]; [t.join() for t in ts]\n\
        lib = ctypes.CDLL(sys.argv[1]); lib.fix_regions.restype = ctypes.c_long\n\
        teams = lib.fix_regions(20, 256)\n\
        print('blas_ok=%d' % (len(ok) == 8 and all(ok))); print('teams_ok=%d' % (20 <= teams <= 40))";
    let (run, errs) = memcheck(
        &dir,
        "python",
        &python(),
        &["-c", code, &fixture("libregions.so")],
        &[("PYTHONMALLOC", "malloc")],
    );
    run.ok();
    assert_eq!(run.get("blas_ok"), "1", "{}", run.stderr);
    assert_eq!(run.get("teams_ok"), "1", "{}", run.stderr);
    assert_clean("python", &errs);
}

/// The canary: a program that hands the hooks an uninitialised thread count.
const CANARY: &str = r#"
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int *n = malloc(sizeof *n); /* never written unless given */
    if (argc > 1) *n = atoi(argv[1]);
    omp_set_num_threads(*n);
    int team = 0;
#pragma omp parallel
    {
#pragma omp single
        team = omp_get_num_threads();
    }
    printf("ran=%d\n", team > 0);
    free(n);
    return 0;
}
"#;

#[test]
fn memcheck_check_can_fail() {
    let dir = tempdir("memcheck-canary");
    let src = dir.join("canary.c");
    std::fs::write(&src, CANARY).unwrap();
    let bin = dir.join("canary");
    let cc = cmd(
        "gcc",
        &[
            "-O0",
            "-g",
            "-fopenmp",
            src.to_str().unwrap(),
            "-o",
            bin.to_str().unwrap(),
        ],
    )
    .run();
    cc.ok();
    // Uninitialised: memcheck sees the shim's hooks branch on it.
    let (run, errs) = memcheck(&dir, "uninit", bin.to_str().unwrap(), &[], &[]);
    run.ok();
    assert!(
        errs.iter()
            .any(|e| e.contains("UninitCondition") && e.contains("omp_set_num_threads_hook")),
        "the canary's uninitialised count must be reported inside the shim's hooks: {errs:?}"
    );
    // Initialised: the same program is clean.
    let (run, errs) = memcheck(&dir, "init", bin.to_str().unwrap(), &["2"], &[]);
    run.ok();
    assert_clean("canary with its count set", &errs);

    // The filter on synthetic reports.
    let frame = |func: &str, obj: &str| format!("<frame><fn>{func}</fn><obj>{obj}</obj></frame>");
    let shim = "/x/target/release/libparbudget.so";
    let gomp = "/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0";
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let vg = "/usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so";
    let report = |kind: &str, frames: &[String]| {
        format!(
            "<valgrindoutput><pid>10</pid><ppid>1</ppid><error><kind>{kind}</kind><what>w</what><stack>{}</stack></error></valgrindoutput>",
            frames.concat()
        )
    };
    let judge = |xml: String, root: bool| {
        let (_, _, e) = parse(&xml);
        assert_eq!(e.len(), 1);
        blamed(&e[0], root)
    };
    // An invalid read in the shim's own code.
    assert!(judge(
        report(
            "InvalidRead",
            &[
                frame("parbudget::ledger::shared::enter", shim),
                frame("main", "/x/prog")
            ]
        ),
        true
    ));
    // In libgomp, called by the shim's region hook: the shim's.
    assert!(judge(
        report(
            "UninitCondition",
            &[
                frame("GOMP_parallel", gomp),
                frame("parbudget::hooks::regions::gomp_parallel", shim)
            ]
        ),
        false
    ));
    // In a libgomp worker that merely started on the shim's trampoline: not.
    assert!(!judge(
        report(
            "InvalidRead",
            &[
                frame("gomp_thread_start", gomp),
                frame("parbudget::hooks::threads::launch", shim),
                frame("start_thread", libc),
                frame("clone", libc)
            ]
        ),
        true
    ));
    // ... but an error in the trampoline itself is.
    assert!(judge(
        report(
            "InvalidRead",
            &[
                frame("parbudget::hooks::threads::launch", shim),
                frame("start_thread", libc),
                frame("clone", libc)
            ]
        ),
        true
    ));
    // CPython's own noise: not.
    assert!(!judge(
        report(
            "UninitValue",
            &[
                frame("Py_INCREF", "/x/libpython3.11.so.1.0"),
                frame("main", "/x/python")
            ]
        ),
        true
    ));
    // Leaks: allocated by the shim, in the root process: the shim's; by
    // libgomp through the shim's hook, or in a forked child: not.
    assert!(judge(
        report(
            "Leak_DefinitelyLost",
            &[
                frame("malloc", vg),
                frame("parbudget::hooks::threads::pthread_create_hook", shim)
            ]
        ),
        true
    ));
    assert!(!judge(
        report(
            "Leak_DefinitelyLost",
            &[
                frame("malloc", vg),
                frame("parbudget::hooks::threads::pthread_create_hook", shim)
            ]
        ),
        false
    ));
    assert!(!judge(
        report(
            "Leak_DefinitelyLost",
            &[
                frame("malloc", vg),
                frame("?", gomp),
                frame("GOMP_parallel", gomp),
                frame("parbudget::hooks::regions::gomp_parallel", shim)
            ]
        ),
        true
    ));
    // A file cut short by an exec: no error, no panic.
    assert!(
        parse("<valgrindoutput><pid>3</pid><ppid>2</ppid><error><kind>Inv")
            .2
            .is_empty()
    );
}
