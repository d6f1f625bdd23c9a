//! `load` and `save`: docker-archive tarballs (`docker save` format), OCI image layouts (a
//! directory) and OCI archives (a tar of a layout). Loading keeps manifests, configs and layer
//! blobs byte for byte, so saving again reproduces their digests.
//!
//! Archives are read without extracting them: a tar file is indexed once (member → offset and
//! size) and members are read in place; a compressed archive or standard input is first spooled
//! to a temporary file in the store. Paths named inside an archive are resolved only among its
//! members (or beneath the layout directory, with `openat2(RESOLVE_IN_ROOT)`), never on the host.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::blobs::{MAX_JSON_BLOB, fsync_dir};
use super::digest::{Digest, HashingWriter};
use super::error::{Error, IoContext, Result};
use super::image::{self, Desc, IMAGE_NAME, REF_NAME};
use super::images::{LayerInput, NewImage, manifest_layers};
use super::layer::{Compression, Expect};
use super::reference::{Reference, familiar};
use super::unpack::clean_path;
use super::{Lease, Store};
use crate::progress::Progress;

/// Where an archive's members are read from.
enum Bundle {
    /// An unpacked directory (an OCI layout or an extracted docker-archive).
    Dir(File, PathBuf),
    /// A tar file: member path → (data offset, size) or symlink target.
    Tar(PathBuf, HashMap<String, Member>),
}

#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
}

fn clean(p: &str) -> Result<String> {
    let comps = clean_path(p.as_bytes())
        .map_err(|e| Error::BadInput(format!("archive path {p:?}: {e}")))?;
    let joined = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("/");
    if joined.is_empty() {
        return Err(Error::BadInput(format!(
            "archive path {p:?} names the archive's root"
        )));
    }
    Ok(joined)
}

