//! The shared ledger's layout in memory and the validation of a byte image of
//! it. `check` is pure (bytes in, verdict out) so it can be run against any
//! bytes at all, which the unit tests do with proptest.

use core::cell::UnsafeCell;
use core::mem::offset_of;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

pub const MAGIC: u64 = u64::from_le_bytes(*b"PBLEDGR1");
/// The first seven bytes of every version of our magic: a file that has them
/// but not MAGIC is a ledger of another format, not garbage.
const MAGIC_FAMILY: &[u8; 7] = b"PBLEDGR";
/// 2: `used` carries FENCE, and each slot has an in-flight count (`busy`).
/// 3: each slot has per-thread cells (`cells`).
/// 4: leases (`lease`, `lease_states`).
pub const VERSION: u32 = 4;
pub const SLOTS: usize = 512;
/// Threads one slot (or the whole ledger) may hold: callers always run and
/// promised teams are kept over the budget, so this is a sanity bound only.
pub const MAX_HELD: u32 = SLOTS as u32 * 4096;
/// Linux's PID_MAX_LIMIT.
pub const MAX_PID: i32 = 1 << 22;
/// The largest budget a ledger may hold (the shim's MAX_CORES; a unit test
/// in `ledger` checks they agree). Kept here so this file depends on nothing
/// of the crate: the launcher reads ledgers with it (`parbudget ledger`).
pub const MAX_BUDGET: u32 = 4096;
/// Budget sources the creator may record (budget::Source codes).
const MAX_SOURCE: u32 = 2;

#[repr(C)]
pub struct Slot {
    pub pid: AtomicI32,
    pub held: AtomicU32,
    pub start_time: AtomicU64,
}

/// A bit of `used`, set while a member rebuilds `used` from the slots (see
/// shared.rs): no count may change under it.
pub const FENCE: u32 = 1 << 31;

/// Cells per member: one per thread of that process that enters regions,
/// for its first CELLS such threads (the others count in the slot's `held`).
pub const CELLS: usize = 16;
/// A cell's in-flight bit (see shared.rs); the other bits are the threads its
/// thread holds.
pub const CELL_BUSY: u32 = 1 << 31;

/// One member's cells, one cache line: each cell is written by one thread
/// of that member only, with plain stores (shared.rs, "Cells").
#[repr(C, align(64))]
pub struct Cells(pub [AtomicU32; CELLS]);

#[repr(C)]
pub struct Header {
    pub magic: u64,
    pub version: u32,
    pub size: u32,
    pub budget: u32,
    pub source: u32,
    pub creator: i32,
    pub _pad: u32,
    pub lock: UnsafeCell<libc::pthread_mutex_t>,
    pub used: AtomicU32,
    pub _pad2: AtomicU32,
    pub slots: [Slot; SLOTS],
    /// Per slot: its process's updates of `used` and `held` in flight right
    /// now (lock-free; shared.rs). Any value passes validation: it is only
    /// ever waited on, with a deadline, for live members.
    pub busy: [AtomicU32; SLOTS],
    /// Per slot: the threads held by each of its threads that has a cell,
    /// with CELL_BUSY while that thread changes `used` (shared.rs).
    pub cells: [Cells; SLOTS],
    /// The tree's leases (shared.rs, "Leases").
    pub lease: Leases,
    /// Per slot: each cell's lease state, written by that cell's thread
    /// only: `LEASE_IDLE | epoch` while the thread keeps its cell's count
    /// between regions, 0 otherwise.
    pub lease_states: [Cells; SLOTS],
}

/// The lease words every member reads at each leased region (one line of
/// their own, written only at a steal or when leasing starts).
#[repr(C, align(64))]
pub struct Leases {
    /// Steals so far (wrapping, 31 bits): an idle lease recorded with
    /// another epoch than the current one may be taken.
    pub epoch: AtomicU32,
    /// When the last steal was (coarse ms, truncated): no member starts a
    /// lease for a while after one.
    pub steal_ms: AtomicU32,
    /// Some thread may keep a lease (a hint: set by threads that start one,
    /// cleared by a steal).
    pub leasing: AtomicU32,
}

/// A lease state's idle bit; the other bits are the epoch it was kept in.
pub const LEASE_IDLE: u32 = 1 << 31;

