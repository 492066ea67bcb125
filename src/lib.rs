//! libparbudget: one core budget for every native thread pool in a process
//! tree, enforced from an `LD_PRELOAD` shim. See README.md for the design.

// Unit-test builds compile out the constructor and the exported symbols
// (`cfg(not(test))`), which leaves the hook bodies unused there.
#![cfg_attr(test, allow(dead_code))]

mod arena;
mod boundary;
mod budget;
mod config;
mod conflicts;
mod environ;
mod exportenv;
mod flag;
mod hooks;
mod init;
mod ledger;
mod logging;
mod next;
mod process;
mod report;
mod runtime;
mod spin;
mod stackbuf;
mod thread_state;
mod warnings;

#[cfg(not(test))]
#[ctor::ctor(unsafe)]
fn parbudget_constructor() {
    hooks::constructor();
}
