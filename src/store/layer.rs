//! Ingest of one layer stream in a single pass: a reader thread copies the (compressed) bytes
//! into a blob ingest, hashing them, and hands them to the extracting thread, which decompresses
//! (gzip, zstd or none), hashes the tar (the diff_id) and extracts it into a temporary layer
//! directory. Both digests are checked, the directory is synced and indexed, and both are moved
//! into place; any failure leaves nothing in the store.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::blobs::{BlobWriter, Ingest, fsync_dir};
use super::digest::{Digest, HashingReader};
use super::error::{Error, IoContext, Result};
use super::index::{self, LayerRow, LayerState};
use super::tree::LayerTree;
use super::unpack::Unpacker;
use super::{Lease, Store, now};
use crate::cow::format::XattrNs;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognizes the compression from the first bytes of a blob.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The name the index records (`none`, `gzip`, `zstd`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// The compression of a name [`Compression::name`] gave.
    pub fn from_name(name: &str) -> Option<Compression> {
        match name {
            "none" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The compression a layer media type declares; `Err` for media types that are not layers.
    pub fn from_media_type(mt: &str) -> std::result::Result<Compression, String> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            other => Err(format!("unsupported layer media type {other:?}")),
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The Docker schema 2 layer media type for this compression.
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        }
    }

    /// A decompressing reader over `r`.
    pub fn decoder<'a, R: BufRead + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }
}

/// What the caller knows of a layer before reading it.
#[derive(Debug, Default, Clone)]
pub struct Expect {
    /// The digest of the blob (compressed bytes), from a manifest.
    pub blob: Option<Digest>,
    /// The size of the blob, from a manifest.
    pub size: Option<u64>,
    /// The diff_id (digest of the uncompressed tar), from a config.
    pub diff_id: Option<Digest>,
    /// The compression, from a media type; sniffed from the data when absent.
    pub compression: Option<Compression>,
    /// The media type to record for the blob.
    pub media_type: Option<String>,
}

/// A layer now in the store.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub blob: Digest,
    pub blob_size: u64,
    pub diff_id: Digest,
    pub size: u64,
    pub compression: Compression,
}

/// Chunks from the copying thread, read as one stream; each chunk read through goes back to
/// the copier for reuse (fresh 1 MiB buffers cost page faults and zeroing on every chunk).
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(v) => {
                    let done = std::mem::replace(&mut self.cur, v);
                    if done.capacity() >= CHUNK {
                        let _ = self.back.try_send(done);
                    }
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

pub(super) const CHUNK: usize = 1 << 20;

/// Copies `src` into the ingest and the channel, in chunks of about 1 MiB. When the extractor
/// stops early (it failed) and `drain`, the rest of `src` still goes into the ingest, so that
/// the blob's digest can tell corrupt data from a hostile tar.
fn copy_thread(
    mut src: impl Read,
    ingest: &mut BlobWriter,
    tx: SyncSender<Vec<u8>>,
    back: Receiver<Vec<u8>>,
    bar: &indicatif::ProgressBar,
    drain: bool,
) -> io::Result<()> {
    let mut tx = Some(tx);
    loop {
        let mut chunk = match back.try_recv() {
            Ok(mut c) => {
                c.resize(CHUNK, 0); // only a short last chunk has anything to fill
                c
            }
            Err(_) => vec![0u8; CHUNK],
        };
        let mut filled = 0;
        while filled < CHUNK {
            match src.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        chunk.truncate(filled);
        ingest.write_all(&chunk)?;
        bar.inc(filled as u64);
        if let Some(t) = &tx
            && t.send(chunk).is_err()
        {
            // The extractor stopped (it failed): its error is the one to report, unless the
            // blob turns out not to be the one announced.
            if !drain {
                return Ok(());
            }
            tx = None;
        }
    }
}

/// Removes a temporary layer directory unless disarmed.
pub(super) struct TmpDir<'p>(pub(super) Option<&'p Path>);
impl Drop for TmpDir<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = super::remove_any(p);
        }
    }
}