impl Bundle {
    fn open_tar(path: &Path) -> Result<Bundle> {
        let f = File::open(path).ctx("open archive", path)?;
        let mut ar = tar::Archive::new(BufReader::new(f));
        let mut members = HashMap::new();
        for e in ar
            .entries_with_seek()
            .map_err(|e| Error::BadInput(format!("{}: not a tar archive: {e}", path.display())))?
        {
            let e =
                e.map_err(|e| Error::BadInput(format!("{}: malformed tar: {e}", path.display())))?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let Ok(name) = clean(&name) else {
                continue; // such members can never be named by a manifest we accept
            };
            let m = match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                    offset: e.raw_file_position(),
                    size: e.size(),
                },
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = e
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    if e.header().entry_type() == tar::EntryType::Link {
                        // hard link targets are archive paths
                        Member::Symlink(format!("/{target}"))
                    } else {
                        Member::Symlink(target)
                    }
                }
                _ => continue,
            };
            members.insert(name, m);
        }
        Ok(Bundle::Tar(path.to_path_buf(), members))
    }

    fn open_dir(path: &Path) -> Result<Bundle> {
        let f = File::open(path).ctx("open directory", path)?;
        Ok(Bundle::Dir(f, path.to_path_buf()))
    }

    fn display(&self) -> String {
        match self {
            Bundle::Dir(_, p) | Bundle::Tar(p, _) => p.display().to_string(),
        }
    }

    fn exists(&self, name: &str) -> bool {
        self.resolve(name).is_ok()
    }

    /// Follows symlink members (relative to their directory, or to the archive root).
    fn resolve(&self, name: &str) -> Result<(u64, u64)> {
        let Bundle::Tar(_, members) = self else {
            return Err(Error::Invalid("not a tar".into()));
        };
        let mut cur = clean(name)?;
        for _ in 0..16 {
            match members.get(&cur) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Symlink(t)) => {
                    let joined = if let Some(abs) = t.strip_prefix('/') {
                        abs.to_string()
                    } else {
                        match cur.rsplit_once('/') {
                            Some((dir, _)) => format!("{dir}/{t}"),
                            None => t.clone(),
                        }
                    };
                    // resolve '..' lexically, never above the archive root
                    let mut parts: Vec<&str> = Vec::new();
                    for c in joined.split('/') {
                        match c {
                            "" | "." => {}
                            ".." => {
                                if parts.pop().is_none() {
                                    return Err(Error::BadInput(format!(
                                        "{name}: link leaves the archive"
                                    )));
                                }
                            }
                            c => parts.push(c),
                        }
                    }
                    cur = parts.join("/");
                }
                None => {
                    return Err(Error::BadInput(format!(
                        "{}: no member {name:?}",
                        self.display()
                    )));
                }
            }
        }
        Err(Error::BadInput(format!("{name}: too many levels of links")))
    }

    fn size(&self, name: &str) -> Result<u64> {
        match self {
            Bundle::Tar(..) => Ok(self.resolve(name)?.1),
            Bundle::Dir(..) => Ok(self.open(name)?.metadata().ctx("stat", name)?.len()),
        }
    }

    fn open(&self, name: &str) -> Result<File> {
        match self {
            Bundle::Dir(dir, root) => {
                let p = clean(name)?;
                let how = nix::fcntl::OpenHow::new()
                    .flags(nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC)
                    .resolve(
                        nix::fcntl::ResolveFlag::RESOLVE_IN_ROOT
                            | nix::fcntl::ResolveFlag::RESOLVE_NO_MAGICLINKS,
                    );
                let fd = nix::fcntl::openat2(dir.as_fd(), p.as_str(), how).map_err(|e| {
                    if e == nix::errno::Errno::ENOENT {
                        Error::BadInput(format!("{}: no file {name:?}", root.display()))
                    } else {
                        Error::errno("open", root.join(&p), e)
                    }
                })?;
                let f = File::from(fd);
                if !f.metadata().ctx("stat", root.join(&p))?.is_file() {
                    return Err(Error::BadInput(format!(
                        "{}: {name:?} is not a regular file",
                        root.display()
                    )));
                }
                Ok(f)
            }
            Bundle::Tar(path, _) => {
                let (offset, _) = self.resolve(name)?;
                let mut f = File::open(path).ctx("open archive", path)?;
                f.seek(SeekFrom::Start(offset))
                    .ctx("seek in archive", path)?;
                Ok(f)
            }
        }
    }

    fn reader(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let size = self.size(name)?;
        Ok(Box::new(self.open(name)?.take(size)))
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let size = self.size(name)?;
        if size > MAX_JSON_BLOB {
            return Err(Error::BadInput(format!(
                "{}: {name} is larger than {MAX_JSON_BLOB} bytes",
                self.display()
            )));
        }
        let mut v = Vec::with_capacity(size as usize);
        self.open(name)?
            .take(size)
            .read_to_end(&mut v)
            .ctx("read", name)?;
        Ok(v)
    }

    /// Reads a blob of an OCI layout and checks it against its descriptor.
    fn read_blob(&self, d: &Desc, what: &str) -> Result<Vec<u8>> {
        if d.size > MAX_JSON_BLOB {
            return Err(Error::BadInput(format!(
                "{what}: {} is larger than {MAX_JSON_BLOB} bytes",
                d.digest
            )));
        }
        let data = self.read_small(&blob_name(&d.digest))?;
        let got = Digest::of(&data);
        if got != d.digest {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: d.digest.to_string(),
                actual: got.to_string(),
            });
        }
        if data.len() as u64 != d.size {
            return Err(Error::BadInput(format!(
                "{what}: size {} but its descriptor says {}",
                data.len(),
                d.size
            )));
        }
        Ok(data)
    }
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// What `load` brought in: each image id with the names it got.
#[derive(Debug, Default)]
pub struct Loaded {
    pub images: Vec<(Digest, Vec<String>)>,
}

