//! Layers fetched now and extracted on first use, as containerd's content store does (fetch,
//! then unpack when a snapshot is needed). `pull` stores each layer's blob, hashed as it
//! streams and verified against the manifest's digest, and records the layer as *pending* with
//! that blob and the diff_id its image's config names ([`Store::store_layer_blob`]). When
//! something needs a layer's directory (a mount, a container), [`Store::ensure_layers`]
//! extracts the pending ones from their blobs, checks that each tar hashes to the recorded
//! diff_id, and only then moves the directory into `layers/` and marks the row extracted, in
//! one write transaction. A layer whose tar does not match stays pending and leaves nothing
//! behind.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;

use super::blobs::Ingest;
use super::digest::Digest;
use super::error::{Error, IoContext, Result};
use super::index::{self, LayerState};
use super::layer::{CHUNK, Compression, TmpDir, extract_from};
use super::unpack::Unpacker;
use super::{Lease, Store, now};
use crate::cow::format::XattrNs;

/// A layer as a manifest and a config describe it.
#[derive(Debug, Clone, Copy)]
pub struct LayerBlob<'a> {
    /// The blob's digest and size, from the manifest.
    pub blob: &'a Digest,
    pub size: u64,
    /// The blob's media type and the compression it declares.
    pub media_type: &'a str,
    pub compression: Compression,
    /// The digest of the uncompressed tar, from the config.
    pub diff_id: &'a Digest,
}

/// The error of a layer whose tar does not hash to the diff_id its image's config gave.
fn diff_id_mismatch(diff_id: &Digest, blob: &Digest, actual: &Digest) -> Error {
    Error::DigestMismatch {
        what: format!(
            "layer {diff_id} (blob {blob}): the uncompressed tar does not match the diff_id the image's config gives"
        ),
        expected: diff_id.to_string(),
        actual: actual.to_string(),
    }
}

