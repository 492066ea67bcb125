//! End-to-end tests: real runtimes (libgomp, libomp, libiomp5, Debian's and
//! numpy's OpenBLAS, CPython) under the real shim, each in its own process with
//! a timeout. `scripts/test` builds the shim and installs what these need.

mod support;

mod bindings_and_teams;
mod blas;
mod budget_and_setters;
mod cli;
mod fork_after_gomp;
mod hardening;
mod hazards;
mod heap;
mod hook_coverage;
mod leases;
mod ledger;
mod memcheck;
mod python;
mod real_libs;
mod reports;
mod scale_out;
mod scaling;
mod signals;