/// Spools `r` (decompressed if gzip or zstd) to a temporary file owned by `lease`.
fn spool(mut r: impl Read, lease: &Lease<'_>) -> Result<PathBuf> {
    let path = lease.tmp_path("load");
    let mut f = File::create(&path).ctx("create temporary archive", &path)?;
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match r.read(&mut head[n..]).ctx("read archive", "<input>")? {
            0 => break,
            k => n += k,
        }
    }
    let chained = io::Cursor::new(head[..n].to_vec()).chain(r);
    let c = Compression::sniff(&head[..n]);
    let mut dec = c
        .decoder(BufReader::new(chained))
        .ctx("decompress archive", "<input>")?;
    io::copy(&mut dec, &mut f)
        .map_err(|e| Error::BadInput(format!("archive: corrupt or truncated input: {e}")))?;
    Ok(path)
}

/// Removes a spooled file when dropped.
struct Spooled(Option<PathBuf>);
impl Drop for Spooled {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

impl Store {
    /// Loads every image of a docker-archive, an OCI layout directory or an OCI archive, from
    /// `input` (a path) or standard input when `None`.
    pub fn load(&self, input: Option<&Path>, progress: &Progress) -> Result<Loaded> {
        let lease = self.lease()?;
        let res = self.load_leased(input, &lease, progress);
        drop(lease);
        if res.is_err() {
            // Layers and blobs of the image that failed (those stored before the failing one)
            // were kept only by the lease: remove them, as `rmi` would.
            self.sweep_after_failure("load");
        }
        res
    }

    fn load_leased(
        &self,
        input: Option<&Path>,
        lease: &Lease<'_>,
        progress: &Progress,
    ) -> Result<Loaded> {
        let mut spooled = Spooled(None);
        let bundle = match input {
            Some(p) if p.is_dir() => Bundle::open_dir(p)?,
            Some(p) => {
                let mut f = File::open(p).ctx("open archive", p)?;
                let mut head = [0u8; 4];
                let n = f.read(&mut head).ctx("read archive", p)?;
                if Compression::sniff(&head[..n]) == Compression::None {
                    Bundle::open_tar(p)?
                } else {
                    f.rewind().ctx("read archive", p)?;
                    let s = spool(f, lease)?;
                    spooled.0 = Some(s.clone());
                    Bundle::open_tar(&s)?
                }
            }
            None => {
                let s = spool(io::stdin().lock(), lease)?;
                spooled.0 = Some(s.clone());
                Bundle::open_tar(&s)?
            }
        };
        if bundle.exists("oci-layout")
            || matches!(bundle, Bundle::Dir(..)) && bundle.open("oci-layout").is_ok()
        {
            self.load_oci(&bundle, lease, progress)
        } else if bundle.exists("manifest.json")
            || matches!(bundle, Bundle::Dir(..)) && bundle.open("manifest.json").is_ok()
        {
            self.load_docker(&bundle, lease, progress)
        } else {
            Err(Error::BadInput(format!(
                "{}: neither a docker-archive (no manifest.json) nor an OCI layout (no oci-layout)",
                bundle.display()
            )))
        }
    }

