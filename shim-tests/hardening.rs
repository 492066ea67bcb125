//! Issue "Hardening": a ledger that cannot be reserved, or that is
//! truncated, shrunk, zeroed, overwritten, grown or replaced while members
//! run, never crashes a member; a ledger that does not validate is named in
//! one line and the process goes on with its own. Each case checks what the
//! program computed and what the ledger looks like afterwards.

use crate::support::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The ledger's size and field offsets (src/ledger/layout.rs, checked by
/// its unit test `layout_is_what_the_tests_and_readers_assume`).
const SIZE: usize = 75968;
const VERSION_AT: usize = 8;
const SIZE_FIELD_AT: usize = 12;
const BUDGET_AT: usize = 16;
const LOCK_KIND_AT: usize = 32 + 16;
const USED_AT: usize = 72;
const SLOTS_AT: usize = 80;

unsafe extern "C" {
    fn geteuid() -> u32;
}

fn root_user() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { geteuid() == 0 }
}

fn ledger_name(tag: &str) -> String {
    format!("/parbudget-hard-{tag}-{}", std::process::id())
}

fn shm(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm{name}"))
}

/// `sh -c script` with $SHIM (the shim) and $FIX (the fixtures) set. The
/// shell itself runs without the shim: only commands given
/// `LD_PRELOAD=$SHIM` run under it.
fn script(s: &str) -> Cmd {
    cmd("sh", &["-c", s])
        .env("SHIM", &shim().display().to_string())
        .env("FIX", &fixtures().display().to_string())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
        .trim()
        .to_string()
}

fn lines_of_shim(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("parbudget["))
        .collect()
}

