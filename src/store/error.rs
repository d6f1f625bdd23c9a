//! The store's error type: every failure says what was being done and to which object.

use std::path::PathBuf;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed on a path of the store or of the input.
    #[error("{context}: {path}: {source}")]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The index could not be read or written.
    #[error("index: {context}: {source}")]
    Db {
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    /// Input (a tarball, an archive, a manifest, a name) is malformed or hostile.
    #[error("{0}")]
    BadInput(String),
    /// A layer tar entry was refused; nothing of that layer was kept.
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    BadEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    /// Content did not match the digest it was announced with.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// No such image, tag, layer or blob.
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with the store's state (for example an image still in use).
    #[error("{0}")]
    Conflict(String),
    /// The user asked for something that cannot be done as asked.
    #[error("{0}")]
    Invalid(String),
    /// A registry failed, refused or sent something unusable.
    #[error(transparent)]
    Registry(#[from] super::registry::RegistryError),
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done and where.
    pub fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }

    /// An I/O error from a `nix` errno.
    pub fn errno(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        e: nix::errno::Errno,
    ) -> Error {
        Error::io(context, path, std::io::Error::from(e))
    }

    /// An index error with context.
    pub fn db(context: impl Into<String>, source: rusqlite::Error) -> Error {
        Error::Db {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `std::io::Result`s.
pub trait IoContext<T> {
    /// Maps the error to [`Error::Io`] with `context` and `path`.
    fn ctx(self, context: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(context, path, e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn ctx(self, context: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::errno(context, path, e))
    }
}

/// Adds context to `rusqlite::Result`s.
pub trait DbContext<T> {
    /// Maps the error to [`Error::Db`] with `context`.
    fn dbctx(self, context: &str) -> Result<T>;
}

impl<T> DbContext<T> for rusqlite::Result<T> {
    fn dbctx(self, context: &str) -> Result<T> {
        self.map_err(|e| Error::db(context, e))
    }
}