    fn load_docker(&self, b: &Bundle, lease: &Lease<'_>, progress: &Progress) -> Result<Loaded> {
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "RepoTags", default)]
            repo_tags: Option<Vec<String>>,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let data = b.read_small("manifest.json")?;
        let entries: Vec<Entry> = serde_json::from_slice(&data)
            .map_err(|e| Error::BadInput(format!("{}: manifest.json: {e}", b.display())))?;
        let mut out = Loaded::default();
        for (i, e) in entries.iter().enumerate() {
            let what = format!("{}: image {}", b.display(), i + 1);
            let config = b.read_small(&e.config)?;
            let mut tags = Vec::new();
            for t in e.repo_tags.iter().flatten() {
                tags.push(
                    Reference::parse_tagged(t)
                        .map_err(|m| Error::BadInput(format!("{what}: RepoTags: {m}")))?,
                );
            }
            let layers = e
                .layers
                .iter()
                .map(|l| {
                    let name = l.clone();
                    let size = b.size(l).ok();
                    LayerInput {
                        open: Box::new(move || b.reader(&name)),
                        expect: Expect::default(),
                        label: l.clone(),
                        size,
                    }
                })
                .collect();
            let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
            let id = self.add_image(
                NewImage {
                    manifest: None,
                    // OCI, not Docker schema 2: an OCI layout saved from this image must name
                    // an OCI manifest, or skopeo and podman do not find it there.
                    docker_manifest: false,
                    config,
                    layers,
                    tags,
                    repo_digests: Vec::new(),
                    label: what,
                },
                lease,
                progress,
            )?;
            out.images.push((id, names));
        }
        Ok(out)
    }

    fn load_oci(&self, b: &Bundle, lease: &Lease<'_>, progress: &Progress) -> Result<Loaded> {
        let layout: Value = serde_json::from_slice(&b.read_small("oci-layout")?)
            .map_err(|e| Error::BadInput(format!("{}: oci-layout: {e}", b.display())))?;
        if layout.get("imageLayoutVersion").and_then(Value::as_str) != Some("1.0.0") {
            return Err(Error::BadInput(format!(
                "{}: unsupported imageLayoutVersion",
                b.display()
            )));
        }
        let index = b.read_small("index.json")?;
        let entries = image::parse_index(&index, &format!("{}: index.json", b.display()))?;
        let mut out = Loaded::default();
        for (i, d) in entries.iter().enumerate() {
            let what = format!("{}: index.json entry {}", b.display(), i + 1);
            let name = d
                .annotations
                .get(IMAGE_NAME)
                .or_else(|| d.annotations.get(REF_NAME))
                .map(|n| {
                    Reference::parse_tagged(n).map_err(|m| Error::BadInput(format!("{what}: {m}")))
                })
                .transpose()?;
            let data = b.read_blob(d, &what)?;
            if image::is_index(Some(&d.media_type), &data) {
                let subs = image::parse_index(&data, &what)?;
                let host = image::pick_platform(&subs, None);
                for (j, sd) in subs.iter().enumerate() {
                    let swhat = format!("{what}, manifest {}", j + 1);
                    let sdata = b.read_blob(sd, &swhat)?;
                    let tags = if Some(j) == host {
                        name.clone().into_iter().collect()
                    } else {
                        Vec::new()
                    };
                    let id = self.load_oci_manifest(b, sd, sdata, tags, &swhat, lease, progress)?;
                    let names = if Some(j) == host {
                        name.iter().map(|n| n.to_string()).collect()
                    } else {
                        Vec::new()
                    };
                    out.images.push((id, names));
                }
            } else {
                let tags: Vec<Reference> = name.clone().into_iter().collect();
                let id = self.load_oci_manifest(b, d, data, tags, &what, lease, progress)?;
                out.images
                    .push((id, name.iter().map(|n| n.to_string()).collect()));
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn load_oci_manifest(
        &self,
        b: &Bundle,
        d: &Desc,
        data: Vec<u8>,
        tags: Vec<Reference>,
        what: &str,
        lease: &Lease<'_>,
        progress: &Progress,
    ) -> Result<Digest> {
        let m = image::parse_manifest(&data, what)?;
        let config = b.read_blob(&m.config, &format!("{what}: config"))?;
        let mt = if d.media_type.is_empty() {
            m.media_type.clone()
        } else {
            d.media_type.clone()
        };
        let layers = manifest_layers(&m, move |d: &Digest| b.reader(&blob_name(d)));
        self.add_image(
            NewImage {
                manifest: Some((data, mt)),
                docker_manifest: false,
                config,
                layers,
                tags,
                repo_digests: Vec::new(),
                label: what.to_string(),
            },
            lease,
            progress,
        )
    }
}

/// Output formats of `save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    DockerArchive,
    OciArchive,
    OciDir,
}

impl std::str::FromStr for SaveFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "docker-archive" => Ok(SaveFormat::DockerArchive),
            "oci-archive" => Ok(SaveFormat::OciArchive),
            "oci-dir" => Ok(SaveFormat::OciDir),
            other => Err(format!(
                "unknown format {other:?}: docker-archive, oci-archive or oci-dir"
            )),
        }
    }
}

