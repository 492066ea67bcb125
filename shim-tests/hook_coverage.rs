//! Every hook exercised by a test. Each fixture below calls a whole family of
//! hooked entry points through the loader's binding (PLT/GOT, so the preloaded
//! hook runs) and checks each call's result against a reference it computes
//! itself; each runs without the shim (the baseline: every result right) and
//! under it with a budget of 2 (every result still right, the teams and
//! thread counts the team rule gives, every sized call counted in the report,
//! every grant given back by exit). The last test checks every symbol the
//! shim exports: each hook table row is imported by one of these fixtures (or
//! is an explicit exception that no installed library defines), each libc
//! hook by a fixture another test file runs, and nothing else is exported but
//! the report API.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const GOMP_GCC: &str = "every_gomp_gcc";
const GOMP_LIBOMP: &str = "every_gomp_libomp";
const KMPC_CLANG: &str = "every_kmpc_clang";
const KMPC_IOMP: &str = "every_kmpc_iomp";
const BLAS_DEBIAN: &str = "every_blas_debian";
const BLAS_NUMPY: &str = "every_blas_numpy";
const BLAS_SCIPY: &str = "every_blas_scipy";
const BLAS_NUMPY1: &str = "every_blas_numpy1";
const SETTERS_MKL: &str = "every_setters_mkl";
const SETTERS_BLIS: &str = "every_setters_blis";

/// The fixtures the tests of this file run.
const RUN_HERE: &[&str] = &[
    GOMP_GCC,
    GOMP_LIBOMP,
    KMPC_CLANG,
    KMPC_IOMP,
    BLAS_DEBIAN,
    BLAS_NUMPY,
    BLAS_SCIPY,
    BLAS_NUMPY1,
    SETTERS_MKL,
    SETTERS_BLIS,
];

/// Each fixture run must take well under this.
const TIMEOUT_S: u64 = 10;

/// The GOMP entry points that start a team (each prints NAME_team, NAME_ok).
const GOMP_REGIONS: &[&str] = &[
    "GOMP_parallel",
    "GOMP_parallel_reductions",
    "GOMP_parallel_sections",
    "GOMP_parallel_loop_static",
    "GOMP_parallel_loop_dynamic",
    "GOMP_parallel_loop_guided",
    "GOMP_parallel_loop_nonmonotonic_dynamic",
    "GOMP_parallel_loop_nonmonotonic_guided",
    "GOMP_parallel_loop_runtime",
    "GOMP_parallel_loop_nonmonotonic_runtime",
    "GOMP_parallel_loop_maybe_nonmonotonic_runtime",
    "GOMP_parallel_start",
    "GOMP_parallel_sections_start",
    "GOMP_parallel_loop_static_start",
    "GOMP_parallel_loop_dynamic_start",
    "GOMP_parallel_loop_guided_start",
    "GOMP_parallel_loop_runtime_start",
];

/// omp_get_thread_limit() of libgomp, libomp and libiomp5 with nothing set.
const INT_MAX: i64 = i32::MAX as i64;

fn fixture_cmd(name: &str) -> Cmd {
    cmd(&fixture(name), &[]).timeout(TIMEOUT_S)
}

/// Runs a fixture under the shim with a budget of 2 and returns its output
/// and its one report.
fn under_shim(name: &str, c: Cmd) -> (Run, serde_json::Value) {
    let dir = tempdir(&format!("cov-{name}"));
    let r = c.shim().cores(2).report_into(&dir).run();
    r.ok();
    let mut reps = reports(&dir);
    assert_eq!(reps.len(), 1, "{name}: one process, one report");
    (r, reps.remove(0))
}

