//! Which runtime copy a caller object is bound to, read from its own GOT.
//!
//! Why: Python loads extensions with `RTLD_NOW`, so at import each object's
//! calls into a runtime (`omp_get_thread_num`, `GOMP_loop_*_next`, ...) are
//! bound to the copy visible then, usually its own vendored one. A later
//! `RTLD_GLOBAL` load of another copy (`import torch`, or ctypes with
//! `RTLD_GLOBAL`) changes what the global scope finds, not what the object
//! is bound to. A region forwarded to the global copy while its body asks its
//! own copy for its thread number gives every worker "thread 0 of 1".
//!
//! So the answer comes from the caller's resolved GOT entries for the symbols
//! we do not interpose: each one points into the copy the loader chose. An
//! entry still pointing into the object itself is an unresolved lazy PLT slot
//! and says nothing. The symbols we interpose point into our own object, which
//! is never a registered copy, so they are ignored without a name list.
//!
//! Pure parsing of the dynamic section is split out (`scan_relocations`) so it
//! can be unit-tested on this test binary's own GOT.

use super::copy::MAX_COPIES;
use core::ffi::{c_int, c_void};

/// The loaded object containing an address: its load bias, the range of its
/// PT_LOAD segments and the address of its dynamic section.
#[derive(Clone, Copy, Default, Debug)]
pub struct Object {
    pub bias: usize,
    pub lo: usize,
    pub hi: usize,
    pub dynamic: usize,
}

impl Object {
    pub fn contains(&self, addr: usize) -> bool {
        self.lo <= addr && addr < self.hi
    }
}

/// Finds the loaded object whose segments contain `addr`. Takes only the
/// loader's list lock (through `dl_iterate_phdr`), never `dl_load_lock`.
pub fn object_at(addr: usize) -> Option<Object> {
    struct Find {
        addr: usize,
        found: Option<Object>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: glibc passes a valid info; `data` is our Find.
        let (info, f) = unsafe { (&*info, &mut *(data as *mut Find)) };
        let (mut lo, mut hi, mut dynamic) = (usize::MAX, 0usize, 0usize);
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: dlpi_phdr has dlpi_phnum entries.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
            if ph.p_type == libc::PT_LOAD {
                lo = lo.min(start);
                hi = hi.max(start + ph.p_memsz as usize);
            } else if ph.p_type == libc::PT_DYNAMIC {
                dynamic = start;
            }
        }
        if lo <= f.addr && f.addr < hi {
            f.found = Some(Object {
                bias: info.dlpi_addr as usize,
                lo,
                hi,
                dynamic,
            });
            return 1;
        }
        0
    }
    let mut f = Find { addr, found: None };
    // SAFETY: the callback only reads the info it is given and writes `f`.
    unsafe { super::loader::walk(each, (&mut f as *mut Find).cast()) };
    f.found
}

#[cfg(target_arch = "x86_64")]
const BIND_TYPES: [u32; 2] = [6, 7]; // R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT
#[cfg(target_arch = "aarch64")]
const BIND_TYPES: [u32; 2] = [1025, 1026]; // R_AARCH64_GLOB_DAT, R_AARCH64_JUMP_SLOT

// The dynamic-section tags `Dynamic::read` keeps.
const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_HASH: i64 = 4;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_JMPREL: i64 = 23;
const DT_GNU_HASH: i64 = 0x6fff_fef5;

#[repr(C)]
struct Rela {
    offset: u64,
    info: u64,
    addend: i64,
}

/// The entries of an object's dynamic section the shim reads, as addresses.
#[derive(Default)]
struct Dynamic {
    rela: usize,
    relasz: usize,
    jmprel: usize,
    pltrelsz: usize,
    strtab: usize,
    symtab: usize,
    gnu_hash: usize,
    hash: usize,
}