impl Store {
    /// Stores a layer's blob (read from `src` only when the store lacks it) and records the
    /// layer as pending unless the store has it (pending or extracted); nothing is decompressed.
    /// Both are kept under `lease`. Returns whether `src` was read. `label` names the layer in
    /// errors.
    pub fn store_layer_blob(
        &self,
        mut src: impl Read,
        l: &LayerBlob<'_>,
        label: &str,
        lease: &Lease<'_>,
        bar: &indicatif::ProgressBar,
    ) -> Result<bool> {
        // What is here already, leased in the same transaction so that another process's rmi
        // or prune cannot take it in between.
        let (have_blob, have_layer) = self.index().write("reference layer", |c| {
            let have_blob = index::blob(c, l.blob)?.is_some() && self.blob_path(l.blob).exists();
            if have_blob {
                index::lease_ref(c, lease.id(), "blob", l.blob)?;
            }
            let have_layer = index::layer(c, l.diff_id)?.is_some();
            if have_layer {
                index::lease_ref(c, lease.id(), "layer", l.diff_id)?;
            }
            Ok((have_blob, have_layer))
        })?;
        if !have_blob {
            let mut ingest = Ingest::new(self, lease)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(Error::BadInput(format!("layer {label}: read failed: {e}")));
                    }
                };
                let path = ingest.path().to_path_buf();
                ingest
                    .write_all(&buf[..n])
                    .ctx("write temporary blob", path)?;
                bar.inc(n as u64);
            }
            ingest.commit(
                Some(l.blob),
                Some(l.size),
                Some(l.media_type),
                &format!("layer {label}"),
                lease,
            )?;
        }
        bar.finish_and_clear();
        if !have_layer {
            let estimate = self.estimate_tar_size(l.blob, l.size, l.compression);
            self.index().write(&format!("record layer {label}"), |c| {
                index::insert_pending_layer(c, l.diff_id, estimate, l.blob, l.compression, now())?;
                index::lease_ref(c, lease.id(), "layer", l.diff_id)
            })?;
        }
        Ok(!have_blob)
    }

    /// Makes sure every layer of `diff_ids` is extracted: pending ones are extracted from their
    /// blobs (several at once), each checked against its diff_id. Layers already extracted cost
    /// one read of the index. Works under a lease of its own, so prune cannot race it; a
    /// concurrent extraction of the same layer by another process is fine (one keeps the
    /// other's).
    pub fn ensure_layers(&self, diff_ids: &[Digest]) -> Result<()> {
        let mut pending = false;
        for d in diff_ids {
            match self.index().layer(d)? {
                Some(row) if row.is_pending() => pending = true,
                Some(_) => {}
                None => return Err(missing_layer(d)),
            }
        }
        if !pending {
            return Ok(());
        }
        let lease = self.lease()?;
        self.ensure_layers_leased(diff_ids, &lease)
    }

    /// [`Store::ensure_layers`] under the caller's lease (a pull with `--extract`).
    pub fn ensure_layers_leased(&self, diff_ids: &[Digest], lease: &Lease<'_>) -> Result<()> {
        // Which are pending, read and leased under the write lock.
        let todo: Vec<(Digest, Digest, Compression)> =
            self.index().write("lease pending layers", |c| {
                let mut todo = Vec::new();
                for d in diff_ids {
                    let row = index::layer(c, d)?.ok_or_else(|| missing_layer(d))?;
                    if let LayerState::Pending { blob, compression } = row.state
                        && !todo.iter().any(|(t, _, _)| t == d)
                    {
                        index::lease_ref(c, lease.id(), "layer", d)?;
                        index::lease_ref(c, lease.id(), "blob", &blob)?;
                        todo.push((d.clone(), blob, compression));
                    }
                }
                Ok(todo)
            })?;
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4)
            .min(todo.len());
        if jobs <= 1 {
            for (d, blob, c) in &todo {
                self.extract_pending(d, blob, *c, lease)?;
            }
            return Ok(());
        }
        // Each thread has its own connection to the index (a store's handle is not shared
        // between threads) and works under this lease.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let root = self.root().to_path_buf();
        let lease_id = lease.id();
        let results: Vec<Vec<(usize, Result<()>)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..jobs)
                .map(|_| {
                    s.spawn(|| {
                        use std::sync::atomic::Ordering::Relaxed;
                        let mut done = Vec::new();
                        let store = match Store::open(&root) {
                            Ok(st) => st,
                            Err(e) => {
                                failed.store(true, Relaxed);
                                done.push((0, Err(e)));
                                return done;
                            }
                        };
                        let wl = store.borrow_lease(lease_id);
                        while !failed.load(Relaxed) {
                            let i = next.fetch_add(1, Relaxed);
                            let Some((d, blob, c)) = todo.get(i) else {
                                break;
                            };
                            let r = store.extract_pending(d, blob, *c, &wl);
                            if r.is_err() {
                                failed.store(true, Relaxed);
                            }
                            done.push((i, r));
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        vec![(
                            0,
                            Err(Error::Invalid("a layer extraction thread panicked".into())),
                        )]
                    })
                })
                .collect()
        });
        let mut results: Vec<(usize, Result<()>)> = results.into_iter().flatten().collect();
        results.sort_by_key(|(i, _)| *i);
        for (_, r) in results {
            r?;
        }
        Ok(())
    }

    /// Extracts one pending layer from its blob into `tmp/`, checks its diff_id, syncs and
    /// indexes it, then moves it to `layers/<hex>` and marks its row extracted. On any failure
    /// nothing is left and the row stays pending.
    fn extract_pending(
        &self,
        diff_id: &Digest,
        blob: &Digest,
        compression: Compression,
        lease: &Lease<'_>,
    ) -> Result<()> {
        let label = format!("{diff_id} (blob {blob})");
        log::info!("extracting layer {label}");
        let tmp = lease.tmp_path("layer");
        let diff = tmp.join("diff");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .ctx("create temporary layer directory", &tmp)?;
        let mut guard = TmpDir(Some(&tmp));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&diff)
            .ctx("create temporary layer directory", &diff)?;
        let ns = XattrNs::for_this_process();
        let mut unpacker = Unpacker::new(&diff, &label, ns)?;
        let input = BufReader::with_capacity(CHUNK, self.open_blob(blob)?);
        let (got, size, _) = extract_from(input, Some(compression), Some(&mut unpacker), &label)?;
        drop(unpacker);
        if got != *diff_id {
            return Err(diff_id_mismatch(diff_id, blob, &got));
        }
        let row = self.prepare_layer_dir(&tmp, &diff, diff_id, size, ns)?;
        self.commit_layer_dir(&tmp, &row, &label, lease)?;
        guard.0 = None;
        Ok(())
    }

    /// The size of the tar a layer blob decompresses to, checked against `diff_id` (for a
    /// pending layer, whose row has only an estimate).
    pub fn tar_size_of_blob(
        &self,
        diff_id: &Digest,
        blob: &Digest,
        compression: Compression,
    ) -> Result<u64> {
        let label = format!("{diff_id} (blob {blob})");
        let input = BufReader::with_capacity(CHUNK, self.open_blob(blob)?);
        let (got, size, _) = extract_from(input, Some(compression), None, &label)?;
        if got != *diff_id {
            return Err(diff_id_mismatch(diff_id, blob, &got));
        }
        Ok(size)
    }

    /// An estimate of the size of the tar a stored layer blob decompresses to, without
    /// decompressing it: gzip's trailer (ISIZE: the size modulo 4 GiB of its last member), the
    /// content size in a zstd frame header when it has one, else the blob's own size (never
    /// less than that).
    fn estimate_tar_size(&self, blob: &Digest, blob_size: u64, c: Compression) -> u64 {
        let read = || -> io::Result<Option<u64>> {
            let mut f = File::open(self.blob_path(blob))?;
            match c {
                Compression::None => Ok(None),
                Compression::Gzip if blob_size >= 18 => {
                    f.seek(SeekFrom::End(-4))?;
                    let mut b = [0u8; 4];
                    f.read_exact(&mut b)?;
                    Ok(Some(u32::from_le_bytes(b) as u64))
                }
                Compression::Gzip => Ok(None),
                Compression::Zstd => {
                    let mut head = Vec::with_capacity(18);
                    f.take(18).read_to_end(&mut head)?;
                    Ok(zstd::zstd_safe::get_frame_content_size(&head)
                        .ok()
                        .flatten())
                }
            }
        };
        match read() {
            Ok(est) => est.unwrap_or(blob_size).max(blob_size),
            Err(e) => {
                log::warn!("blob {blob}: cannot read its size estimate: {e}");
                blob_size
            }
        }
    }
}