/// Every `*_ok=` line the fixture printed is 1, and each of `names` printed one.
fn all_ok(r: &Run, names: &[&str], what: &str) {
    let kv = r.kv();
    let bad: Vec<_> = kv
        .iter()
        .filter(|(k, v)| k.ends_with("_ok") && *v != "1")
        .map(|(k, _)| k.clone())
        .collect();
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !kv.contains_key(&format!("{n}_ok")))
        .collect();
    assert!(
        bad.is_empty() && missing.is_empty(),
        "{what}: wrong results {bad:?}, no result for {missing:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

/// Every grant given back by exit: nothing held by this process, nothing used
/// in the tree (the fixture is its only member).
fn ledger_clean(rep: &serde_json::Value, what: &str) {
    let l = &rep["ledger"];
    assert_eq!(l["held_here"], 0, "{what}: a grant leaked: {rep}");
    assert_eq!(l["used"], 0, "{what}: threads still counted at exit: {rep}");
}

/// The one runtime copy of kind `imp` that sized calls, with its stats.
fn sized_copy<'a>(rep: &'a serde_json::Value, imp: &str, what: &str) -> &'a serde_json::Value {
    let copies = runtimes_of(rep, imp);
    assert_eq!(copies.len(), 1, "{what}: one {imp} copy expected: {rep}");
    copies[0]
}

fn assert_sized(rep: &serde_json::Value, imp: &str, calls: i64, what: &str) {
    let c = sized_copy(rep, imp, what);
    assert_eq!(
        c["regions"].as_i64(),
        Some(calls),
        "{what}: every sized call counted once, no other: {c}"
    );
    assert_eq!(
        c["mean_team"].as_f64(),
        Some(2.0),
        "{what}: a lone caller keeps the whole budget: {c}"
    );
    assert_eq!(c["requests_cut"], 0, "{what}: {c}");
    assert_eq!(c["over_budget"], 0, "{what}: {c}");
}

// ---------------------------------------------------------------------------
// GNU OpenMP entry points (gcc-compiled calls), on libgomp and on libomp.
// ---------------------------------------------------------------------------

fn check_gomp(fx: &str, imp: &str, teams4: bool) {
    let mut regions: Vec<&str> = GOMP_REGIONS.to_vec();
    let mut teams = vec!["GOMP_teams_reg", "GOMP_teams"];
    if teams4 {
        teams.push("GOMP_teams4");
    }
    let all: Vec<&str> = regions.iter().chain(teams.iter()).copied().collect();

    let base = fixture_cmd(fx).run();
    base.ok();
    all_ok(&base, &all, &format!("{fx} without the shim"));
    for n in &regions {
        assert_eq!(base.int(&format!("{n}_team")), 2, "{n}: num_threads(2)");
    }
    assert_eq!(base.int("GOMP_parallel_end_calls"), 6);
    assert_eq!(base.int("GOMP_teams_reg_limit"), 64, "{}", base.stdout);
    assert_eq!(base.int("omp_get_thread_limit"), INT_MAX);
    assert_eq!(base.int("omp_set_num_threads_then_max"), 8);

    let (r, rep) = under_shim(fx, fixture_cmd(fx));
    all_ok(&r, &all, &format!("{fx} under the shim"));
    // Run alone, the dynamic/guided loops and sections (which may run
    // smaller) get the whole budget too: every region its two threads.
    regions.retain(|n| r.int(&format!("{n}_team")) != 2);
    assert!(
        regions.is_empty(),
        "{fx}: teams other than 2: {regions:?}\n{}",
        r.stdout
    );
    for t in &teams {
        assert!(
            (1..=3).contains(&r.int(&format!("{t}_team"))),
            "{t}: {}",
            r.stdout
        );
    }
    // thread_limit(64) reaches the runtime as the budget.
    assert_eq!(r.int("GOMP_teams_reg_limit"), 2, "{}", r.stdout);
    if imp == "libgomp" {
        // libgomp's GOMP_teams and GOMP_teams4 set this thread's limit ICV
        // (libomp's GOMP_teams keeps it for a later target region).
        assert_eq!(r.int("GOMP_teams_limit"), 2, "{}", r.stdout);
        if teams4 {
            assert_eq!(r.int("GOMP_teams4_limit"), 2, "{}", r.stdout);
        }
    }
    assert_eq!(r.int("omp_get_max_threads"), 2);
    assert_eq!(
        r.int("omp_get_thread_limit"),
        2,
        "the budget is the thread limit"
    );
    assert_eq!(
        r.int("omp_set_num_threads_then_max"),
        2,
        "omp_set_num_threads(8) clamped"
    );
    assert_eq!(r.int("GOMP_parallel_end_calls"), 6);
    let made = r.int("regions_made");
    assert_eq!(made, GOMP_REGIONS.len() as i64);
    assert_sized(&rep, imp, made, fx);
    ledger_clean(&rep, fx);
}

