//! Runtime copies: which native thread pools are loaded, where, and which
//! copy a given caller is bound to. One file per job:
//! - `kind`, `table` and one module per runtime kind: the table rows;
//! - `copy`: one loaded copy, its counters and calls into it;
//! - `registry`: the registry of copies and their discovery;
//! - `loader`: small questions to the dynamic loader;
//! - `binding`: which copy a caller object's GOT is bound to;
//! - `resolve`: caller -> real function, with its cache.
//!
//! This file only declares them and names what the rest of the shim uses.

pub mod binding;
pub mod blis;
pub mod copy;
pub mod flexiblas;
pub mod kind;
pub mod loader;
pub mod mkl;
pub mod openblas;
pub mod openmp;
pub mod registry;
pub mod resolve;
pub mod table;

pub use copy::{
    OTHER, RuntimeCopy, Stats, apply_budget, claim_count_row, count_region, regions_and_teams,
};
pub use kind::{Impl, Kind};
pub use loader::object_name;
pub use registry::{
    confirm_pending, copies, copy, copy_containing, refresh, refresh_light, reset_writer_in_child,
    take_unchecked, unchecked_pending,
};
pub use resolve::{Target, objects_unloaded, resolve};