impl Store {
    /// Ingests one layer: stores its blob and its extracted directory (unless the store has the
    /// layer extracted already, in which case the stream is only hashed; a pending layer is
    /// extracted from the stream and so becomes extracted). `label` names the layer in errors.
    pub fn ingest_layer(
        &self,
        src: impl Read + Send,
        expect: &Expect,
        label: &str,
        lease: &Lease<'_>,
        bar: &indicatif::ProgressBar,
    ) -> Result<Ingested> {
        // Both already here: just keep them under the lease. Checked and leased in one write
        // transaction, so another process's rmi or prune cannot remove them in between. A
        // pending layer (pulled, never used) is extracted from this stream, as if new.
        if let (Some(b), Some(d)) = (&expect.blob, &expect.diff_id) {
            let found = self.index().write("reference layer", |c| {
                match (index::blob(c, b)?, index::layer(c, d)?) {
                    (Some(brow), Some(lrow))
                        if !lrow.is_pending()
                            && self.blob_path(b).exists()
                            && self.layer_diff(d).is_dir() =>
                    {
                        index::lease_ref(c, lease.id(), "blob", b)?;
                        index::lease_ref(c, lease.id(), "layer", d)?;
                        Ok(Some((brow.size, lrow.size)))
                    }
                    _ => Ok(None),
                }
            })?;
            if let Some((blob_size, size)) = found {
                bar.finish_and_clear();
                return Ok(Ingested {
                    blob: b.clone(),
                    blob_size,
                    diff_id: d.clone(),
                    size,
                    compression: expect.compression.unwrap_or(Compression::None),
                });
            }
        }
        // The layer alone may be here (another image's blob of it): lease it now, so it stays
        // while only the blob is ingested.
        let have_layer = match &expect.diff_id {
            Some(d) => self.index().write("reference layer", |c| {
                if index::layer(c, d)?.is_some_and(|l| !l.is_pending())
                    && self.layer_diff(d).is_dir()
                {
                    index::lease_ref(c, lease.id(), "layer", d)?;
                    Ok(true)
                } else {
                    Ok(false)
                }
            })?,
            None => false,
        };

        let tmp = lease.tmp_path("layer");
        let diff = tmp.join("diff");
        let mut guard = TmpDir(None);
        let ns = XattrNs::for_this_process();
        let mut unpacker = if have_layer {
            None
        } else {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .ctx("create temporary layer directory", &tmp)?;
            guard.0 = Some(&tmp);
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&diff)
                .ctx("create temporary layer directory", &diff)?;
            Some(Unpacker::new(&diff, label, ns)?)
        };

        let mut ingest = Ingest::new(self, lease)?;
        let (tx, rx) = sync_channel::<Vec<u8>>(8);
        let (back_tx, back_rx) = sync_channel::<Vec<u8>>(10);
        let drain = expect.blob.is_some();
        let (copied, extracted) = std::thread::scope(|s| {
            let ingest_ref = ingest.writer();
            let copier = s.spawn(move || copy_thread(src, ingest_ref, tx, back_rx, bar, drain));
            let extracted = extract(rx, back_tx, expect.compression, unpacker.as_mut(), label);
            let copied = copier
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("copy thread panicked")));
            (copied, extracted)
        });
        copied.map_err(|e| Error::BadInput(format!("layer {label}: read failed: {e}")))?;
        let (diff_id, size, compression) = match extracted {
            Ok(v) => v,
            Err(e) => {
                // Bytes that are not the blob announced: say so first (the tar error is only
                // a consequence of the corruption).
                if let Some(want) = &expect.blob {
                    let (got, _) = ingest.writer().digest_so_far();
                    if got != *want {
                        log::info!("layer {label}: {e}");
                        return Err(Error::DigestMismatch {
                            what: format!("layer {label}"),
                            expected: want.to_string(),
                            actual: got.to_string(),
                        });
                    }
                }
                return Err(e);
            }
        };
        bar.finish_and_clear();

        if let Some(want) = &expect.diff_id
            && *want != diff_id
        {
            return Err(Error::DigestMismatch {
                what: format!("layer {label} (diff_id, the digest of the uncompressed tar)"),
                expected: want.to_string(),
                actual: diff_id.to_string(),
            });
        }
        let media_type = expect
            .media_type
            .clone()
            .unwrap_or_else(|| compression.oci_media_type().to_string());
        // The extracted tree is scanned and indexed before the blob is stored: a layer that
        // fails there (say, a 0000 directory that a non-root process cannot read back) must not
        // leave its blob behind in the store.
        let row = match unpacker.take() {
            Some(u) => {
                drop(u);
                Some(self.prepare_layer_dir(&tmp, &diff, &diff_id, size, ns)?)
            }
            None => None,
        };
        let (blob, blob_size) = ingest.commit(
            expect.blob.as_ref(),
            expect.size,
            Some(&media_type),
            &format!("layer {label}"),
            lease,
        )?;

        if let Some(row) = row {
            self.commit_layer_dir(&tmp, &row, label, lease)?;
            guard.0 = None;
        } else {
            self.index().write("reference layer", |c| {
                index::lease_ref(c, lease.id(), "layer", &diff_id)
            })?;
        }
        Ok(Ingested {
            blob,
            blob_size,
            diff_id,
            size,
            compression,
        })
    }

    /// Syncs an extracted layer in `tmp` and writes its tree index; returns its index row.
    pub(super) fn prepare_layer_dir(
        &self,
        tmp: &Path,
        diff: &Path,
        diff_id: &Digest,
        size: u64,
        ns: XattrNs,
    ) -> Result<LayerRow> {
        let dirfd = fs::File::open(diff).ctx("open layer directory", diff)?;
        nix::unistd::syncfs(dirfd.as_fd()).ctx("sync layer", diff)?;
        let tree = LayerTree::scan(diff)?;
        let bytes = tree.to_bytes();
        let tree_path = tmp.join("tree.bin");
        let mut f = fs::File::create(&tree_path).ctx("write layer tree index", &tree_path)?;
        f.write_all(&bytes)
            .ctx("write layer tree index", &tree_path)?;
        f.sync_all().ctx("fsync layer tree index", &tree_path)?;
        fsync_dir(tmp)?;
        Ok(LayerRow {
            diff_id: diff_id.clone(),
            size,
            state: LayerState::Extracted {
                content_size: tree.content_size(),
                entries: tree.entries(),
                tree_digest: Digest::of(&bytes),
                xattr_ns: ns.as_str().to_string(),
            },
            created: now(),
        })
    }

    /// Indexes a prepared layer in `tmp` and moves it to `layers/<hex>`; a pending row of it
    /// becomes extracted. When another process extracted it meanwhile, theirs is kept.
    pub(super) fn commit_layer_dir(
        &self,
        tmp: &Path,
        row: &LayerRow,
        label: &str,
        lease: &Lease<'_>,
    ) -> Result<()> {
        let diff_id = &row.diff_id;
        let dest = self.layer_path(diff_id);
        let mut trash = Vec::new();
        self.index().write(&format!("store layer {label}"), |c| {
            if index::layer(c, diff_id)?.is_some_and(|l| !l.is_pending()) && dest.is_dir() {
                // Another process extracted it meanwhile: keep theirs.
                if let Some(t) = self.to_trash(tmp)? {
                    trash.push(t);
                }
            } else {
                if dest.exists()
                    && let Some(t) = self.to_trash(&dest)?
                {
                    trash.push(t); // an orphan left by a crash
                }
                fs::rename(tmp, &dest).ctx("move layer into place", &dest)?;
                fsync_dir(dest.parent().expect("layer path has a parent"))?;
                index::put_extracted_layer(c, row)?;
            }
            index::lease_ref(c, lease.id(), "layer", diff_id)
        })?;
        self.empty_trash(&trash);
        Ok(())
    }
}