#[test]
fn every_gomp_entry_point_on_libgomp() {
    check_gomp(GOMP_GCC, "libgomp", true);
}

#[test]
fn every_gomp_entry_point_on_llvm_libomp() {
    // The same gcc-compiled object linked to LLVM libomp's GOMP layer (which
    // has no GOMP_teams4, and forks host teams, at most one per core).
    check_gomp(GOMP_LIBOMP, "libomp", false);
}

// ---------------------------------------------------------------------------
// LLVM/Intel regions: __kmpc_fork_call with and without __kmpc_push_num_threads.
// ---------------------------------------------------------------------------

const KMPC_REGIONS: &[&str] = &[
    "noclause", "clause2", "clause8", "manyargs", "loop", "afterset",
];

fn check_kmpc(fx: &str, imp: &str) {
    let base = fixture_cmd(fx).run();
    base.ok();
    all_ok(&base, KMPC_REGIONS, &format!("{fx} without the shim"));
    for (n, team) in [
        ("clause2", 2),
        ("clause8", 8),
        ("manyargs", 2),
        ("loop", 2),
        ("afterset", 8),
    ] {
        assert_eq!(base.int(&format!("{n}_team")), team, "{n}: {}", base.stdout);
    }
    assert_eq!(base.int("omp_get_thread_limit"), INT_MAX);
    assert_eq!(base.int("omp_set_num_threads_then_max"), 8);

    let (r, rep) = under_shim(fx, fixture_cmd(fx));
    all_ok(&r, KMPC_REGIONS, &format!("{fx} under the shim"));
    // noclause: a lone caller never promised anything gets what fits (2);
    // clause8: cut to the thread limit; afterset: omp_set_num_threads(8) was
    // clamped to 2 and omp_get_max_threads() promised 2.
    for n in KMPC_REGIONS {
        assert_eq!(r.int(&format!("{n}_team")), 2, "{n}: {}", r.stdout);
    }
    assert_eq!(r.int("omp_get_max_threads"), 2);
    assert_eq!(r.int("omp_get_thread_limit"), 2);
    assert_eq!(r.int("omp_set_num_threads_then_max"), 2);
    assert_eq!(r.int("push_calls"), 4);
    let forks = r.int("fork_calls");
    assert_eq!(forks, KMPC_REGIONS.len() as i64);
    assert_sized(&rep, imp, forks, fx);
    assert!(
        sized_copy(&rep, imp, fx)["clamped"].as_i64().unwrap_or(0) >= 2,
        "num_threads(8) and omp_set_num_threads(8) clamped: {rep}"
    );
    ledger_clean(&rep, fx);
}

#[test]
fn kmpc_fork_call_with_and_without_push_num_threads_on_libomp() {
    check_kmpc(KMPC_CLANG, "libomp");
}

#[test]
fn kmpc_fork_call_with_and_without_push_num_threads_on_libiomp5() {
    check_kmpc(KMPC_IOMP, "libiomp");
}

// ---------------------------------------------------------------------------
// BLAS: every sized routine of each OpenBLAS copy, and its setters.
// ---------------------------------------------------------------------------

