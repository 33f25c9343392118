//! Every exit code the supervisor's processes end with, in one place (the binary adds its own for bad
//! configuration and runtime failures before the supervisor starts).

/// Master or worker: stopped cleanly.
pub const OK: i32 = 0;
/// Master: no worker could boot at startup.
pub const NO_WORKER: i32 = 3;
/// Worker: its master is gone.
pub const WORKER_ORPHANED: i32 = 1;
/// Worker: the application failed to boot.
pub const WORKER_BOOT_FAILED: i32 = 3;
/// Worker: could not set itself up (runtime, signal handlers, listeners).
pub const WORKER_SETUP_FAILED: i32 = 4;
/// Worker: panicked outside a request (a request's panic is answered 500 and the worker goes on).
pub const WORKER_PANICKED: i32 = 70;