pub const SIZE: usize = core::mem::size_of::<Header>();
/// Where the mutex lives in the mapping (guard.rs restores a holder's state there).
pub const LOCK_OFFSET: usize = offset_of!(Header, lock);
/// glibc's `__kind` inside `pthread_mutex_t` on 64-bit targets.
pub const KIND_IN_MUTEX: usize = 16;

/// Why a byte image is not a ledger we may use. Each names one defect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not SIZE bytes long.
    Size(usize),
    /// All-zero magic: never finished by its creator, or zeroed.
    Empty,
    /// Our magic's family with another format number.
    OtherFormat(u64),
    /// No magic of ours at all.
    Garbage(u64),
    Version(u32),
    SizeField(u32),
    Budget(u32),
    Source(u32),
    /// The mutex is not of the kind we create (process-shared, robust).
    LockKind(i32),
    Used(u32),
    SlotPid(usize, i32),
    SlotHeld(usize, u32),
}

impl core::fmt::Display for Invalid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Invalid::Size(n) => write!(f, "wrong size {n}, expected {SIZE}"),
            Invalid::Empty => f.write_str(
                "empty header (magic 0): its creator never finished it, or it was zeroed",
            ),
            Invalid::OtherFormat(m) => write!(
                f,
                "magic {} of another ledger format (this one is PBLEDGR1)",
                MagicText(m)
            ),
            Invalid::Garbage(m) => write!(
                f,
                "garbage: no parbudget magic (found {m:#018x}), not a ledger"
            ),
            Invalid::Version(v) => write!(f, "version {v}, expected {VERSION}"),
            Invalid::SizeField(v) => write!(f, "header says size {v}, expected {SIZE}"),
            Invalid::Budget(v) => write!(f, "budget {v} out of range 1..={}", MAX_BUDGET),
            Invalid::Source(v) => write!(f, "budget source {v} out of range 0..={MAX_SOURCE}"),
            Invalid::LockKind(k) => {
                write!(f, "lock of kind {k}, not a process-shared robust mutex")
            }
            Invalid::Used(v) => write!(f, "used count {v} out of range 0..={MAX_HELD}"),
            Invalid::SlotPid(i, p) => write!(f, "slot {i} pid {p} out of range 0..={MAX_PID}"),
            Invalid::SlotHeld(i, h) => {
                write!(f, "slot {i} held count {h} out of range 0..={MAX_HELD}")
            }
        }
    }
}

/// A magic shown as text where printable.
struct MagicText(u64);

impl core::fmt::Display for MagicText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let b = self.0.to_le_bytes();
        if b.iter().all(|c| c.is_ascii_graphic()) {
            f.write_str("\"")?;
            for c in b {
                write!(f, "{}", c as char)?;
            }
            f.write_str("\"")
        } else {
            write!(f, "{:#018x}", self.0)
        }
    }
}

fn u32_at(img: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(img[at..at + 4].try_into().unwrap())
}

fn i32_at(img: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes(img[at..at + 4].try_into().unwrap())
}