fn blas_names(cblas: &str, suffix: &str, fortran: Option<&str>) -> Vec<String> {
    let mut v = Vec::new();
    for t in ["s", "d", "c", "z"] {
        for r in ["gemm", "syrk", "gemv"] {
            v.push(format!("{cblas}{t}{r}{suffix}"));
        }
        if let Some(f) = fortran {
            v.push(format!("{f}{t}gemm_"));
        }
    }
    v
}

fn check_blas(fx: &str, names: &[String], setters: &[&str]) {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let base = fixture_cmd(fx).run();
    base.ok();
    all_ok(&base, &names, &format!("{fx} without the shim"));
    assert_eq!(base.int("blas_calls"), names.len() as i64);
    for s in setters {
        assert_eq!(base.int(&format!("{s}_then")), 8, "{s}: {}", base.stdout);
    }

    let (r, rep) = under_shim(fx, fixture_cmd(fx));
    all_ok(&r, &names, &format!("{fx} under the shim"));
    assert_eq!(r.int("blas_all_ok"), 1);
    for s in setters {
        assert_eq!(
            r.int(&format!("{s}_then")),
            2,
            "{s}(8) clamped to the budget: {}",
            r.stdout
        );
    }
    let calls = r.int("blas_calls");
    assert_eq!(calls, names.len() as i64);
    assert_sized(&rep, "openblas", calls, fx);
    ledger_clean(&rep, fx);
}

#[test]
fn every_blas_routine_of_debian_openblas() {
    check_blas(
        BLAS_DEBIAN,
        &blas_names("cblas_", "", Some("")),
        &["openblas_set_num_threads", "goto_set_num_threads"],
    );
}

#[test]
fn every_blas_routine_of_numpys_openblas64() {
    check_blas(
        BLAS_NUMPY,
        &blas_names("scipy_cblas_", "64_", None),
        &[
            "scipy_openblas_set_num_threads64_",
            "scipy_goto_set_num_threads64_",
            "openblas_set_num_threads_local",
        ],
    );
}

#[test]
fn every_blas_routine_of_numpy1s_openblas64_() {
    // numpy 1.26's bundled OpenBLAS (ILP64, SYMBOLSUFFIX=64_, no scipy_
    // prefix): the cblas_*64_ names and the 64_ setters of Julia-style builds.
    // Its Fortran gemm is dgemm_64_, which the shim does not size per call.
    check_blas(
        BLAS_NUMPY1,
        &blas_names("cblas_", "64_", None),
        &["openblas_set_num_threads64_", "goto_set_num_threads64_"],
    );
}

#[test]
fn every_blas_routine_of_scipys_openblas() {
    check_blas(
        BLAS_SCIPY,
        &blas_names("scipy_cblas_", "", Some("scipy_")),
        &[
            "scipy_openblas_set_num_threads",
            "scipy_goto_set_num_threads",
            "openblas_set_num_threads_local",
        ],
    );
}

// ---------------------------------------------------------------------------
// MKL and BLIS setters.
// ---------------------------------------------------------------------------

/// Each setter asked for 64: the runtime holds 64 without the shim, 2 under it.
fn check_setters(fx: &str, setters: &[&str], env: &[(&str, &str)]) {
    let with_env = |mut c: Cmd| {
        for (k, v) in env {
            c = c.env(k, v);
        }
        c
    };
    let base = with_env(fixture_cmd(fx)).run();
    base.ok();
    for s in setters {
        assert_eq!(base.int(&format!("{s}_then")), 64, "{s}: {}", base.stdout);
    }

    let dir = tempdir(&format!("cov-{fx}"));
    let r = with_env(fixture_cmd(fx))
        .shim()
        .cores(2)
        .report_into(&dir)
        .run();
    let kv = r.kv();
    let wrong: Vec<String> = setters
        .iter()
        .filter(|s| kv.get(&format!("{s}_then")).map(String::as_str) != Some("2"))
        .map(|s| format!("{s} -> {:?}", kv.get(&format!("{s}_then"))))
        .collect();
    assert!(
        wrong.is_empty() && r.code == 0 && !r.timed_out,
        "{fx}: each setter(64) must leave the runtime at 2 and the program run on; \
         wrong or missing (None: the process died before): {wrong:?}, exit code {}\nstdout:\n{}\nstderr:\n{}",
        r.code,
        r.stdout,
        r.stderr
    );
    assert_eq!(r.int("setters_done"), 1);
    let reps = reports(&dir);
    assert_eq!(reps.len(), 1);
    ledger_clean(&reps[0], fx);
}

