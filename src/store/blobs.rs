//! Content-addressed blobs. An [`Ingest`] writes to a temporary file while hashing; `commit`
//! fsyncs, checks size and digest, and renames the file to `blobs/sha256/<hex>` inside a write
//! transaction that records the row. A blob that fails verification, or an ingest dropped before
//! commit, leaves nothing behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use super::digest::{Digest, Hasher};
use super::error::{Error, IoContext, Result};
use super::{Lease, Store, index, now};

/// The largest manifest, index or config strata reads into memory.
pub const MAX_JSON_BLOB: u64 = 16 << 20;

/// A blob being written.
pub struct Ingest<'s> {
    store: &'s Store,
    path: PathBuf,
    w: BlobWriter,
}

/// The writing half of an [`Ingest`]: a file and a running hash. It can be handed to another
/// thread while the ingest itself stays with the store.
pub struct BlobWriter {
    file: Option<File>,
    hasher: Hasher,
}

impl<'s> Ingest<'s> {
    /// Starts an ingest owned by `lease`.
    pub fn new(store: &'s Store, lease: &Lease<'_>) -> Result<Ingest<'s>> {
        let path = lease.tmp_path("blob");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .ctx("create temporary blob", &path)?;
        Ok(Ingest {
            store,
            path,
            w: BlobWriter {
                file: Some(file),
                hasher: Hasher::default(),
            },
        })
    }

    /// The temporary file being written.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The writer, to fill the blob from another thread.
    pub fn writer(&mut self) -> &mut BlobWriter {
        &mut self.w
    }

    /// Verifies, fsyncs and stores the blob; returns its digest and size. With `expected`, a
    /// different digest (or size) is an error and nothing is stored.
    pub fn commit(
        mut self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        media_type: Option<&str>,
        what: &str,
        lease: &Lease<'_>,
    ) -> Result<(Digest, u64)> {
        let file = self.w.file.take().expect("ingest committed once");
        file.sync_all().ctx("fsync temporary blob", &self.path)?;
        drop(file);
        let size = self.w.hasher.len();
        let digest = std::mem::take(&mut self.w.hasher).finish();
        if let Some(want) = expected_size
            && want != size
        {
            return Err(Error::BadInput(format!(
                "{what}: size mismatch: expected {want} bytes, got {size}"
            )));
        }
        if let Some(want) = expected
            && *want != digest
        {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: want.to_string(),
                actual: digest.to_string(),
            });
        }
        let dest = self.store.blob_path(&digest);
        let tmp = self.path.clone();
        self.store.index().write("store blob", |c| {
            if dest.exists() && index::blob(c, &digest)?.is_some() {
                fs::remove_file(&tmp).ctx("remove duplicate temporary blob", &tmp)?;
            } else {
                fs::rename(&tmp, &dest).ctx("move blob into place", &dest)?;
                fsync_dir(dest.parent().expect("blob path has a parent"))?;
                index::insert_blob(c, &digest, size, media_type, now())?;
            }
            index::lease_ref(c, lease.id(), "blob", &digest)
        })?;
        Ok((digest, size))
    }
}

impl Write for Ingest<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter {
    /// The digest and size of what was written so far.
    pub fn digest_so_far(&self) -> (Digest, u64) {
        let h = self.hasher.clone();
        let n = h.len();
        (h.finish(), n)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("ingest already committed"))?;
        let n = f.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        // Not committed (or commit failed): nothing may stay behind.
        let _ = fs::remove_file(&self.path);
    }
}

/// fsyncs a directory, so that a rename inside it survives a crash.
pub fn fsync_dir(dir: &std::path::Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

impl Store {
    /// Stores `data` as a blob (verifying it against `expected` if given).
    pub fn put_blob(
        &self,
        data: &[u8],
        expected: Option<&Digest>,
        media_type: Option<&str>,
        what: &str,
        lease: &Lease<'_>,
    ) -> Result<Digest> {
        if let Some(want) = expected
            && self.has_blob(want)?
        {
            // Known: still verify what we were given, then just reference it.
            let got = Digest::of(data);
            if got != *want {
                return Err(Error::DigestMismatch {
                    what: what.to_string(),
                    expected: want.to_string(),
                    actual: got.to_string(),
                });
            }
            // Checked again under the write lock: another process's rmi or prune may have
            // removed it since; then it is stored anew below.
            let referenced = self.index().write("reference blob", |c| {
                if index::blob(c, want)?.is_none() || !self.blob_path(want).exists() {
                    return Ok(false);
                }
                index::lease_ref(c, lease.id(), "blob", want)?;
                Ok(true)
            })?;
            if referenced {
                return Ok(want.clone());
            }
        }
        let mut ing = Ingest::new(self, lease)?;
        ing.write_all(data)
            .ctx("write temporary blob", ing.path.clone())?;
        Ok(ing
            .commit(expected, Some(data.len() as u64), media_type, what, lease)?
            .0)
    }

    /// Whether the index knows the blob and its file exists.
    pub fn has_blob(&self, d: &Digest) -> Result<bool> {
        Ok(self.index().blob(d)?.is_some() && self.blob_path(d).exists())
    }

    /// Opens a stored blob.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NotFound(format!("blob {d} is missing from the store"))
            } else {
                Error::io("open blob", p, e)
            }
        })
    }

    /// Reads a small stored blob (a manifest or config) and checks its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let f = self.open_blob(d)?;
        let mut data = Vec::new();
        f.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .ctx("read blob", self.blob_path(d))?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(Error::BadInput(format!(
                "blob {d} is larger than {MAX_JSON_BLOB} bytes"
            )));
        }
        let got = Digest::of(&data);
        if got != *d {
            return Err(Error::DigestMismatch {
                what: format!("stored blob {d} (run strata fsck)"),
                expected: d.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A blob `put_blob` finds before it takes the write lock can be gone once it holds it
    /// (another process's rmi or prune swept it meanwhile): it must then store the blob anew,
    /// not reference one that no longer exists.
    #[test]
    fn put_blob_of_a_blob_removed_meanwhile_stores_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        const DATA: &[u8] = b"{\"config\":\"removed meanwhile\"}";
        let d = Digest::of(DATA);
        let remover = Store::open(&root).unwrap();
        {
            let lease = remover.lease().unwrap();
            remover.put_blob(DATA, None, None, "test", &lease).unwrap();
        }
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (root2, d2) = (root.clone(), d.clone());
        let adder = std::thread::spawn(move || {
            let s = Store::open(&root2).unwrap();
            let lease = s.lease().unwrap();
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // Sees the blob, then waits for the write lock that the remover holds.
            s.put_blob(DATA, Some(&d2), None, "test", &lease).unwrap();
            assert!(s.has_blob(&d2).unwrap(), "the blob is not in the store");
            let refs: i64 = s
                .index()
                .conn()
                .query_row(
                    "SELECT count(*) FROM lease_refs WHERE lease_id = ?1 AND key = ?2",
                    [lease.id(), d2.to_string().as_str()],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(refs, 1, "the lease does not hold the blob");
        });
        ready_rx.recv().unwrap();
        let mut trash = Vec::new();
        remover
            .index()
            .write("remove the blob", |c| {
                go_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                index::delete_blob(c, &d)?;
                trash.extend(remover.to_trash(&remover.blob_path(&d))?);
                Ok(())
            })
            .unwrap();
        remover.empty_trash(&trash);
        adder.join().unwrap();
        assert!(remover.has_blob(&d).unwrap());
        assert_eq!(remover.read_blob(&d).unwrap(), DATA);
    }
}