/// Validates a ledger image. `lock_kind`: the `__kind` glibc gives a
/// process-shared robust mutex (None where it could not be learned: then the
/// mutex is not checked). Never panics, whatever the bytes.
pub fn check(img: &[u8], lock_kind: Option<i32>) -> Result<(), Invalid> {
    if img.len() != SIZE {
        return Err(Invalid::Size(img.len()));
    }
    let magic = u64::from_le_bytes(img[0..8].try_into().unwrap());
    if magic != MAGIC {
        return Err(if magic == 0 {
            Invalid::Empty
        } else if magic.to_le_bytes()[..7] == MAGIC_FAMILY[..] {
            Invalid::OtherFormat(magic)
        } else {
            Invalid::Garbage(magic)
        });
    }
    let version = u32_at(img, offset_of!(Header, version));
    if version != VERSION {
        return Err(Invalid::Version(version));
    }
    let size = u32_at(img, offset_of!(Header, size));
    if size as usize != SIZE {
        return Err(Invalid::SizeField(size));
    }
    let budget = u32_at(img, offset_of!(Header, budget));
    if budget == 0 || budget > MAX_BUDGET {
        return Err(Invalid::Budget(budget));
    }
    let source = u32_at(img, offset_of!(Header, source));
    if source > MAX_SOURCE {
        return Err(Invalid::Source(source));
    }
    if let Some(k) = lock_kind {
        let kind = i32_at(img, LOCK_OFFSET + KIND_IN_MUTEX);
        if kind != k {
            return Err(Invalid::LockKind(kind));
        }
    }
    // `used` may exceed the budget (callers always run), but not by more
    // than every slot's share of a sane process.
    let used = u32_at(img, offset_of!(Header, used));
    if used & !FENCE > MAX_HELD {
        return Err(Invalid::Used(used));
    }
    let slots = offset_of!(Header, slots);
    let slot_size = core::mem::size_of::<Slot>();
    for i in 0..SLOTS {
        let at = slots + i * slot_size;
        let pid = i32_at(img, at + offset_of!(Slot, pid));
        if !(0..=MAX_PID).contains(&pid) {
            return Err(Invalid::SlotPid(i, pid));
        }
        let held = u32_at(img, at + offset_of!(Slot, held));
        if held > MAX_HELD {
            return Err(Invalid::SlotHeld(i, held));
        }
        for c in 0..CELLS {
            let cell = u32_at(img, cell_at(i, c)) & !CELL_BUSY;
            if cell > MAX_HELD {
                return Err(Invalid::SlotHeld(i, cell));
            }
        }
    }
    Ok(())
}

/// Where cell `c` of slot `i` is in an image.
fn cell_at(i: usize, c: usize) -> usize {
    offset_of!(Header, cells) + i * core::mem::size_of::<Cells>() + c * 4
}

/// The threads member slot `i` holds in an image (a checked one): its
/// slot's count and its cells'. For the launcher's `parbudget ledger`.
#[cfg_attr(not(test), allow(dead_code))]
pub fn member_held(img: &[u8], i: usize) -> u64 {
    let slot = offset_of!(Header, slots) + i * core::mem::size_of::<Slot>();
    let cells: u64 = (0..CELLS)
        .map(|c| u64::from(u32_at(img, cell_at(i, c)) & !CELL_BUSY))
        .sum();
    u64::from(u32_at(img, slot + offset_of!(Slot, held))) + cells
}

