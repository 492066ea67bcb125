//! Links the unwinder into the shim (GCC's static `libgcc_eh.a`) instead of
//! loading `libgcc_s.so.1` beside it.
//!
//! Why: the shim is preloaded into every process of a tree, and every
//! process pays for each object it maps on every `fork` (its mappings are
//! duplicated, and a child touches their pages again) and at start-up (one
//! more file to open, map and relocate). `libgcc_s` is there only for
//! unwinding a panic to `boundary::fenced`; measured on the 2-core VM,
//! preloading an empty library together with `libgcc_s.so.1` costs about
//! +13 us per fork + _exit + wait over the empty library alone.
//!
//! How: std asks the linker for `-lgcc_s`. A directory searched first holds
//! a linker script named `libgcc_s.so` that stands for `-lgcc_eh`, the same
//! unwinder as an archive (what `gcc -static-libgcc` links into shared
//! objects). The version script rustc writes for a cdylib keeps its
//! `_Unwind_*` symbols local, so the host's own unwinder is never
//! interposed. `boundary::tests` unwind a panic through it.
//!
//! Only for GNU/Linux targets, where `libgcc_eh.a` ships with GCC; set
//! PARBUDGET_DYNAMIC_UNWINDER=1 to link `libgcc_s` as std does.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PARBUDGET_DYNAMIC_UNWINDER");
    let gnu_linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !gnu_linux || env::var_os("PARBUDGET_DYNAMIC_UNWINDER").is_some_and(|v| v == "1") {
        return;
    }
    let dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("unwinder");
    fs::create_dir_all(&dir).expect("create OUT_DIR/unwinder");
    fs::write(
        dir.join("libgcc_s.so"),
        "/* parbudget build.rs: link GCC's unwinder statically */\nINPUT(-lgcc_eh)\n",
    )
    .expect("write OUT_DIR/unwinder/libgcc_s.so");
    println!("cargo:rustc-link-search=native={}", dir.display());
}