impl Dynamic {
    /// Reads `obj`'s dynamic section (None if it has none).
    ///
    /// SAFETY: `obj` must stay loaded during the call.
    unsafe fn read(obj: &Object) -> Option<Dynamic> {
        if obj.dynamic == 0 {
            return None;
        }
        // glibc relocates the pointer entries of a writable dynamic section
        // in place (it adds the load bias); a read-only one keeps file
        // offsets. Accept both: a value inside the object is an address.
        let addr = |v: i64| -> usize {
            let v = v as usize;
            if obj.contains(v) {
                v
            } else {
                obj.bias.wrapping_add(v)
            }
        };
        let mut out = Dynamic::default();
        let mut d = obj.dynamic as *const [i64; 2];
        for _ in 0..4096 {
            // SAFETY: the dynamic section is an array of (tag, value) pairs
            // ended by DT_NULL, in the loaded image.
            let [tag, val] = unsafe { *d };
            match tag {
                DT_NULL => break,
                DT_RELA => out.rela = addr(val),
                DT_RELASZ => out.relasz = val as usize,
                DT_JMPREL => out.jmprel = addr(val),
                DT_PLTRELSZ => out.pltrelsz = val as usize,
                DT_STRTAB => out.strtab = addr(val),
                DT_SYMTAB => out.symtab = addr(val),
                DT_GNU_HASH => out.gnu_hash = addr(val),
                DT_HASH => out.hash = addr(val),
                _ => {}
            }
            // SAFETY: not past DT_NULL yet.
            d = unsafe { d.add(1) };
        }
        Some(out)
    }
}

/// Calls `each(value)` for every resolved binding slot (GLOB_DAT, JUMP_SLOT)
/// of `obj` whose value points outside the object (a lazy slot not yet bound
/// points into the object's own PLT and is skipped).
///
/// SAFETY: `obj` must describe an object that stays loaded during the call
/// (the caller of a hook is executing inside it).
pub unsafe fn scan_relocations(obj: &Object, mut each: impl FnMut(usize)) {
    // SAFETY: as this function's contract.
    let Some(d) = (unsafe { Dynamic::read(obj) }) else {
        return;
    };
    let (rela, relasz, jmprel, pltrelsz) = (d.rela, d.relasz, d.jmprel, d.pltrelsz);
    for (table, size) in [(rela, relasz), (jmprel, pltrelsz)] {
        if table == 0 || !obj.contains(table) || !obj.contains(table + size.saturating_sub(1)) {
            continue;
        }
        let n = size / core::mem::size_of::<Rela>();
        for i in 0..n {
            // SAFETY: within the relocation table checked above.
            let r = unsafe { &*(table as *const Rela).add(i) };
            if !BIND_TYPES.contains(&((r.info & 0xffff_ffff) as u32)) {
                continue;
            }
            let slot = obj.bias.wrapping_add(r.offset as usize);
            if !obj.contains(slot) || !slot.is_multiple_of(core::mem::align_of::<usize>()) {
                continue;
            }
            // SAFETY: an aligned GOT slot inside the loaded object.
            let value = unsafe { core::ptr::read_volatile(slot as *const usize) };
            if value != 0 && !obj.contains(value) {
                each(value);
            }
        }
    }
}

#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// `name`'s definition in `obj`'s own dynamic symbol table (0 if none),
/// read from the loaded image through its GNU or SysV hash table. Unlike
/// `dlsym` it takes no loader lock and works on an object whose `dlopen` has
/// not returned yet (a constructor calling into a runtime loaded with it,
/// as MKL's threading layer does with libiomp5).
///
/// SAFETY: `obj` must stay loaded during the call.
pub unsafe fn lookup_in(obj: &Object, name: &[u8]) -> usize {
    // SAFETY: as this function's contract.
    let Some(d) = (unsafe { Dynamic::read(obj) }) else {
        return 0;
    };
    let (strtab, symtab, gnu, sysv) = (d.strtab, d.symtab, d.gnu_hash, d.hash);
    if strtab == 0 || symtab == 0 || !obj.contains(strtab) || !obj.contains(symtab) {
        return 0;
    }
    let matches = |i: usize| -> usize {
        // SAFETY: i indexes the symbol table (bounded by the hash table).
        let s = unsafe { &*(symtab as *const Sym).add(i) };
        if s.shndx == 0 || s.value == 0 || !obj.contains(strtab + s.name as usize) {
            return 0;
        }
        // SAFETY: a NUL-terminated name inside the string table.
        let n = unsafe {
            core::ffi::CStr::from_ptr((strtab + s.name as usize) as *const core::ffi::c_char)
        };
        if n.to_bytes() == name {
            obj.bias.wrapping_add(s.value as usize)
        } else {
            0
        }
    };
    if gnu != 0 && obj.contains(gnu) {
        // SAFETY: the GNU hash header and arrays, in the loaded image.
        unsafe {
            let h = gnu as *const u32;
            let (nbuckets, symoffset, bloom_size) =
                (*h as usize, *h.add(1) as usize, *h.add(2) as usize);
            if nbuckets == 0 {
                return 0;
            }
            let buckets = h.add(4 + bloom_size * (core::mem::size_of::<usize>() / 4));
            let chains = buckets.add(nbuckets);
            let hash = name.iter().fold(5381u32, |h, c| {
                h.wrapping_mul(33).wrapping_add(u32::from(*c))
            });
            let first = *buckets.add(hash as usize % nbuckets) as usize;
            if first < symoffset {
                return 0;
            }
            // A chain ends at the entry whose low bit is set (bounded anyway).
            for i in first..first + (1 << 20) {
                let h2 = *chains.add(i - symoffset);
                if (h2 | 1) == (hash | 1) {
                    let p = matches(i);
                    if p != 0 {
                        return p;
                    }
                }
                if h2 & 1 != 0 {
                    break;
                }
            }
        }
        return 0;
    }
    if sysv != 0 && obj.contains(sysv) {
        // SAFETY: the SysV hash table: nbucket, nchain, buckets, chains.
        unsafe {
            let h = sysv as *const u32;
            let nchain = *h.add(1) as usize;
            for i in 1..nchain.min(1 << 20) {
                let p = matches(i);
                if p != 0 {
                    return p;
                }
            }
        }
    }
    0
}