#[test]
fn mkl_setters_clamp_to_the_budget() {
    // libmkl_rt's lowercase mkl_set_num_threads and mkl_set_num_threads_local
    // are its Fortran entries (aliases of MKL_SET_NUM_THREADS): they take the
    // count by reference, and the fixture calls them so.
    check_setters(
        SETTERS_MKL,
        &[
            "MKL_Set_Num_Threads",
            "MKL_Set_Num_Threads_Local",
            "mkl_set_num_threads",
            "mkl_set_num_threads_local",
        ],
        &[("MKL_DYNAMIC", "FALSE")],
    );
}

#[test]
fn blis_setter_clamps_to_the_budget() {
    check_setters(SETTERS_BLIS, &["bli_thread_set_num_threads"], &[]);
}

// ---------------------------------------------------------------------------
// Coverage: every exported hook is called by a fixture above.
// ---------------------------------------------------------------------------

/// Which fixture calls each hooked symbol.
fn coverage() -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut m: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    let mut add = |sym: &str, fx: &[&'static str]| {
        m.entry(sym.to_string()).or_default().extend(fx);
    };
    let openmp = [GOMP_GCC, GOMP_LIBOMP, KMPC_CLANG, KMPC_IOMP];
    for s in [
        "omp_set_num_threads",
        "omp_get_max_threads",
        "omp_get_thread_limit",
    ] {
        add(s, &openmp);
    }
    for s in GOMP_REGIONS
        .iter()
        .chain(&["GOMP_parallel_end", "GOMP_teams_reg", "GOMP_teams"])
    {
        add(s, &[GOMP_GCC, GOMP_LIBOMP]);
    }
    add("GOMP_teams4", &[GOMP_GCC]); // libomp does not define it
    add("__kmpc_push_num_threads", &[KMPC_CLANG, KMPC_IOMP]);
    add("__kmpc_fork_call", &[KMPC_CLANG, KMPC_IOMP]);
    for n in blas_names("cblas_", "", Some("")) {
        add(&n, &[BLAS_DEBIAN]);
    }
    for n in blas_names("scipy_cblas_", "64_", None) {
        add(&n, &[BLAS_NUMPY]);
    }
    for n in blas_names("scipy_cblas_", "", Some("scipy_")) {
        add(&n, &[BLAS_SCIPY]);
    }
    add("openblas_set_num_threads", &[BLAS_DEBIAN]);
    add("goto_set_num_threads", &[BLAS_DEBIAN]);
    add("scipy_openblas_set_num_threads64_", &[BLAS_NUMPY]);
    add("scipy_goto_set_num_threads64_", &[BLAS_NUMPY]);
    add("scipy_openblas_set_num_threads", &[BLAS_SCIPY]);
    add("scipy_goto_set_num_threads", &[BLAS_SCIPY]);
    add("openblas_set_num_threads_local", &[BLAS_NUMPY, BLAS_SCIPY]);
    for n in blas_names("cblas_", "64_", None) {
        add(&n, &[BLAS_NUMPY1]);
    }
    add("openblas_set_num_threads64_", &[BLAS_NUMPY1]);
    add("goto_set_num_threads64_", &[BLAS_NUMPY1]);
    for s in [
        "MKL_Set_Num_Threads",
        "mkl_set_num_threads",
        "MKL_Set_Num_Threads_Local",
        "mkl_set_num_threads_local",
    ] {
        add(s, &[SETTERS_MKL]);
    }
    add("bli_thread_set_num_threads", &[SETTERS_BLIS]);
    m
}

