//! Pause points: named moments of a store operation where a test can make the process stop
//! itself. With `STRATA_PAUSE_AT=NAME` in its environment, a process that reaches the point
//! `NAME` sends itself SIGSTOP there (and goes on at SIGCONT), so that a concurrency test can act
//! at that exact moment instead of racing to catch it. A point is only ever placed where the
//! process holds no index transaction. Without the variable a point costs one environment read.

/// The import has stored its layer (blob, extracted tree, index row) and not yet its image.
pub const IMPORT_LAYER_STORED: &str = "import-layer-stored";

/// The environment variable naming the point to stop at.
pub const PAUSE_AT_ENV: &str = "STRATA_PAUSE_AT";

/// Stops the process here if `STRATA_PAUSE_AT` names `point`.
pub fn pause_point(point: &str) {
    if std::env::var_os(PAUSE_AT_ENV).is_some_and(|v| v == point) {
        log::debug!("pause point {point}: stopping until SIGCONT");
        if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP) {
            log::warn!("pause point {point}: SIGSTOP: {e}");
        }
    }
}
