//! The image store: content-addressed blobs, extracted layers in kernel overlayfs format with a
//! tree index beside each, and the SQLite index that is the truth about what the store holds.
//! The store never mounts anything. Pulled layers are kept as blobs and extracted on first use
//! ([`pending`]).
//!
//! On disk, under the root:
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs exactly as received;
//! - `layers/<diff_id hex>/diff/`: an extracted layer; `layers/<hex>/tree.bin`: its tree index
//!   (a pending layer has no directory until its first use);
//! - `index.db`: the index (SQLite, WAL);
//! - `tmp/<lease>-…`: ingests and extractions in progress, named after the lease that owns them;
//! - `trash/`: objects removed from the index whose files are being deleted;
//! - `containers/<id>/`: container state (the runner's).
//!
//! Every change is built in `tmp/`, verified, fsynced, then renamed into place inside a write
//! transaction of the index, so a crash leaves only orphans that `system prune` removes.

pub mod archive;
pub mod blobs;
pub mod digest;
pub mod error;
pub mod gc;
pub mod image;
pub mod images;
pub mod import;
pub mod index;
pub mod layer;
pub mod pause;
pub mod pending;
pub mod reference;
pub mod registry;
pub mod tree;
pub mod unpack;

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use digest::Digest;
use error::IoContext;
pub use error::{Error, Result};
pub use index::Index;

use crate::sys;

/// An open store.
pub struct Store {
    root: PathBuf,
    index: Index,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The current time in unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A name unique to this process and call (pid, process start time, time, counter).
fn unique_name() -> String {
    let pid = std::process::id();
    let start = sys::process_start_time(pid).unwrap_or(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{pid}.{start}.{nanos:x}.{n}")
}

/// The default store root: `/var/lib/strata` for root, `$XDG_DATA_HOME/strata` (or
/// `~/.local/share/strata`) for other users.
pub fn default_root() -> PathBuf {
    if sys::euid() == 0 {
        return PathBuf::from("/var/lib/strata");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("strata");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/strata")
}

impl Store {
    /// Opens the store at `root`, creating it if needed.
    pub fn open(root: &Path) -> Result<Store> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for d in ["blobs/sha256", "layers", "tmp", "trash", "containers"] {
            let p = root.join(d);
            b.create(&p).ctx("create store directory", &p)?;
        }
        let root = fs::canonicalize(root).ctx("resolve store root", root)?;
        let index = Index::open(&root.join("index.db"))?;
        Ok(Store { root, index })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Where a blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// The directory of a layer (holding `diff/` and `tree.bin`).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// The extracted tree of a layer, in kernel overlayfs format.
    pub fn layer_diff(&self, diff_id: &Digest) -> PathBuf {
        self.layer_path(diff_id).join("diff")
    }

    /// The tree index of a layer.
    pub fn layer_tree(&self, diff_id: &Digest) -> PathBuf {
        self.layer_path(diff_id).join("tree.bin")
    }

    /// The directory for work in progress.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Moves `path` (a file or directory of the store) into the trash, to be deleted after the
    /// current transaction commits with [`Store::empty_trash`]. Missing paths are fine.
    pub fn to_trash(&self, path: &Path) -> Result<Option<PathBuf>> {
        let dest = self.root.join("trash").join(unique_name());
        match fs::rename(path, &dest) {
            Ok(()) => Ok(Some(dest)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("move to trash", path, e)),
        }
    }

    /// Deletes trashed paths.
    pub fn empty_trash(&self, paths: &[PathBuf]) {
        for p in paths {
            if let Err(e) = remove_any(p) {
                log::warn!(
                    "could not delete {}: {e} (system prune will retry)",
                    p.display()
                );
            }
        }
    }

    /// Starts a lease: blobs and layers added under it stay until it ends, even before an
    /// image refers to them.
    pub fn lease(&self) -> Result<Lease<'_>> {
        let pid = std::process::id();
        let row = index::LeaseRow {
            id: unique_name(),
            pid,
            pid_start: sys::process_start_time(pid).unwrap_or(0),
        };
        self.index
            .write("start lease", |c| index::insert_lease(c, &row, now()))?;
        Ok(Lease {
            store: self,
            id: row.id,
            owned: true,
        })
    }

    /// The lease `id` (started by this process, through another [`Store`] of the same root),
    /// for work done in another thread: references go to that lease, and dropping this handle
    /// does not end it.
    pub fn borrow_lease(&self, id: &str) -> Lease<'_> {
        Lease {
            store: self,
            id: id.to_string(),
            owned: false,
        }
    }
}

/// Removes a file or a whole directory tree (fixing permissions that would stop it), without
/// following symlinks. Missing paths are fine.
pub fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => match fs::remove_dir_all(p) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                make_writable(p);
                fs::remove_dir_all(p)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
        Ok(_) => match fs::remove_file(p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
    }
}

/// Gives the owner rwx on every directory below `p` (for layers with 0000 directories when the
/// process is not root).
fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(m) = fs::symlink_metadata(p) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Keeps blobs and layers alive while an operation that will reference them runs. Ended (and
/// its row removed) when dropped; a lease left by a killed process is removed by `system prune`.
pub struct Lease<'s> {
    store: &'s Store,
    id: String,
    /// Whether dropping this handle ends the lease (false for [`Store::borrow_lease`]).
    owned: bool,
}

impl Lease<'_> {
    /// The lease id (also the prefix of its temporary files).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A fresh path in `tmp/` owned by this lease.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.store.tmp_dir().join(format!("{}-{what}{n}", self.id))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = self
            .store
            .index
            .write("end lease", |c| index::delete_lease(c, &self.id))
        {
            log::warn!("could not end lease {}: {e}", self.id);
        }
    }
}
