//! The shim takes nothing from the program's heap (src/arena.rs): its own
//! allocations come from its arena, so the program's blocks, libgomp's team
//! among them, are laid out as without the shim.
//!
//! A counting preload (c-fixtures/libcountmalloc.c), loaded before the shim,
//! counts the C heap calls made by code of libparbudget.so; what libc
//! allocates on the shim's behalf (setenv, dlopen) is libc's call and is not
//! counted. Before the arena, a 200-region run made 848 such calls (most of
//! them the ledger's scan of /dev/shm at its creation).

use crate::support::*;

fn counting(program: &str, args: &[&str]) -> Cmd {
    let preload = format!(
        "{}/libcountmalloc.so {}",
        fixtures().display(),
        shim().display()
    );
    cmd(program, args).cores(2).env("LD_PRELOAD", &preload)
}

fn heap_calls(r: &Run) -> i64 {
    r.stderr
        .lines()
        .find_map(|l| l.strip_prefix("shim_heap_calls="))
        .unwrap_or_else(|| panic!("no shim_heap_calls line:\n{}", r.stderr))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_counting_preload_sees_a_library_of_that_name_allocate() {
    // The canary is named like the shim and mallocs in its constructor.
    let preload = format!(
        "{0}/libcountmalloc.so {0}/canary/libparbudget-canary.so",
        fixtures().display()
    );
    let r = cmd(&fixture("regions_gcc"), &["10", "4096"])
        .env("LD_PRELOAD", &preload)
        .run();
    r.ok();
    assert!(heap_calls(&r) >= 1, "the canary's malloc was not counted");
}

#[test]
fn the_shim_takes_nothing_from_the_programs_heap() {
    // Init, the ledger's creation (its scan of /dev/shm), libgomp's first
    // worker (the shim's box for a new thread) and 200 regions.
    let plain = cmd(&fixture("regions_gcc"), &["200", "4096"]).run();
    plain.ok();
    let r = counting(&fixture("regions_gcc"), &["200", "4096"]).run();
    r.ok();
    assert_eq!(heap_calls(&r), 0, "{}", r.stderr);
    assert_eq!(r.get("checksum"), plain.get("checksum"));
    // Program threads that each run regions: a box per thread started, and
    // a ledger cell per thread.
    let r = counting(&fixture("threads_omp_gcc"), &["4", "500"]).run();
    r.ok();
    assert_eq!(heap_calls(&r), 0, "{}", r.stderr);
    // CPython with numpy: its OpenBLAS pool, a BLAS call sized by the
    // ledger, and the libraries loaded on import.
    let r = counting(
        &python(),
        &[
            "-c",
            "import numpy; a = numpy.ones((300, 300)); print('sum=%d' % (a @ a).sum())",
        ],
    )
    .run();
    r.ok();
    assert_eq!(r.get("sum"), "27000000");
    assert_eq!(heap_calls(&r), 0, "{}", r.stderr);
}

#[test]
fn init_makes_no_heap_and_the_environment_stays_the_c_librarys() {
    // A program that allocates nothing before main: the shim's exports at
    // init (the ledger's name, the spin settings) must not create the C
    // heap (a heap mapping costs every fork; src/environ.rs). The canary,
    // which mallocs in its constructor, shows the probe sees a heap.
    let canary = format!("{}/canary/libparbudget-canary.so", fixtures().display());
    let r = cmd(&fixture("heap_at_main"), &[])
        .env("LD_PRELOAD", &canary)
        .run();
    r.ok();
    assert_eq!(r.get("heap_at_main"), "1", "the probe must see a heap");
    let r = cmd(&fixture("heap_at_main"), &[]).shim().cores(2).run();
    r.ok();
    assert_eq!(r.get("heap_at_main"), "0", "{}", r.stderr);
    assert!(r.get("ledger").starts_with("/parbudget-"), "{}", r.stdout);
    assert_eq!(r.get("spincount"), "1000");
    // The C library's own functions work on what the shim set.
    assert_eq!(r.get("after_set"), "one");
    assert_eq!(r.get("after_put"), "two");
    assert_eq!(r.get("after_unset"), "(unset)");
    assert_eq!(r.get("after_replace"), "/replaced");
    assert_eq!(r.get("entries_ok"), "1");
}

#[test]
fn an_environment_too_large_for_the_static_copy_still_gets_the_exports() {
    // More variables than src/environ.rs's array holds (4,096 pointers):
    // the shim falls back to the C library's setenv, which allocates.
    let mut c = cmd(&fixture("heap_at_main"), &[]).shim().cores(2);
    for i in 0..4200 {
        c = c.env(&format!("PB_FILLER_{i}"), "x");
    }
    let r = c.run();
    r.ok();
    assert_eq!(r.get("heap_at_main"), "1", "setenv's fallback allocates");
    assert!(r.get("ledger").starts_with("/parbudget-"), "{}", r.stdout);
    assert_eq!(r.get("spincount"), "1000");
    assert_eq!(r.get("after_set"), "one");
    assert_eq!(r.get("after_unset"), "(unset)");
    assert_eq!(r.get("entries_ok"), "1");
}