/// One image to save, as the user named it.
struct SaveItem {
    id: Digest,
    manifest: Digest,
    /// `repo:tag` (familiar) when the user named a tag.
    name: Option<Reference>,
}

/// A tar written with sizes known up front.
struct TarOut<W: Write> {
    b: tar::Builder<W>,
}

impl<W: Write> TarOut<W> {
    fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let _ = h.set_path(path);
        h.set_cksum();
        h
    }
    fn file(&mut self, path: &str, data: impl Read, size: u64) -> io::Result<()> {
        let mut h = Self::header(path, size, 0o644, tar::EntryType::Regular);
        self.b.append_data(&mut h, path, data)
    }
    fn dir(&mut self, path: &str) -> io::Result<()> {
        let mut h = Self::header(path, 0, 0o755, tar::EntryType::Directory);
        self.b.append_data(&mut h, path, io::empty())
    }
}

/// Checks that a reader yields exactly `size` bytes with digest `want` (a layer decompressed on
/// the way out of the store); a mismatch fails the read so the output is never completed.
struct Verified<R> {
    inner: R,
    /// `None` once the whole layer was read and checked (later reads must only see the end).
    hasher: Option<HashingWriter<io::Sink>>,
    want: Digest,
    left: u64,
    checked: bool,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "layer {} is longer than recorded",
                self.want
            )));
        }
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(0); // checked already; n is 0 here since left is 0
        };
        hasher.write_all(&buf[..n])?;
        self.left -= n as u64;
        if (n == 0 || self.left == 0) && !self.checked {
            self.checked = true;
            let (got, _, _) = self.hasher.take().expect("present").finish();
            if self.left != 0 || got != self.want {
                return Err(io::Error::other(format!(
                    "layer {} does not decompress to its diff_id (run strata fsck)",
                    self.want
                )));
            }
        }
        Ok(n)
    }
}

impl Store {
    fn save_items(&self, names: &[String]) -> Result<Vec<SaveItem>> {
        names
            .iter()
            .map(|n| {
                let r = self.resolve(n)?;
                let name = r.tag.as_ref().map(|t| {
                    Reference::parse_tagged(&format!("{}:{}", t.repository, t.tag))
                        .expect("stored tags are valid")
                });
                Ok(SaveItem {
                    id: r.id,
                    manifest: r.manifest,
                    name,
                })
            })
            .collect()
    }