/// The definition of `name` in an object the caller's resolved bindings point
/// into, found without the loader (see `lookup_in`): for callers whose runtime
/// is still being loaded, so neither the registry nor `dlopen(RTLD_NOLOAD)`
/// knows it yet. The object with the most bindings that defines it wins.
pub fn bound_definition(obj: &Object, name: &[u8], ours: usize) -> usize {
    const N: usize = 16;
    let mut seen: [(Object, u32); N] = [(Object::default(), 0); N];
    let mut n = 0;
    // SAFETY: `obj` is the object of a hook's caller, loaded while it runs.
    unsafe {
        scan_relocations(obj, |v| {
            if let Some(k) = seen[..n].iter().position(|(o, _)| o.contains(v)) {
                seen[k].1 += 1;
            } else if n < N
                && let Some(o) = object_at(v)
                && o.bias != ours
            {
                seen[n] = (o, 1);
                n += 1;
            }
        })
    };
    seen[..n].sort_by_key(|s| core::cmp::Reverse(s.1));
    for (o, _) in &seen[..n] {
        // SAFETY: an object the caller is bound into stays loaded with it.
        let p = unsafe { lookup_in(o, name) };
        if p != 0 {
            return p;
        }
    }
    0
}

/// How many of the caller object's resolved bindings point into each
/// registered runtime copy (indexed like the registry).
pub fn evidence(obj: &Object) -> [u32; MAX_COPIES] {
    let mut hits = [0u32; MAX_COPIES];
    // SAFETY: `obj` is the object of a hook's caller, loaded while it runs.
    unsafe {
        scan_relocations(obj, |v| {
            if let Some(i) = super::registry::copy_containing(v) {
                hits[i] = hits[i].saturating_add(1);
            }
        })
    };
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_binary_and_its_resolved_libc_bindings() {
        let here = finds_this_binary_and_its_resolved_libc_bindings as *const () as usize;
        let obj = object_at(here).expect("the test binary is a loaded object");
        assert!(obj.contains(here));
        assert_ne!(
            obj.dynamic, 0,
            "a dynamically linked test binary has PT_DYNAMIC"
        );
        // The test binary imports libc's functions: some resolved slot must
        // point into the object that defines `getpid`.
        let libc_obj = object_at(libc::getpid as *const () as usize).expect("libc is loaded");
        let mut into_libc = 0;
        let mut outside = 0;
        // SAFETY: the test binary stays loaded.
        unsafe {
            scan_relocations(&obj, |v| {
                outside += 1;
                if libc_obj.contains(v) {
                    into_libc += 1;
                }
            })
        };
        assert!(outside > 0, "no resolved binding found");
        assert!(into_libc > 0, "no binding into libc found among {outside}");
    }

    #[test]
    fn finds_a_definition_in_libc_through_its_hash_table() {
        let libc_obj = object_at(libc::getpid as *const () as usize).expect("libc is loaded");
        // SAFETY: libc stays loaded.
        let p = unsafe { lookup_in(&libc_obj, b"getpid") };
        assert_ne!(p, 0);
        // The same function dlsym finds (glibc has no second getpid).
        // SAFETY: RTLD_DEFAULT lookup of a NUL-terminated name.
        let d = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"getpid".as_ptr()) } as usize;
        assert_eq!(p, d);
        // SAFETY: as above.
        assert_eq!(unsafe { lookup_in(&libc_obj, b"no_such_symbol_here") }, 0);
    }

    #[test]
    fn no_object_at_null() {
        assert!(object_at(0).is_none());
    }
}
