//! strata: a userspace union filesystem and container image store.
//!
//! # Layout
//! - [`store`]: content-addressed blobs, extracted layers (kernel overlayfs format, each with a
//!   tree index), the SQLite index, import/load/save. Never mounts.
//! - [`cow`]: the union logic; for now the on-disk overlay encoding the store writes.
//! - [`fuse`]: the FUSE server, a thin adapter from `fuser` to the union.
//! - [`cli`]: the `strata` command line and its docker-like output.
//! - [`runner`]: containers: `run` and the life cycle on the union mount.
//! - [`progress`]: progress bars on a terminal, silence otherwise.
//! - [`sys`]: the few raw system calls `nix` does not wrap (with `fuse::ring_sys`, the io_uring
//!   transport's buffers and submissions, the only `unsafe` code).

pub mod cli;
pub mod cow;
pub mod fuse;
pub mod progress;
pub mod runner;
pub mod store;
pub mod sys;
