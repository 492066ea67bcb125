//! Lazy, idempotent initialisation, safe from any hook at any time.
//!
//! Hooks can run before our constructor (numpy's OpenBLAS calls
//! `pthread_create` from its own constructor, which may run first), so every
//! hook calls [`ensure`]. States: UNINIT -> RUNNING -> READY. A thread that
//! finds RUNNING because it is itself inside init (reentry) passes through;
//! another thread waits, since init is short and does no blocking I/O.

use crate::budget::{self, Budget, Source};
use crate::config::{self, ForkPolicy};
use crate::ledger;
use crate::stackbuf::Quoted;
use core::sync::atomic::{AtomicU8, Ordering::*};
use log::{info, warn};
use std::sync::OnceLock;

const UNINIT: u8 = 0;
const RUNNING: u8 = 1;
const READY: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static SETTINGS: OnceLock<Settings> = OnceLock::new();

pub struct Settings {
    /// This process's own budget. The team cap is `cores()`: the tree's
    /// budget when that is smaller (known once the tree's ledger is joined).
    pub budget: Budget,
    pub fork: ForkPolicy,
    pub report: Option<Vec<u8>>,
    pub report_signal: Option<libc::c_int>,
}

impl Settings {
    /// The team cap, for a region, BLAS call or query: joins the tree's
    /// ledger first if that is still to do (the cap may be the tree's).
    pub fn cores(&self) -> u32 {
        ledger::ensure_attached();
        self.cap().cores
    }

    /// The cap as known now, joining nothing (reports, fork handlers).
    pub fn cap(&self) -> Budget {
        match ledger::tree_cap() {
            Some((tree, src)) if tree < self.budget.cores => Budget {
                cores: tree,
                source: Source::from_code(src),
            },
            _ => self.budget,
        }
    }
}

thread_local! {
    static IN_INIT: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// The settings, initialising first if needed. `None` only while this very
/// thread is inside init (a hook reached from init itself).
#[inline]
pub fn ensure() -> Option<&'static Settings> {
    if STATE.load(Acquire) == READY {
        return SETTINGS.get();
    }
    ensure_slow()
}

/// The first call, a call during init, or one racing it: kept out of line so
/// every hook's ready path is one load and a compare.
#[cold]
#[inline(never)]
fn ensure_slow() -> Option<&'static Settings> {
    if IN_INIT.with(|f| f.get()) {
        return None;
    }
    match STATE.compare_exchange(UNINIT, RUNNING, AcqRel, Acquire) {
        Ok(_) => {
            IN_INIT.with(|f| f.set(true));
            let s = std::panic::catch_unwind(read_settings).unwrap_or_else(|_| fallback_settings());
            let _ = SETTINGS.set(s);
            STATE.store(READY, Release);
            IN_INIT.with(|f| f.set(false));
        }
        Err(_) => {
            while STATE.load(Acquire) != READY {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }
    SETTINGS.get()
}

/// Settings if init already finished; never starts it (for atfork/signal paths).
pub fn ready() -> Option<&'static Settings> {
    if STATE.load(Acquire) == READY {
        SETTINGS.get()
    } else {
        None
    }
}

fn fallback_settings() -> Settings {
    Settings {
        budget: Budget {
            cores: 1,
            source: Source::Affinity,
        },
        fork: ForkPolicy::Fresh,
        report: None,
        report_signal: None,
    }
}

fn read_settings() -> Settings {
    // Logging first, so every later complaint has a writer.
    let mut bad_log = None;
    let spec = match config::getenv(c"PARBUDGET_LOG") {
        None => "warn".to_string(),
        Some(v) => match core::str::from_utf8(v.as_bytes()) {
            Ok(s) if config::log_spec_ok(s) => s.to_string(),
            _ => {
                bad_log = Some(v);
                "warn".to_string()
            }
        },
    };
    crate::logging::install(&spec);
    if let Some(v) = bad_log {
        warn!(
            "bad_env var=PARBUDGET_LOG value={} using=warn reason=\"unknown level; use error, warn, info, debug, trace or env_logger directives\"",
            Quoted(v.as_bytes())
        );
    }

    // The machine is asked (affinity, cgroup files: a dozen system calls)
    // only when PARBUDGET_CORES does not say: every process of the tree
    // starts with this.
    let budget = match config::getenv(c"PARBUDGET_CORES") {
        None => budget::detect(),
        Some(v) => match budget::parse_cores(v.as_bytes()) {
            Ok(n) => Budget {
                cores: n,
                source: Source::Env,
            },
            Err(e) => {
                let detected = budget::detect();
                warn!(
                    "bad_env var=PARBUDGET_CORES value={} using={} source={} reason=\"{}\"",
                    Quoted(v.as_bytes()),
                    detected.cores,
                    detected.source.name(),
                    e.reason()
                );
                detected
            }
        },
    };
    info!(
        "budget cores={} source={}",
        budget.cores,
        budget.source.name()
    );

    let fork = match config::getenv(c"PARBUDGET_FORK") {
        None => ForkPolicy::Fresh,
        Some(v) => ForkPolicy::parse(v.as_bytes()).unwrap_or_else(|| {
            warn!(
                "bad_env var=PARBUDGET_FORK value={} using=fresh reason=\"expected fresh, serial, abort or warn\"",
                Quoted(v.as_bytes())
            );
            ForkPolicy::Fresh
        }),
    };

    let report = config::getenv(c"PARBUDGET_REPORT").map(|v| v.as_bytes().to_vec());
    let report_signal = config::getenv(c"PARBUDGET_REPORT_SIGNAL").and_then(|v| {
        let s = config::parse_signal(v.as_bytes());
        if s.is_none() {
            warn!(
                "bad_env var=PARBUDGET_REPORT_SIGNAL value={} using=off reason=\"expected USR1, USR2, HUP, URG, WINCH or PWR\"",
                Quoted(v.as_bytes())
            );
        }
        s
    });

    let scope = match config::getenv(c"PARBUDGET_SCOPE") {
        None => ledger::Scope::Tree,
        Some(v) => match v.as_bytes().trim_ascii() {
            b"tree" => ledger::Scope::Tree,
            b"process" => ledger::Scope::Process,
            _ => {
                warn!(
                    "bad_env var=PARBUDGET_SCOPE value={} using=tree reason=\"expected tree or process\"",
                    Quoted(v.as_bytes())
                );
                ledger::Scope::Tree
            }
        },
    };
    ledger::setup(scope, budget.cores, budget.source as u32);

    crate::exportenv::export(budget.cores, budget::affinity_cpus());
    crate::exportenv::export_spin();
    Settings {
        budget,
        fork,
        report,
        report_signal,
    }
}