fn missing_layer(d: &Digest) -> Error {
    Error::NotFound(format!(
        "layer {d} is not in the store (removed meanwhile? run strata fsck)"
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;

    /// A gzip or zstd layer of `files` (path, content), and its diff_id (also used by the
    /// index's tests).
    pub(in crate::store) fn layer(files: &[(&str, &[u8])], c: Compression) -> (Vec<u8>, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *content).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let diff_id = Digest::of(&tar);
        let blob = match c {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar).unwrap();
                gz.finish().unwrap()
            }
            // One frame whose header has the content size (a stream's has none).
            Compression::Zstd => zstd::bulk::compress(&tar, 1).unwrap(),
            Compression::None => tar,
        };
        (blob, diff_id)
    }

    /// Stores `blob` as the pending layer `diff_id` (compressed with `c`); its digest.
    fn store_pending(
        s: &Store,
        blob: &[u8],
        diff_id: &Digest,
        c: Compression,
        lease: &Lease<'_>,
    ) -> Digest {
        let blob_digest = Digest::of(blob);
        let l = LayerBlob {
            blob: &blob_digest,
            size: blob.len() as u64,
            media_type: c.oci_media_type(),
            compression: c,
            diff_id,
        };
        s.store_layer_blob(blob, &l, "test", lease, &indicatif::ProgressBar::hidden())
            .unwrap();
        blob_digest
    }

    fn names(p: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A stored layer blob is pending (no directory, an estimate of its size) until
    /// `ensure_layers`, which extracts it once; a diff_id that the tar does not match fails
    /// naming the layer and both digests, leaves nothing, and the row stays pending.
    #[test]
    fn pending_layers_are_extracted_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let lease = s.lease().unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let big = vec![7u8; 300_000];
        let mut pulled = Vec::new();
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let (blob, diff_id) = layer(&[("etc/name", c.name().as_bytes()), ("big", &big)], c);
            let blob_digest = Digest::of(&blob);
            let l = LayerBlob {
                blob: &blob_digest,
                size: blob.len() as u64,
                media_type: c.oci_media_type(),
                compression: c,
                diff_id: &diff_id,
            };
            assert!(
                s.store_layer_blob(&blob[..], &l, "test", &lease, &bar)
                    .unwrap()
            );
            // Known now: not read again.
            assert!(
                !s.store_layer_blob(io::empty(), &l, "test", &lease, &bar)
                    .unwrap()
            );
            let row = s.index().layer(&diff_id).unwrap().unwrap();
            assert!(row.is_pending());
            let tar_size = s.tar_size_of_blob(&diff_id, &blob_digest, c).unwrap();
            // gzip's trailer and zstd's frame header give the size exactly.
            assert_eq!(row.size, tar_size, "{c:?}");
            assert!(!s.layer_path(&diff_id).exists());
            pulled.push(diff_id);
        }
        s.ensure_layers(&pulled).unwrap();
        for (d, c) in pulled.iter().zip(["gzip", "zstd", "none"]) {
            let row = s.index().layer(d).unwrap().unwrap();
            assert!(!row.is_pending());
            assert_eq!(row.content_size(), Some(300_000 + c.len() as u64));
            assert_eq!(
                fs::read(s.layer_diff(d).join("etc/name")).unwrap(),
                c.as_bytes()
            );
        }
        assert_eq!(s.fsck().unwrap(), Vec::<String>::new());
        // Extracted: nothing more to do.
        s.ensure_layers(&pulled).unwrap();

        // A zstd stream's frame header has no content size: the blob's size is the estimate.
        let (tar, diff_id) = layer(&[("big", &big)], Compression::None);
        let blob = zstd::encode_all(&tar[..], 1).unwrap();
        store_pending(&s, &blob, &diff_id, Compression::Zstd, &lease);
        assert_eq!(
            s.index().layer(&diff_id).unwrap().unwrap().size,
            blob.len() as u64
        );

        // A config that lies about the diff_id.
        let (blob, real) = layer(&[("etc/lie", b"x")], Compression::Gzip);
        let claimed = Digest::of(b"not this layer");
        let blob_digest = store_pending(&s, &blob, &claimed, Compression::Gzip, &lease);
        let before = names(&s.root().join("layers"));
        let e = s
            .ensure_layers(std::slice::from_ref(&claimed))
            .unwrap_err()
            .to_string();
        for d in [&claimed, &real, &blob_digest] {
            assert!(e.contains(&d.to_string()), "{d} not in: {e}");
        }
        assert!(s.index().layer(&claimed).unwrap().unwrap().is_pending());
        assert_eq!(names(&s.root().join("layers")), before);
        assert!(
            names(&s.tmp_dir()).iter().all(|n| !n.contains("layer")),
            "{:?}",
            names(&s.tmp_dir())
        );
        let problems = s.fsck().unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains(&real.to_string()), "{problems:?}");
    }

    /// A directory of a pending layer is what an interrupted extraction left (renamed into
    /// place, the index write lost): fsck says so, prune removes it, an extraction replaces it.
    #[test]
    fn a_directory_left_by_an_interrupted_extraction_is_an_orphan() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("store")).unwrap();
        let lease = s.lease().unwrap();
        let (blob, diff_id) = layer(&[("etc/name", b"real")], Compression::Gzip);
        store_pending(&s, &blob, &diff_id, Compression::Gzip, &lease);
        let leftover = || {
            fs::create_dir_all(s.layer_diff(&diff_id).join("etc")).unwrap();
            fs::write(s.layer_diff(&diff_id).join("etc/name"), "half").unwrap();
        };
        leftover();
        let problems = s.fsck().unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("interrupted extraction"),
            "{problems:?}"
        );
        let report = s.prune(false).unwrap();
        assert_eq!(report.orphans, [s.layer_path(&diff_id)]);
        assert!(s.index().layer(&diff_id).unwrap().unwrap().is_pending());
        assert_eq!(s.fsck().unwrap(), Vec::<String>::new());
        leftover();
        s.ensure_layers(std::slice::from_ref(&diff_id)).unwrap();
        assert_eq!(
            fs::read(s.layer_diff(&diff_id).join("etc/name")).unwrap(),
            b"real"
        );
        s.prune(false).unwrap(); // the trash
        assert_eq!(s.fsck().unwrap(), Vec::<String>::new());
    }

    /// Two stores (two processes) extracting the same pending layer at once both succeed, and
    /// one directory stays.
    #[test]
    fn two_extractions_of_one_layer_at_once_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let files: Vec<(String, Vec<u8>)> = (0..400)
            .map(|i| (format!("d{}/f{i}", i % 20), vec![i as u8; 4000]))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_slice()))
            .collect();
        let (blob, diff_id) = layer(&refs, Compression::Gzip);
        let s = Store::open(&root).unwrap();
        let lease = s.lease().unwrap(); // keeps the rows until the end
        store_pending(&s, &blob, &diff_id, Compression::Gzip, &lease);
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    let s = Store::open(&root).unwrap();
                    barrier.wait();
                    s.ensure_layers(std::slice::from_ref(&diff_id)).unwrap();
                });
            }
        });
        assert!(!s.index().layer(&diff_id).unwrap().unwrap().is_pending());
        assert_eq!(names(&s.root().join("layers")), [diff_id.hex()]);
        assert_eq!(
            fs::read(s.layer_diff(&diff_id).join("d3/f3")).unwrap(),
            [3u8; 4000]
        );
        drop(lease);
        s.prune(false).unwrap(); // the trash
        assert_eq!(s.fsck().unwrap(), Vec::<String>::new());
    }
}