/// Of `member_held`, what idle threads keep as leases (shared.rs,
/// "Leases"): counted as in use until their threads' next regions, or until
/// a member short of threads takes them back.
#[cfg_attr(not(test), allow(dead_code))]
pub fn member_leased(img: &[u8], i: usize) -> u64 {
    let states = offset_of!(Header, lease_states) + i * core::mem::size_of::<Cells>();
    (0..CELLS)
        .filter(|&c| u32_at(img, states + c * 4) & LEASE_IDLE != 0)
        .map(|c| u64::from(u32_at(img, cell_at(i, c)) & !CELL_BUSY))
        .sum()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use proptest::prelude::*;

    /// glibc's kind for PTHREAD_MUTEX_ROBUST_NORMAL_NP | the pshared bit.
    pub const KIND: i32 = 144;

    /// A valid image: budget 4, two members.
    pub fn valid_image() -> Vec<u8> {
        let mut img = vec![0u8; SIZE];
        let put = |img: &mut Vec<u8>, at: usize, b: &[u8]| img[at..at + b.len()].copy_from_slice(b);
        put(&mut img, 0, &MAGIC.to_le_bytes());
        put(
            &mut img,
            offset_of!(Header, version),
            &VERSION.to_ne_bytes(),
        );
        put(
            &mut img,
            offset_of!(Header, size),
            &(SIZE as u32).to_ne_bytes(),
        );
        put(&mut img, offset_of!(Header, budget), &4u32.to_ne_bytes());
        put(&mut img, offset_of!(Header, source), &1u32.to_ne_bytes());
        put(&mut img, LOCK_OFFSET + KIND_IN_MUTEX, &KIND.to_ne_bytes());
        put(&mut img, offset_of!(Header, used), &3u32.to_ne_bytes());
        let slots = offset_of!(Header, slots);
        put(&mut img, slots, &1234i32.to_ne_bytes());
        put(&mut img, slots + 4, &2u32.to_ne_bytes());
        put(&mut img, slots + 16, &5678i32.to_ne_bytes());
        put(&mut img, slots + 20, &1u32.to_ne_bytes());
        img
    }

    fn with(mut img: Vec<u8>, at: usize, b: &[u8]) -> Vec<u8> {
        img[at..at + b.len()].copy_from_slice(b);
        img
    }

    #[test]
    fn a_member_holds_its_slot_count_and_its_cells() {
        let img = valid_image();
        assert_eq!(member_held(&img, 0), 2);
        // A cell's in-flight bit is not a thread.
        let img = with(img, cell_at(0, 3), &(5 | CELL_BUSY).to_ne_bytes());
        let img = with(img, cell_at(0, CELLS - 1), &1u32.to_ne_bytes());
        assert_eq!(member_held(&img, 0), 8);
        // Cell 3's 5 threads are an idle thread's lease; cell 15's are not.
        assert_eq!(member_leased(&img, 0), 0);
        let states = offset_of!(Header, lease_states);
        let img = with(img, states + 3 * 4, &(LEASE_IDLE | 7).to_ne_bytes());
        assert_eq!(member_leased(&img, 0), 5);
        assert_eq!(member_held(&img, 0), 8);
        assert_eq!(check(&img, Some(KIND)), Ok(()));
        let bad = with(img, cell_at(7, 0), &(MAX_HELD + 1).to_ne_bytes());
        assert_eq!(
            check(&bad, Some(KIND)),
            Err(Invalid::SlotHeld(7, MAX_HELD + 1))
        );
    }

    #[test]
    fn layout_is_what_the_tests_and_readers_assume() {
        assert_eq!(offset_of!(Header, version), 8);
        assert_eq!(offset_of!(Header, size), 12);
        assert_eq!(offset_of!(Header, budget), 16);
        assert_eq!(offset_of!(Header, source), 20);
        assert_eq!(LOCK_OFFSET, 32);
        assert_eq!(
            offset_of!(Header, used),
            32 + core::mem::size_of::<libc::pthread_mutex_t>()
        );
        const { assert!(SIZE < u32::MAX as usize && SIZE > SLOTS * 16) };
    }

    #[test]
    fn each_defect_is_named() {
        let v = valid_image;
        assert_eq!(check(&v(), Some(KIND)), Ok(()));
        let cases: Vec<(Vec<u8>, Invalid, &str)> = vec![
            (v()[..100].to_vec(), Invalid::Size(100), "wrong size 100"),
            (with(v(), 0, &[0; 8]), Invalid::Empty, "empty header"),
            (
                with(v(), 0, b"PBLEDGR9"),
                Invalid::OtherFormat(u64::from_le_bytes(*b"PBLEDGR9")),
                "magic \"PBLEDGR9\" of another ledger format",
            ),
            (
                with(v(), 0, b"\x7fELF\x02\x01\x01\x00"),
                Invalid::Garbage(u64::from_le_bytes(*b"\x7fELF\x02\x01\x01\x00")),
                "garbage",
            ),
            (
                with(v(), 8, &7u32.to_ne_bytes()),
                Invalid::Version(7),
                "version 7",
            ),
            (
                with(v(), 12, &9u32.to_ne_bytes()),
                Invalid::SizeField(9),
                "header says size 9",
            ),
            (
                with(v(), 16, &0u32.to_ne_bytes()),
                Invalid::Budget(0),
                "budget 0 out of range",
            ),
            (
                with(v(), 16, &5000u32.to_ne_bytes()),
                Invalid::Budget(5000),
                "budget 5000",
            ),
            (
                with(v(), 20, &9u32.to_ne_bytes()),
                Invalid::Source(9),
                "source 9",
            ),
            (
                with(v(), LOCK_OFFSET + KIND_IN_MUTEX, &0i32.to_ne_bytes()),
                Invalid::LockKind(0),
                "not a process-shared robust mutex",
            ),
            (
                with(v(), offset_of!(Header, used), &u32::MAX.to_ne_bytes()),
                Invalid::Used(u32::MAX),
                "used count 4294967295 out of range",
            ),
            (
                with(
                    v(),
                    offset_of!(Header, slots) + 3 * 16,
                    &(-5i32).to_ne_bytes(),
                ),
                Invalid::SlotPid(3, -5),
                "slot 3 pid -5",
            ),
            (
                with(
                    v(),
                    offset_of!(Header, slots) + 7 * 16 + 4,
                    &u32::MAX.to_ne_bytes(),
                ),
                Invalid::SlotHeld(7, u32::MAX),
                "slot 7 held count 4294967295 out of range",
            ),
        ];
        for (img, want, text) in cases {
            let got = check(&img, Some(KIND));
            assert_eq!(got, Err(want));
            let line = want.to_string();
            assert!(line.contains(text), "{line:?} should say {text:?}");
            assert!(!line.contains('\n'));
        }
        // A rebuild in progress (or one whose maker died) is not a defect.
        let fenced = with(v(), offset_of!(Header, used), &(3 | FENCE).to_ne_bytes());
        assert_eq!(check(&fenced, Some(KIND)), Ok(()));
        // Without a known lock kind the mutex is not judged.
        let odd = with(v(), LOCK_OFFSET + KIND_IN_MUTEX, &0i32.to_ne_bytes());
        assert_eq!(check(&odd, None), Ok(()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Any bytes at all: a verdict, never a panic; random full-size
        /// images are refused (a random magic matches with odds 2^-64).
        #[test]
        fn random_bytes_are_judged_and_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..SIZE + 64),
            full in proptest::collection::vec(any::<u8>(), SIZE),
        ) {
            prop_assert!(check(&bytes, Some(KIND)).is_err());
            prop_assert!(check(&full, Some(KIND)).is_err());
            prop_assert!(check(&full, None).is_err());
        }

        /// A valid image with random bytes written anywhere: accepted exactly
        /// when every checked field is still in range.
        #[test]
        fn a_valid_image_with_random_bytes_written_anywhere(
            at in 0..SIZE,
            patch in proptest::collection::vec(any::<u8>(), 1..24),
        ) {
            let mut img = valid_image();
            let end = (at + patch.len()).min(SIZE);
            img[at..end].copy_from_slice(&patch[..end - at]);
            let got = check(&img, Some(KIND));
            let magic = u64::from_le_bytes(img[0..8].try_into().unwrap());
            let in_range = magic == MAGIC
                && u32_at(&img, 8) == VERSION
                && u32_at(&img, 12) as usize == SIZE
                && (1..=MAX_BUDGET).contains(&u32_at(&img, 16))
                && u32_at(&img, 20) <= MAX_SOURCE
                && i32_at(&img, LOCK_OFFSET + KIND_IN_MUTEX) == KIND
                && u32_at(&img, offset_of!(Header, used)) & !FENCE <= MAX_HELD
                && (0..SLOTS).all(|i| {
                    let s = offset_of!(Header, slots) + i * 16;
                    (0..=MAX_PID).contains(&i32_at(&img, s)) && u32_at(&img, s + 4) <= MAX_HELD
                })
                && (0..SLOTS).all(|i| {
                    (0..CELLS).all(|c| u32_at(&img, cell_at(i, c)) & !CELL_BUSY <= MAX_HELD)
                });
            let expect = if in_range { Ok(()) } else { Err(()) };
            prop_assert_eq!(got.map_err(|_| ()), expect);
        }

        /// Every in-range image is accepted.
        #[test]
        fn in_range_images_are_accepted(
            budget in 1..=MAX_BUDGET,
            source in 0..=MAX_SOURCE,
            used in 0..=MAX_HELD,
            members in proptest::collection::vec((0..=MAX_PID, 0..=MAX_HELD, any::<u64>()), 0..40),
        ) {
            let mut img = valid_image();
            img[16..20].copy_from_slice(&budget.to_ne_bytes());
            img[20..24].copy_from_slice(&source.to_ne_bytes());
            let u = offset_of!(Header, used);
            img[u..u + 4].copy_from_slice(&used.to_ne_bytes());
            for (i, (pid, held, start)) in members.into_iter().enumerate() {
                let s = offset_of!(Header, slots) + i * 16;
                img[s..s + 4].copy_from_slice(&pid.to_ne_bytes());
                img[s + 4..s + 8].copy_from_slice(&held.to_ne_bytes());
                img[s + 8..s + 16].copy_from_slice(&start.to_ne_bytes());
            }
            prop_assert_eq!(check(&img, Some(KIND)), Ok(()));
        }
    }
}