/// Hooked symbols that no library we could install defines, so no fixture
/// can call them (a test must not fake a runtime). The test fails if an
/// installed library defines one. Looked for (nm -D --defined-only) in
/// Debian 12's OpenBLAS 0.3.21 (libopenblas0-pthread, and the ILP64
/// libopenblas64-0-pthread, which keeps the plain names), numpy 2.4's
/// libscipy_openblas64_, scipy 1.17's libscipy_openblas, PyPI's
/// scipy-openblas32/64 0.3.34 and numpy 1.26's libopenblas64_: none defines
/// them. Each is a src/ question (delete or rename the hook), not a test one.
fn not_defined_anywhere() -> BTreeSet<String> {
    // None any more. Dropped hooks, for the record: `openblas_set_num_threads_64`
    // and `scipy_openblas_set_num_threads_64` (threadpoolctl's `_64` affix
    // guess; no library defines them: the real ILP64 setters are the `64_`
    // forms, hooked, and the Fortran `_64_` forms, count by reference, not
    // hooked) and `flexiblas_set_num_threads` (FlexiBLAS is neither in Debian
    // nor on PyPI, so no test could call it against the real library).
    BTreeSet::new()
}

/// The shim's exports that are not rows of the hook table: the libc hooks
/// (they reach the next libc definition, not a runtime copy), each with a
/// fixture that imports it and the test file that runs that fixture.
const LIBC_HOOKS: &[(&str, &str, &str)] = &[
    ("pthread_create", "thread_storm", "reports.rs"),
    ("fork", "fork_gomp_gcc", "fork_after_gomp.rs"),
    ("_exit", "sigexit", "hazards.rs"),
    ("dlclose", "dlcycle", "hazards.rs"),
];

/// Exports that are no hook: the live report for `parbudget.status()`.
const API: &[&str] = &["parbudget_report_json"];

fn nm(path: &Path, flag: &str) -> BTreeSet<String> {
    let out = Command::new("nm")
        .args(["-D", flag])
        .arg(path)
        .output()
        .expect("nm (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|s| s.split('@').next().unwrap_or(s).to_string())
        .collect()
}

/// The rows of the hook table (src/hooks/table.rs) before its "not exported"
/// section, and the rows of that section.
fn table_rows() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(root().join("src/hooks/table.rs")).unwrap();
    let start = text.find("table! {").expect("the table! invocation");
    let body = &text[start + "table! {".len()..];
    let body = &body[..body.find('}').expect("end of the table")];
    let (mut exported, mut internal) = (BTreeSet::new(), BTreeSet::new());
    let mut in_internal = false;
    for line in body.lines().map(str::trim) {
        if line.starts_with("//") {
            in_internal |= line.contains("not exported");
            continue;
        }
        let name = line.trim_end_matches(',');
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            if in_internal {
                &mut internal
            } else {
                &mut exported
            }
            .insert(name.to_string());
        }
    }
    (exported, internal)
}

/// Every shared library the fixtures load, and every copy the venv ships.
fn installed_libraries() -> BTreeSet<String> {
    let mut libs = BTreeSet::new();
    for fx in RUN_HERE {
        let out = Command::new("ldd").arg(fixture(fx)).output().expect("ldd");
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((_, rest)) = l.split_once("=> ")
                && let Some(p) = rest.split_whitespace().next()
                && p.starts_with('/')
            {
                libs.insert(p.to_string());
            }
        }
    }
    let venv = root().join("target/venv/lib");
    let mut dirs = vec![venv.clone()];
    for e in std::fs::read_dir(&venv).into_iter().flatten().flatten() {
        let site = e.path().join("site-packages");
        for d in std::fs::read_dir(&site).into_iter().flatten().flatten() {
            if d.file_name().to_string_lossy().ends_with(".libs") {
                dirs.push(d.path());
            }
        }
    }
    for d in dirs {
        for f in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let n = f.file_name().to_string_lossy().to_string();
            if n.contains(".so") && f.path().is_file() {
                libs.insert(f.path().display().to_string());
            }
        }
    }
    libs
}

