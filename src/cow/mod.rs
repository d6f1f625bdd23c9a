//! The union logic of strata. For now it holds the on-disk overlay encoding (`format`), which the
//! store uses to write layer directories that kernel overlayfs and strata's own union filesystem
//! both read. `cow` knows nothing of SQLite or FUSE.

pub mod format;