    /// Saves images to `output` (a file or directory; standard output when `None`, not for
    /// oci-dir). The output is built beside its destination and renamed into place at the end.
    pub fn save(
        &self,
        names: &[String],
        format: SaveFormat,
        output: Option<&Path>,
        progress: &Progress,
    ) -> Result<()> {
        if names.is_empty() {
            return Err(Error::Invalid("save needs at least one image".into()));
        }
        let items = self.save_items(names)?;
        match (format, output) {
            (SaveFormat::OciDir, None) => {
                Err(Error::Invalid("--format oci-dir needs -o DIR".into()))
            }
            (SaveFormat::OciDir, Some(dir)) => self.save_oci_dir(&items, dir),
            (_, Some(path)) => {
                let tmp = sibling_tmp(path);
                let guard = Spooled(Some(tmp.clone()));
                let f = File::create(&tmp).ctx("create output", &tmp)?;
                let mut w = io::BufWriter::with_capacity(1 << 20, f);
                self.save_tar(&items, format, &mut w, progress)?;
                let f = w
                    .into_inner()
                    .map_err(|e| Error::io("write output", &tmp, e.into_error()))?;
                f.sync_all().ctx("fsync output", &tmp)?;
                fs::rename(&tmp, path).ctx("move output into place", path)?;
                std::mem::forget(guard);
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fsync_dir(parent)?;
                }
                Ok(())
            }
            (_, None) => {
                let out = io::stdout();
                let mut w = io::BufWriter::with_capacity(1 << 20, out.lock());
                self.save_tar(&items, format, &mut w, progress)?;
                w.flush().ctx("write output", "<stdout>")
            }
        }
    }

    fn save_tar<W: Write>(
        &self,
        items: &[SaveItem],
        format: SaveFormat,
        w: W,
        progress: &Progress,
    ) -> Result<()> {
        let mut t = TarOut {
            b: tar::Builder::new(w),
        };
        let werr = |e: io::Error| Error::io("write archive", "<output>", e);
        match format {
            SaveFormat::DockerArchive => {
                let mut manifest = Vec::new();
                let mut written: std::collections::HashSet<String> = Default::default();
                let mut by_id: Vec<(Digest, Vec<String>, Vec<String>)> = Vec::new();
                for it in items {
                    let config_name = format!("{}.json", it.id.hex());
                    if written.insert(config_name.clone()) {
                        let cfg = self.read_blob(&it.id)?;
                        t.file(&config_name, &cfg[..], cfg.len() as u64)
                            .map_err(werr)?;
                    }
                    let mut layers = Vec::new();
                    for diff_id in self.index().image_layers(&it.id)? {
                        let name = format!("{}.tar", diff_id.hex());
                        if written.insert(name.clone()) {
                            let (reader, size) = self.layer_tar(&it.manifest, &it.id, &diff_id)?;
                            let bar = progress.bytes(diff_id.short(), Some(size));
                            t.file(&name, bar.wrap_read(reader), size).map_err(werr)?;
                            bar.finish_and_clear();
                        }
                        layers.push(name);
                    }
                    let tag = it.name.as_ref().map(|n| n.to_string());
                    match by_id.iter_mut().find(|(id, _, _)| *id == it.id) {
                        Some((_, tags, _)) => tags.extend(tag),
                        None => by_id.push((it.id.clone(), tag.into_iter().collect(), layers)),
                    }
                }
                for (id, tags, layers) in by_id {
                    manifest.push(json!({"Config": format!("{}.json", id.hex()), "RepoTags": if tags.is_empty() { Value::Null } else { json!(tags) }, "Layers": layers}));
                }
                let m = serde_json::to_vec(&manifest).expect("JSON values serialize");
                t.file("manifest.json", &m[..], m.len() as u64)
                    .map_err(werr)?;
            }
            SaveFormat::OciArchive => {
                let (index, blobs) = self.oci_index(items)?;
                t.file("oci-layout", OCI_LAYOUT.as_bytes(), OCI_LAYOUT.len() as u64)
                    .map_err(werr)?;
                t.file("index.json", &index[..], index.len() as u64)
                    .map_err(werr)?;
                t.dir("blobs").map_err(werr)?;
                t.dir("blobs/sha256").map_err(werr)?;
                for d in blobs {
                    let size = self.blob_size(&d)?;
                    let bar = progress.bytes(d.short(), Some(size));
                    t.file(&blob_name(&d), bar.wrap_read(self.open_blob(&d)?), size)
                        .map_err(werr)?;
                    bar.finish_and_clear();
                }
            }
            SaveFormat::OciDir => unreachable!("oci-dir is not a tar"),
        }
        t.b.finish().map_err(werr)?;
        Ok(())
    }

    fn blob_size(&self, d: &Digest) -> Result<u64> {
        let f = self.open_blob(d)?;
        Ok(f.metadata().ctx("stat blob", self.blob_path(d))?.len())
    }

    /// A reader of a layer's uncompressed tar (from its blob in `manifest`), and its size.
    fn layer_tar(
        &self,
        manifest: &Digest,
        image: &Digest,
        diff_id: &Digest,
    ) -> Result<(Box<dyn Read + '_>, u64)> {
        let layer = self
            .index()
            .layer(diff_id)?
            .ok_or_else(|| Error::NotFound(format!("layer {diff_id} is missing")))?;
        let m = image::parse_manifest(&self.read_blob(manifest)?, &format!("manifest of {image}"))?;
        let ids = self.index().image_layers(image)?;
        let pos = ids
            .iter()
            .position(|d| d == diff_id)
            .ok_or_else(|| Error::NotFound(format!("layer {diff_id} is not in image {image}")))?;
        let blob = &m.layers[pos];
        let c = Compression::from_media_type(&blob.media_type).map_err(Error::BadInput)?;
        // A pending layer's row has only an estimate of its size: measure it (a pass that also
        // checks the diff_id before anything is written).
        let size = if layer.is_pending() {
            self.tar_size_of_blob(diff_id, &blob.digest, c)?
        } else {
            layer.size
        };
        let f = BufReader::with_capacity(1 << 20, self.open_blob(&blob.digest)?);
        let dec = c
            .decoder(f)
            .ctx("decompress layer", self.blob_path(&blob.digest))?;
        Ok((
            Box::new(Verified {
                inner: dec,
                hasher: Some(HashingWriter::new(io::sink())),
                want: diff_id.clone(),
                left: size,
                checked: false,
            }),
            size,
        ))
    }

    /// The index.json of an OCI layout of `items`, and every blob it needs.
    fn oci_index(&self, items: &[SaveItem]) -> Result<(Vec<u8>, Vec<Digest>)> {
        let mut manifests = Vec::new();
        let mut blobs: Vec<Digest> = Vec::new();
        let add = |d: Digest, blobs: &mut Vec<Digest>| {
            if !blobs.contains(&d) {
                blobs.push(d);
            }
        };
        for it in items {
            let data = self.read_blob(&it.manifest)?;
            let m = image::parse_manifest(&data, &format!("manifest {}", it.manifest))?;
            let mut entry = json!({"mediaType": m.media_type, "digest": it.manifest.to_string(), "size": data.len()});
            if let Some(n) = &it.name {
                entry["annotations"] = json!({
                    REF_NAME: n.to_string(),
                    IMAGE_NAME: format!("{}:{}", n.repository(), n.tag_or_latest()),
                });
            }
            manifests.push(entry);
            add(it.manifest.clone(), &mut blobs);
            add(m.config.digest.clone(), &mut blobs);
            for l in m.layers {
                add(l.digest, &mut blobs);
            }
        }
        let index =
            json!({"schemaVersion": 2, "mediaType": image::OCI_INDEX, "manifests": manifests});
        Ok((
            serde_json::to_vec(&index).expect("JSON values serialize"),
            blobs,
        ))
    }

    fn save_oci_dir(&self, items: &[SaveItem], dir: &Path) -> Result<()> {
        if dir.exists()
            && fs::read_dir(dir)
                .ctx("read output directory", dir)?
                .next()
                .is_some()
        {
            return Err(Error::Invalid(format!(
                "{}: exists and is not empty",
                dir.display()
            )));
        }
        let (index, blobs) = self.oci_index(items)?;
        let tmp = sibling_tmp(dir);
        let _ = super::remove_any(&tmp);
        let guard = TmpTree(Some(tmp.clone()));
        fs::create_dir_all(tmp.join("blobs/sha256")).ctx("create output directory", &tmp)?;
        fs::write(tmp.join("oci-layout"), OCI_LAYOUT).ctx("write oci-layout", &tmp)?;
        fs::write(tmp.join("index.json"), &index).ctx("write index.json", &tmp)?;
        for d in blobs {
            let dest = tmp.join(blob_name(&d));
            fs::copy(self.blob_path(&d), &dest).ctx("copy blob", &dest)?;
        }
        if dir.exists() {
            fs::remove_dir(dir).ctx("replace empty output directory", dir)?;
        }
        fs::rename(&tmp, dir).ctx("move output into place", dir)?;
        std::mem::forget(guard);
        Ok(())
    }
}

const OCI_LAYOUT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";

/// A temporary name beside `path` (same filesystem, so the final rename is atomic).
fn sibling_tmp(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.strata-tmp-{}", std::process::id()))
}

struct TmpTree(Option<PathBuf>);
impl Drop for TmpTree {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = super::remove_any(p);
        }
    }
}

/// The familiar name of a tag row, for messages.
pub fn tag_name(repository: &str, tag: &str) -> String {
    format!("{}:{tag}", familiar(repository))
}