/// The extracting side of [`Store::ingest_layer`]: the chunks the copier sends, read as one
/// stream by [`extract_from`].
fn extract(
    rx: Receiver<Vec<u8>>,
    back: SyncSender<Vec<u8>>,
    declared: Option<Compression>,
    unpacker: Option<&mut Unpacker>,
    label: &str,
) -> Result<(Digest, u64, Compression)> {
    let input = BufReader::with_capacity(
        CHUNK,
        ChannelReader {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
        },
    );
    extract_from(input, declared, unpacker, label)
}

/// Sniffs the compression of a layer blob, decompresses, hashes and extracts it (or only
/// hashes, when `unpacker` is `None`), reading `input` to its end. Returns the diff_id, the tar
/// size and the compression.
pub(super) fn extract_from(
    mut input: impl BufRead,
    declared: Option<Compression>,
    unpacker: Option<&mut Unpacker>,
    label: &str,
) -> Result<(Digest, u64, Compression)> {
    let head = input
        .fill_buf()
        .map_err(|e| Error::BadInput(format!("layer {label}: read failed: {e}")))?;
    let sniffed = Compression::sniff(head);
    let compression = match declared {
        Some(c) if c != sniffed && !(c == Compression::None && head.is_empty()) => {
            return Err(Error::BadInput(format!(
                "layer {label}: its media type says {c:?} compression but the data is {sniffed:?}"
            )));
        }
        Some(c) => c,
        None => sniffed,
    };
    let result: Result<(Digest, u64)> = (|| {
        let dec = compression.decoder(&mut input).map_err(|e| {
            Error::BadInput(format!("layer {label}: cannot start decompression: {e}"))
        })?;
        let mut hashing = HashingReader::new(dec);
        if let Some(u) = unpacker {
            u.unpack(&mut hashing)?;
        }
        let (diff_id, size, _) = hashing.finish().map_err(|e| {
            Error::BadInput(format!(
                "layer {label}: corrupt or truncated {compression:?} stream: {e}"
            ))
        })?;
        Ok((diff_id, size))
    })();
    let (diff_id, size) = result?;
    // Anything after the end of the compressed stream still belongs to the blob: drain it so
    // the copying thread finishes (it hashes everything it reads).
    io::copy(&mut input, &mut io::sink())
        .map_err(|e| Error::BadInput(format!("layer {label}: read failed: {e}")))?;
    Ok((diff_id, size, compression))
}