/// What `regions_gcc N LEN` must print: N times the sum of i*1e-6, i < LEN.
fn assert_checksum(out: &str, n: u64, len: u64) {
    let want = n as f64 * (len * (len - 1) / 2) as f64 * 1e-6;
    let got: f64 = value(out, "checksum").parse().unwrap();
    assert!(
        (got - want).abs() <= 1e-6 * want,
        "checksum {got}, expected {want}:\n{out}"
    );
    assert_eq!(value(out, "regions"), n.to_string());
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Waits (in sh) until the ledger `$N` has `$1` members, then a little more.
const WAIT_MEMBERS: &str = r#"
members() { od -An -v -t d4 -j 80 -N 8192 /dev/shm$N 2>/dev/null | tr -s ' ' '\n' | grep -v '^$' | awk 'NR%4==1 && $1!=0' | wc -l; }
i=0; while [ "$(members)" -lt "$1" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
echo joined=$(members)
sleep 0.1
"#;

/// Runs a root-only sh script in a private mount namespace (so its tmpfs
/// mounts vanish with it), with $SHIM and $FIX set.
fn in_mount_namespace(script: &str) -> Run {
    let r = cmd("unshare", &["-m", "sh", "-c", script])
        .env("SHIM", &shim().display().to_string())
        .env("FIX", &fixtures().display().to_string())
        .timeout(60)
        .run();
    r.ok();
    r
}

#[test]
fn a_full_dev_shm_is_refused_at_creation_and_the_program_completes() {
    if !root_user() {
        eprintln!("skipped: needs root for unshare -m and mount");
        return;
    }
    let dir = tempdir("hard-full");
    // A private mount namespace with a 128 KiB tmpfs on /dev/shm (as in a
    // container whose /dev/shm is full).
    let s = format!(
        r#"
set -u
D={d}
mount -t tmpfs -o size=128k tmpfs /dev/shm || exit 90
run() {{ LD_PRELOAD=$SHIM PARBUDGET_CORES=2 PARBUDGET_REPORT=$D/$1.json "$FIX/regions_gcc" 300 4096 > $D/$1.out 2> $D/$1.err; echo $1_rc=$?; }}
# Full to the last page.
dd if=/dev/zero of=/dev/shm/fill bs=4k 2>/dev/null
run full
echo full_left=$(ls /dev/shm | grep -c parbudget)
# One page free: still refused, since every page is reserved before the
# first touch, not when it is first written.
rm /dev/shm/fill; dd if=/dev/zero of=/dev/shm/fill bs=4k count=31 2>/dev/null
run onepage
echo onepage_left=$(ls /dev/shm | grep -c parbudget)
# Room enough: the ledger is created with all its pages allocated.
rm /dev/shm/fill
PARBUDGET_LEDGER=/parbudget-room run room
echo room_bytes=$(( $(stat -c '%b * %B' /dev/shm/parbudget-room) ))
"#,
        d = dir.display()
    );
    let r = in_mount_namespace(&s);
    for case in ["full", "onepage"] {
        assert_eq!(r.get(&format!("{case}_rc")), "0", "{case}: {}", r.stderr);
        let out = read(&dir.join(format!("{case}.out")));
        assert_checksum(&out, 300, 4096);
        let err = read(&dir.join(format!("{case}.err")));
        let lines = lines_of_shim(&err);
        assert_eq!(lines.len(), 1, "{case}: one line:\n{err}");
        assert!(
            lines[0].contains("WARN ledger_fallback")
                && lines[0].contains("no space to reserve its 75968 bytes")
                && lines[0].contains("a ledger for this process only"),
            "{case}: {err}"
        );
        assert_eq!(
            r.get(&format!("{case}_left")),
            "0",
            "{case}: the half-made name is removed"
        );
        let rep = json(&dir.join(format!("{case}.json")));
        assert_eq!(rep["ledger"]["scope"], "process", "{rep}");
        assert_eq!(rep["ledger"]["used"], 0, "{rep}");
    }
    assert_eq!(r.get("room_rc"), "0");
    assert_checksum(&read(&dir.join("room.out")), 300, 4096);
    assert!(
        lines_of_shim(&read(&dir.join("room.err"))).is_empty(),
        "{}",
        read(&dir.join("room.err"))
    );
    assert_eq!(json(&dir.join("room.json"))["ledger"]["scope"], "tree");
    let bytes: usize = r.get("room_bytes").parse().unwrap();
    assert!(
        bytes >= SIZE,
        "all {SIZE} bytes are allocated at creation, not sparse: {bytes}"
    );
}

/// Three members of one ledger (two with four threads entering regions
/// concurrently, so the lock is often held or waited for when the file goes):
/// `truncate -s 0` used to kill every member with SIGBUS (exit 135).
#[test]
fn a_ledger_truncated_under_running_members_crashes_none() {
    let dir = tempdir("hard-trunc");
    let name = ledger_name("trunc");
    let file = shm(&name);
    let _ = std::fs::remove_file(&file);
    let s = format!(
        r#"
D={d}
export N={name} PARBUDGET_LEDGER={name} PARBUDGET_CORES=1
LD_PRELOAD=$SHIM PARBUDGET_REPORT=$D/a.json "$FIX/threads_omp_gcc" 4 5000 > $D/a.out 2> $D/a.err & a=$!
LD_PRELOAD=$SHIM PARBUDGET_REPORT=$D/b.json "$FIX/threads_omp_gcc" 4 5000 > $D/b.out 2> $D/b.err & b=$!
LD_PRELOAD=$SHIM PARBUDGET_REPORT=$D/c.json "$FIX/regions_gcc" 100000 4096 > $D/c.out 2> $D/c.err & c=$!
set -- 3
{wait}
truncate -s 0 /dev/shm$N
echo running_at_truncation=$(kill -0 $a $b $c 2>/dev/null && echo yes)
wait $a; echo a_rc=$?
wait $b; echo b_rc=$?
wait $c; echo c_rc=$?
echo size_after=$(stat -c %s /dev/shm$N)
# A process that starts later refuses the cut file and runs alone.
LD_PRELOAD=$SHIM "$FIX/regions_gcc" 300 4096 > $D/d.out 2> $D/d.err; echo d_rc=$?
"#,
        d = dir.display(),
        wait = WAIT_MEMBERS
    );
    let r = script(&s).timeout(90).run();
    let _ = std::fs::remove_file(&file);
    r.ok();
    assert_eq!(r.get("joined"), "3", "{}", r.stdout);
    assert_eq!(
        r.get("running_at_truncation"),
        "yes",
        "the members ran past the truncation: {}",
        r.stdout
    );
    for m in ["a", "b", "c"] {
        assert_eq!(r.get(&format!("{m}_rc")), "0", "member {m} survived");
        let out = read(&dir.join(format!("{m}.out")));
        if m == "c" {
            assert_checksum(&out, 100000, 4096);
        } else {
            assert_eq!(value(&out, "regions"), "20000");
        }
        assert_eq!(
            value(&out, "mean_team"),
            "1.000",
            "{m}: the 1-core budget held before and after the loss"
        );
        let err = read(&dir.join(format!("{m}.err")));
        let lines = lines_of_shim(&err);
        assert_eq!(lines.len(), 1, "{m}: one line:\n{err}");
        assert!(
            lines[0].contains("WARN ledger_lost")
                && lines[0].contains(&format!("name=\"{name}\""))
                && lines[0].contains("SIGBUS contained")
                && lines[0].contains("a ledger for this process only"),
            "{m}: {err}"
        );
        // Regions entered before the loss were given back to the process's
        // own ledger: nothing is left counted at exit.
        let rep = json(&dir.join(format!("{m}.json")));
        assert_eq!(rep["ledger"]["scope"], "process", "{m}: {rep}");
        assert_eq!(rep["ledger"]["used"], 0, "{m}: {rep}");
        assert_eq!(rep["ledger"]["held_here"], 0, "{m}: {rep}");
    }
    assert_eq!(r.get("size_after"), "0", "a chosen name is left as it is");
    assert_eq!(r.get("d_rc"), "0");
    assert_checksum(&read(&dir.join("d.out")), 300, 4096);
    let err = read(&dir.join("d.err"));
    assert!(
        lines_of_shim(&err).len() == 1
            && err.contains("ledger_fallback")
            && err.contains("wrong size 0"),
        "{err}"
    );
}

/// The other ways a ledger changes under a running member: shrunk to one
/// page, zeroed or overwritten in place, grown, or replaced by a rename.
#[test]
fn a_ledger_shrunk_zeroed_overwritten_grown_or_renamed_over_crashes_none() {
    let dir = tempdir("hard-change");
    // (case, what is done to the file, the reason expected in ledger_lost;
    // None: the member keeps the shared ledger and says nothing).
    let cases: [(&str, &str, Option<&str>); 5] = [
        (
            "shrunk",
            "truncate -s 4096 /dev/shm$N",
            Some("SIGBUS contained"),
        ),
        (
            "zeroed",
            "dd if=/dev/zero of=/dev/shm$N bs=75968 count=1 conv=notrunc 2>/dev/null",
            Some("no longer reads as a ledger"),
        ),
        (
            "overwritten",
            "head -c 75968 /dev/urandom | dd of=/dev/shm$N bs=75968 count=1 conv=notrunc iflag=fullblock 2>/dev/null",
            Some("no longer reads as a ledger"),
        ),
        ("grown", "truncate -s 1M /dev/shm$N", None),
        (
            "renamed",
            "head -c 75968 /dev/urandom > /dev/shm$N.new && chmod 600 /dev/shm$N.new && mv /dev/shm$N.new /dev/shm$N",
            None,
        ),
    ];
    for (case, change, lost) in cases {
        let name = ledger_name(case);
        let _ = std::fs::remove_file(shm(&name));
        let s = format!(
            r#"
D={d}
export N={name} PARBUDGET_LEDGER={name} PARBUDGET_CORES=1
LD_PRELOAD=$SHIM PARBUDGET_REPORT=$D/{case}.json "$FIX/threads_omp_gcc" 4 5000 > $D/{case}.out 2> $D/{case}.err & a=$!
set -- 1
{wait}
{change}
echo running=$(kill -0 $a 2>/dev/null && echo yes)
wait $a; echo rc=$?
# A process that starts later validates what is there now.
LD_PRELOAD=$SHIM "$FIX/omp_teams_gcc" 0 > $D/{case}-later.out 2> $D/{case}-later.err; echo later_rc=$?
"#,
            d = dir.display(),
            wait = WAIT_MEMBERS
        );
        let r = script(&s).timeout(60).run();
        let _ = std::fs::remove_file(shm(&name));
        r.ok();
        assert_eq!(
            r.get("running"),
            "yes",
            "{case}: still running when changed"
        );
        assert_eq!(r.get("rc"), "0", "{case}: the member survived");
        let out = read(&dir.join(format!("{case}.out")));
        assert_eq!(value(&out, "regions"), "20000", "{case}");
        assert_eq!(value(&out, "mean_team"), "1.000", "{case}");
        let err = read(&dir.join(format!("{case}.err")));
        let lines = lines_of_shim(&err);
        let rep = json(&dir.join(format!("{case}.json")));
        assert_eq!(rep["ledger"]["used"], 0, "{case}: {rep}");
        match lost {
            Some(reason) => {
                assert_eq!(lines.len(), 1, "{case}: one line:\n{err}");
                assert!(
                    lines[0].contains("WARN ledger_lost") && lines[0].contains(reason),
                    "{case}: {err}"
                );
                assert_eq!(rep["ledger"]["scope"], "process", "{case}: {rep}");
            }
            None => {
                assert!(
                    lines.is_empty(),
                    "{case}: the member kept its ledger:\n{err}"
                );
                assert_eq!(rep["ledger"]["scope"], "tree", "{case}: {rep}");
            }
        }
        // Later processes refuse what is left, by name, and run alone.
        assert_eq!(r.get("later_rc"), "0", "{case}");
        assert_eq!(
            value(&read(&dir.join(format!("{case}-later.out"))), "team"),
            "1",
            "{case}"
        );
        let later = read(&dir.join(format!("{case}-later.err")));
        let expect = match case {
            "shrunk" => "wrong size 4096",
            "grown" => "wrong size 1048576",
            "zeroed" => "empty header",
            _ => "garbage",
        };
        assert!(
            lines_of_shim(&later).len() == 1
                && later.contains("ledger_fallback")
                && later.contains(expect),
            "{case}: {later}"
        );
    }
}

/// Python under faulthandler (pytest turns it on): faulthandler's handler,
/// installed after ours (ours comes with the ledger, at the first region;
/// the program enables faulthandler after its first region), catches the fault first, prints its traceback and
/// re-raises it; ours then contains it and the program completes. A bus
/// error of the program's own still ends it with SIGBUS, with or without
/// faulthandler.
#[test]
fn sigbus_under_python_faulthandler_and_the_hosts_own_bus_errors() {
    let dir = tempdir("hard-py");
    let name = ledger_name("py");
    let _ = std::fs::remove_file(shm(&name));
    // Regions until told to stop (after the truncation), so the loss always
    // happens while it runs, whatever the machine's load.
    let stop = dir.join("stop");
    let code = format!(
        "import ctypes, faulthandler, os\nlib = ctypes.CDLL('{}')\nteams = lib.fix_regions(1, 256)\nregions = 1\n\
         faulthandler.enable()\n\
         while regions < 20000 or not os.path.exists('{}'):\n    teams += lib.fix_regions(500, 256)\n    regions += 500\n\
         print('teams=%d' % teams)\nprint('regions=%d' % regions)",
        fixture("libregions.so"),
        stop.display()
    );
    let s = format!(
        r#"
D={d}
export N={name} PARBUDGET_LEDGER={name} PARBUDGET_CORES=1
LD_PRELOAD=$SHIM "{py}" -c "$CODE" > $D/py.out 2> $D/py.err & a=$!
set -- 1
{wait}
truncate -s 0 /dev/shm$N
echo running=$(kill -0 $a 2>/dev/null && echo yes)
sleep 0.2; touch {stop}
wait $a; echo rc=$?
"#,
        d = dir.display(),
        stop = stop.display(),
        py = python(),
        wait = WAIT_MEMBERS
    );
    let r = script(&s).env("CODE", &code).timeout(90).run();
    let _ = std::fs::remove_file(shm(&name));
    r.ok();
    assert_eq!(r.get("running"), "yes");
    let err = read(&dir.join("py.err"));
    assert_eq!(r.get("rc"), "0", "{err}");
    let out = read(&dir.join("py.out"));
    assert_eq!(
        value(&out, "teams"),
        value(&out, "regions"),
        "every region ran, each as a team of one"
    );
    assert!(
        err.contains("Fatal Python error: Bus error"),
        "faulthandler saw the fault first and re-raised it: {err}"
    );
    let lines = lines_of_shim(&err);
    assert!(
        lines.len() == 1 && lines[0].contains("ledger_lost") && lines[0].contains("SIGBUS"),
        "{err}"
    );

    // The program's own bus error: a mapping of its own file, truncated.
    let own = shm(&ledger_name("own"));
    let code = format!(
        "import mmap, os\nfd = os.open('{f}', os.O_RDWR | os.O_CREAT, 0o600)\nos.ftruncate(fd, 4096)\nm = mmap.mmap(fd, 4096)\nos.unlink('{f}')\nos.ftruncate(fd, 0)\nprint('read', m[0])",
        f = own.display()
    );
    for faulthandler in [false, true] {
        let mut args = vec![];
        if faulthandler {
            args.extend(["-X", "faulthandler"]);
        }
        args.extend(["-c", &code]);
        let r = cmd(&python(), &args).shim().cores(1).timeout(30).run();
        assert!(!r.timed_out);
        assert_eq!(
            r.code,
            128 + 7,
            "faulthandler={faulthandler}: dies of SIGBUS as without the shim: {}",
            r.stderr
        );
        assert!(!r.stdout.contains("read"), "{}", r.stdout);
        assert!(!r.stderr.contains("ledger_lost"), "{}", r.stderr);
    }
    let _ = std::fs::remove_file(&own);
}

/// A valid ledger image, made by the shim itself (a chosen name stays).
fn valid_image() -> Vec<u8> {
    let name = ledger_name("base");
    let file = shm(&name);
    let _ = std::fs::remove_file(&file);
    let r = teams_in_ledger(&name).run();
    r.ok();
    let img = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(img.len(), SIZE);
    img
}

fn patched(mut img: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    img[at..at + bytes.len()].copy_from_slice(bytes);
    img
}

/// Deterministic noise (xorshift), so a failure can be replayed.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn each_refused_ledger_is_named_in_one_line_and_the_process_runs_alone() {
    let dir = tempdir("hard-refused");
    let good = valid_image();
    let base = ledger_name("target");
    let target = shm(&base);
    enum Make {
        Bytes(Vec<u8>, u32),
        Symlink,
        Fifo,
        Chown(u32),
    }
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "garbage",
            Make::Bytes(noise(SIZE), 0o600),
            "garbage: no parbudget magic",
        ),
        (
            "magic",
            Make::Bytes(patched(good.clone(), 0, b"PBLEDGR9"), 0o600),
            "magic \"PBLEDGR9\" of another ledger format",
        ),
        (
            "version",
            Make::Bytes(
                patched(good.clone(), VERSION_AT, &1u32.to_ne_bytes()),
                0o600,
            ),
            "version 1, expected 4",
        ),
        (
            "size",
            Make::Bytes([good.clone(), vec![0]].concat(), 0o600),
            "wrong size 75969, expected 75968",
        ),
        (
            "size_field",
            Make::Bytes(
                patched(good.clone(), SIZE_FIELD_AT, &4096u32.to_ne_bytes()),
                0o600,
            ),
            "header says size 4096",
        ),
        (
            "budget",
            Make::Bytes(patched(good.clone(), BUDGET_AT, &0u32.to_ne_bytes()), 0o600),
            "budget 0 out of range",
        ),
        (
            "used",
            Make::Bytes(
                patched(good.clone(), USED_AT, &u32::MAX.to_ne_bytes()),
                0o600,
            ),
            "used count 4294967295 out of range",
        ),
        (
            "held",
            Make::Bytes(
                patched(good.clone(), SLOTS_AT + 5 * 16 + 4, &u32::MAX.to_ne_bytes()),
                0o600,
            ),
            "slot 5 held count 4294967295 out of range",
        ),
        (
            "lock",
            Make::Bytes(
                patched(good.clone(), LOCK_KIND_AT, &0i32.to_ne_bytes()),
                0o600,
            ),
            "not a process-shared robust mutex",
        ),
        ("symlink", Make::Symlink, "it is a symbolic link"),
        ("fifo", Make::Fifo, "not a regular file"),
        (
            "owner",
            Make::Chown(65534),
            "owned by uid 65534, not by this user",
        ),
        (
            "group",
            Make::Bytes(good.clone(), 0o640),
            "mode 0640, not mode 0600: group or other permission bits",
        ),
        (
            "other",
            Make::Bytes(good.clone(), 0o604),
            "mode 0604, not mode 0600: group or other permission bits",
        ),
    ];
    let good_copy = shm(&ledger_name("good"));
    for (case, make, reason) in cases {
        let _ = std::fs::remove_file(&target);
        match &make {
            Make::Bytes(b, mode) => {
                std::fs::write(&target, b).unwrap();
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            Make::Symlink => {
                // To a valid ledger: the link itself is the defect.
                std::fs::write(&good_copy, &good).unwrap();
                std::fs::set_permissions(&good_copy, std::fs::Permissions::from_mode(0o600))
                    .unwrap();
                std::os::unix::fs::symlink(&good_copy, &target).unwrap();
            }
            Make::Fifo => {
                let st = std::process::Command::new("mkfifo")
                    .args(["-m", "600"])
                    .arg(&target)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            Make::Chown(uid) => {
                if !root_user() {
                    eprintln!("{case}: skipped, needs root to chown");
                    continue;
                }
                std::fs::write(&target, &good).unwrap();
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
                std::os::unix::fs::chown(&target, Some(*uid), None).unwrap();
            }
        }
        let before = std::fs::symlink_metadata(&target).unwrap();
        let bytes_before = before.is_file().then(|| std::fs::read(&target).unwrap());
        let rep_dir = dir.join(case);
        std::fs::create_dir_all(&rep_dir).unwrap();
        let r = teams_in_ledger(&base)
            .report_into(&rep_dir)
            .timeout(30)
            .run();
        r.ok();
        assert_eq!(
            r.int("team"),
            2,
            "{case}: a ledger of its own, the whole budget"
        );
        assert_eq!(r.int("sum"), 499500, "{case}: {}", r.stdout);
        let lines = r.shim_lines();
        assert_eq!(lines.len(), 1, "{case}: one line:\n{}", r.stderr);
        assert!(
            lines[0].contains("WARN ledger_fallback")
                && lines[0].contains(&format!("name=\"{base}\""))
                && lines[0].contains(reason)
                && lines[0].contains("a ledger for this process only"),
            "{case}: expected {reason:?} in:\n{}",
            r.stderr
        );
        let rep = &reports(&rep_dir)[0];
        assert_eq!(rep["ledger"]["scope"], "process", "{case}: {rep}");
        // The refused file is left exactly as it was.
        let after = std::fs::symlink_metadata(&target).unwrap();
        assert_eq!(
            (after.mode(), after.uid(), after.len(), after.ino()),
            (before.mode(), before.uid(), before.len(), before.ino()),
            "{case}"
        );
        if let Some(b) = bytes_before {
            // (not for the fifo: reading it would wait for a writer)
            assert!(
                std::fs::read(&target).unwrap() == b,
                "{case}: contents untouched"
            );
        }
        let _ = std::fs::remove_file(&target);
        let _ = std::fs::remove_file(&good_copy);
    }
}

/// A report that cannot be written whole (its disk is full) never replaces
/// the last one with a short file: the partial temporary file is removed,
/// one line says so, and the program's own exit code stands.
#[test]
fn a_report_on_a_full_disk_is_never_left_half_written() {
    if !root_user() {
        eprintln!("skipped: needs root for unshare -m and mount");
        return;
    }
    let dir = tempdir("hard-report-full");
    let s = format!(
        r#"
set -u
D={d}
mkdir -p $D/mnt
mount -t tmpfs -o size=8k tmpfs $D/mnt || exit 90
echo previous > $D/mnt/r.json
head -c 7000 /dev/zero > $D/mnt/fill
LD_PRELOAD=$SHIM PARBUDGET_CORES=2 PARBUDGET_REPORT=$D/mnt/r.json "$FIX/regions_gcc" 50 4096 > $D/out 2> $D/err
echo rc=$?
echo report=$(cat $D/mnt/r.json)
echo leftovers=$(ls $D/mnt | grep -c tmp)
"#,
        d = dir.display()
    );
    let r = in_mount_namespace(&s);
    assert_eq!(r.get("rc"), "0");
    assert_checksum(&read(&dir.join("out")), 50, 4096);
    assert_eq!(r.get("report"), "previous", "the last whole report stays");
    assert_eq!(r.get("leftovers"), "0", "no partial file is left");
    let err = read(&dir.join("err"));
    let lines = lines_of_shim(&err);
    assert!(
        lines.len() == 1
            && lines[0].contains("WARN report_failed")
            && lines[0].contains("short write"),
        "{err}"
    );
}