#[test]
fn every_exported_hook_is_called_by_a_fixture() {
    let fixtures = fixtures(); // built (make), so the binaries can be read
    let exports = nm(&shim(), "--defined-only");
    let (rows, internal) = table_rows();
    let not_exported: Vec<_> = rows.difference(&exports).collect();
    assert!(
        not_exported.is_empty(),
        "hook table rows the shim does not export: {not_exported:?}"
    );
    let hooked: BTreeSet<String> = rows
        .union(&internal)
        .filter(|r| exports.contains(*r))
        .cloned()
        .collect();
    for anchor in [
        "GOMP_parallel",
        "__kmpc_fork_call",
        "cblas_dgemm",
        "omp_set_num_threads",
    ] {
        assert!(hooked.contains(anchor), "table parsed wrong: {hooked:?}");
    }

    let cov = coverage();
    let exceptions = not_defined_anywhere();
    let mut problems = Vec::new();

    let untested: Vec<_> = hooked
        .iter()
        .filter(|s| !cov.contains_key(*s) && !exceptions.contains(*s))
        .collect();
    if !untested.is_empty() {
        problems.push(format!("exported hooks no fixture calls: {untested:?}"));
    }
    let stale: Vec<_> = cov
        .keys()
        .chain(exceptions.iter())
        .filter(|s| !hooked.contains(*s))
        .collect();
    if !stale.is_empty() {
        problems.push(format!("listed here but not an exported hook: {stale:?}"));
    }

    // Each mapped fixture really imports the symbol (so the loader binds its
    // call to the preloaded hook), and is run by a test of this file.
    let mut imports: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (sym, fxs) in &cov {
        for fx in fxs {
            if !RUN_HERE.contains(fx) {
                problems.push(format!("{sym}: fixture {fx} is not run here"));
                continue;
            }
            let imp = imports
                .entry(fx)
                .or_insert_with(|| nm(&fixtures.join(fx), "--undefined-only"));
            if !imp.contains(sym) {
                problems.push(format!("{sym}: {fx} does not import it"));
            }
        }
    }

    // Every other export is a libc hook called by a fixture that a test runs,
    // or the report API.
    for e in exports.difference(&hooked) {
        let Some((_, fx, file)) = LIBC_HOOKS.iter().find(|(s, ..)| s == e) else {
            if !API.contains(&e.as_str()) {
                problems.push(format!("{e}: exported, but no hook row, libc hook or API"));
            }
            continue;
        };
        if !nm(&fixtures.join(fx), "--undefined-only").contains(e) {
            problems.push(format!("{e}: {fx} does not import it"));
        }
        let text = std::fs::read_to_string(root().join("shim-tests").join(file)).unwrap();
        if !text.contains(&format!("\"{fx}\"")) {
            problems.push(format!("{e}: shim-tests/{file} does not run {fx}"));
        }
    }
    for (s, ..) in LIBC_HOOKS {
        if !exports.contains(*s) {
            problems.push(format!("{s}: listed as a libc hook but not exported"));
        }
    }

    // The exceptions are exceptions only while nothing installed defines them.
    let mut defined_now = Vec::new();
    for lib in installed_libraries() {
        let defs = nm(Path::new(&lib), "--defined-only");
        for e in exceptions.intersection(&defs) {
            defined_now.push(format!("{e} (in {lib})"));
        }
    }
    if !defined_now.is_empty() {
        problems.push(format!(
            "listed as defined nowhere, but an installed library defines them: add a fixture: {defined_now:?}"
        ));
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "{} exports: {} hook rows ({} called by the fixtures here, {} defined by no installed library: {:?}), {} libc hooks called by fixtures of other tests, {} API",
        exports.len(),
        hooked.len(),
        cov.len(),
        exceptions.len(),
        exceptions,
        LIBC_HOOKS.len(),
        API.len()
    );
}
