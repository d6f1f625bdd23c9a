//! `pull`: a reference → its manifest (through an index for this platform, or `--platform`) →
//! config → layer blobs, downloaded a few at a time straight into the store (each hashed as it
//! streams and checked against its digest before it counts), then the image is added with
//! [`Store::record_image`]. Layers are not extracted here: each is recorded as pending with the
//! diff_id the config names, and extracted (and its diff_id checked) on first use, by
//! [`Store::ensure_layers`] ([`crate::store::pending`]); with [`PullOptions::extract`] the pull
//! extracts them itself before it adds the image, as docker does.
//!
//! Layers the store has (extracted or pending) are not downloaded. Everything runs under one
//! lease, so a concurrent prune cannot take what the pull has stored so far; when the pull
//! fails, what only the lease kept is removed and the store is as before. Mirrors are tried in order and the registry
//! last; any failure of a mirror (down, no such image, bad data) moves on to the next.

use std::io::{self, Read};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::client::{BlobReader, Client};
use super::{Registries, RegistryError};
use crate::progress::Progress;
use crate::store::digest::Digest;
use crate::store::error::{Error, Result};
use crate::store::image::{self, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::store::images::StoredImage;
use crate::store::layer::Compression;
use crate::store::pending::LayerBlob;
use crate::store::reference::Reference;
use crate::store::{Lease, Store};

/// A platform `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "invalid platform {s:?}: expected os/arch[/variant], e.g. linux/arm64"
            )),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Options of a pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to pick from an index (default: this machine's).
    pub platform: Option<Platform>,
    /// Layers downloaded at once.
    pub jobs: usize,
    /// Extract every layer before the image is added (docker's behaviour), rather than on its
    /// first use.
    pub extract: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            jobs: 3,
            extract: false,
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference, normalized (with `latest` if it had neither tag nor digest).
    pub reference: Reference,
    /// The digest the reference resolved to (of the index, for a multi-platform image).
    pub digest: Digest,
    /// The manifest digest of the image pulled.
    pub manifest: Digest,
    /// The image id.
    pub id: Digest,
    /// Whether the image or its tag changed (docker's "Downloaded newer image").
    pub updated: bool,
    /// Layers downloaded (the others were in the store).
    pub downloaded: usize,
    /// The endpoint that served the pull.
    pub endpoint: String,
}

/// How the registry described a manifest document.
enum Kind {
    Index,
    Manifest(String),
}

/// What the document is: from `Content-Type`, else its `mediaType`, else its shape.
fn classify(content_type: Option<&str>, data: &[u8], what: &str) -> Result<Kind> {
    let v: Option<serde_json::Value> = serde_json::from_slice(data).ok();
    let field = v
        .as_ref()
        .and_then(|v| v.get("mediaType"))
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let generic = |t: &str| {
        matches!(
            t,
            "application/json" | "text/plain" | "application/octet-stream"
        )
    };
    let declared = content_type
        .filter(|t| !generic(t))
        .map(str::to_string)
        .or(field);
    match declared.as_deref() {
        Some(OCI_INDEX) | Some(DOCKER_LIST) => Ok(Kind::Index),
        Some(t @ (OCI_MANIFEST | DOCKER_MANIFEST)) => Ok(Kind::Manifest(t.to_string())),
        Some(t) if t.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            Err(RegistryError::Protocol(format!(
                "{what}: Docker schema 1 manifests ({t}) are not supported"
            ))
            .into())
        }
        Some(t) => Err(RegistryError::Protocol(format!(
            "{what}: unsupported manifest media type {t:?}"
        ))
        .into()),
        None => match v {
            Some(v) if v.get("manifests").is_some_and(|m| m.is_array()) => Ok(Kind::Index),
            Some(v) if v.get("config").is_some() && v.get("layers").is_some() => {
                Ok(Kind::Manifest(OCI_MANIFEST.to_string()))
            }
            _ => Err(RegistryError::Protocol(format!(
                "{what}: neither an image manifest nor an index (no media type)"
            ))
            .into()),
        },
    }
}

/// Whether a failure of a mirror lets the pull move on to the next endpoint (anything the
/// registry did or sent, not a failure of the store itself).
fn falls_back(e: &Error) -> bool {
    matches!(
        e,
        Error::Registry(_) | Error::DigestMismatch { .. } | Error::BadInput(_) | Error::NotFound(_)
    )
}

/// A blob reader opened on first read: a layer the store has is never requested.
struct Lazy<'c> {
    client: &'c Client,
    repo: &'c str,
    digest: &'c Digest,
    size: u64,
    scopes: &'c [String],
    inner: Option<BlobReader<'c>>,
}

impl Read for Lazy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inner.is_none() {
            let r = self
                .client
                .blob_reader(self.repo, self.digest, Some(self.size), self.scopes)
                .map_err(io::Error::other)?;
            self.inner = Some(r);
        }
        self.inner.as_mut().expect("opened").read(buf)
    }
}

impl Store {
    /// Pulls `name` (`NAME[:TAG|@DIGEST]`, docker's reference syntax). `report` receives
    /// docker's status lines (`<tag>: Pulling from <repo>`, `<layer>: Pull complete` or
    /// `Already exists`).
    pub fn pull(
        &self,
        name: &str,
        opts: &PullOptions,
        regs: &Registries,
        progress: &Progress,
        report: &(dyn Fn(&str) + Sync),
    ) -> Result<Pulled> {
        let name = name.strip_prefix("docker://").unwrap_or(name);
        let r = Reference::parse_tagged(name).map_err(Error::Invalid)?;
        let lease = self.lease()?;
        let res = self.pull_leased(&r, opts, regs, &lease, progress, report);
        drop(lease);
        if res.is_err() {
            self.sweep_after_failure("pull");
        }
        res
    }

    fn pull_leased(
        &self,
        r: &Reference,
        opts: &PullOptions,
        regs: &Registries,
        lease: &Lease<'_>,
        progress: &Progress,
        report: &(dyn Fn(&str) + Sync),
    ) -> Result<Pulled> {
        let shown = match &r.digest {
            Some(d) => d.to_string(),
            None => r.tag_or_latest().to_string(),
        };
        report(&format!("{shown}: Pulling from {}", r.path));
        let endpoints = regs.config().pull_endpoints(&r.domain);
        let mut skipped = Vec::new();
        for ep in endpoints {
            let client = regs.client(ep.clone(), &r.domain);
            match self.pull_from(&client, r, opts, lease, progress, report) {
                Ok(p) => return Ok(p),
                Err(e) if ep.mirror && falls_back(&e) => {
                    log::warn!("mirror {} skipped: {e}", ep.display());
                    skipped.push(format!("{}: {e}", ep.display()));
                }
                Err(e) => {
                    if !skipped.is_empty() {
                        log::warn!("mirrors skipped before: {}", skipped.join("; "));
                    }
                    return Err(e);
                }
            }
        }
        Err(RegistryError::Protocol(format!("{r}: no endpoint to pull from")).into())
    }

    fn pull_from(
        &self,
        client: &Client,
        r: &Reference,
        opts: &PullOptions,
        lease: &Lease<'_>,
        progress: &Progress,
        report: &(dyn Fn(&str) + Sync),
    ) -> Result<Pulled> {
        let repo = r.path.as_str();
        let scopes = vec![format!("repository:{repo}:pull")];
        let what = format!("manifest for {r}");
        let wanted = match &r.digest {
            Some(d) => d.to_string(),
            None => r.tag_or_latest().to_string(),
        };
        let (data, ct, top) = client.get_manifest(repo, &wanted, &scopes, &what)?;
        if let Some(d) = &r.digest
            && *d != top
        {
            return Err(Error::DigestMismatch {
                what: what.clone(),
                expected: d.to_string(),
                actual: top.to_string(),
            });
        }
        let (mdata, mt, mdigest) = match classify(ct.as_deref(), &data, &what)? {
            Kind::Manifest(mt) => (data, mt, top.clone()),
            Kind::Index => {
                let entries = image::parse_index(&data, &what)?;
                let (host_os, host_arch) = image::host_platform();
                let (os, arch, variant) = match &opts.platform {
                    Some(p) => (p.os.as_str(), p.arch.as_str(), p.variant.as_deref()),
                    None => (host_os, host_arch, None),
                };
                let i = image::pick_platform_variant(&entries, os, arch, variant).ok_or_else(
                    || {
                        let have: Vec<String> = entries
                            .iter()
                            .filter_map(|e| e.platform.as_ref())
                            .map(|(o, a, v)| match v {
                                Some(v) => format!("{o}/{a}/{v}"),
                                None => format!("{o}/{a}"),
                            })
                            .collect();
                        RegistryError::Protocol(format!(
                            "{r}: no matching manifest for {os}/{arch}{} in the manifest list entries (it has {})",
                            variant.map(|v| format!("/{v}")).unwrap_or_default(),
                            if have.is_empty() { "none".to_string() } else { have.join(", ") }
                        ))
                    },
                )?;
                let d = &entries[i];
                let cwhat = format!("{what} ({os}/{arch}: {})", d.digest);
                let (cdata, cct, cdigest) =
                    client.get_manifest(repo, &d.digest.to_string(), &scopes, &cwhat)?;
                if cdigest != d.digest {
                    return Err(Error::DigestMismatch {
                        what: cwhat,
                        expected: d.digest.to_string(),
                        actual: cdigest.to_string(),
                    });
                }
                match classify(cct.as_deref(), &cdata, &cwhat)? {
                    Kind::Manifest(mt) => (cdata, mt, cdigest),
                    Kind::Index => {
                        return Err(RegistryError::Protocol(format!(
                            "{cwhat}: an index inside an index is not supported"
                        ))
                        .into());
                    }
                }
            }
        };
        let m = image::parse_manifest(&mdata, &what)?;
        for (i, l) in m.layers.iter().enumerate() {
            Compression::from_media_type(&l.media_type).map_err(|e| {
                RegistryError::Protocol(format!("{what}: layer {} ({}): {e}", i + 1, l.digest))
            })?;
        }
        let config = if self.has_blob(&m.config.digest)? {
            self.read_blob(&m.config.digest)?
        } else {
            client.get_small_blob(repo, &m.config, &scopes, &format!("{r}: config"))?
        };
        let cfg = image::parse_config(&config, &format!("{r}: config"))?;
        if cfg.diff_ids.len() != m.layers.len() {
            return Err(Error::BadInput(format!(
                "{r}: the manifest has {} layers but the config lists {} diff_ids",
                m.layers.len(),
                cfg.diff_ids.len()
            )));
        }
        let id = Digest::of(&config);
        let tagged = r.digest.is_none();
        let before = if tagged {
            self.index().tag(&r.repository(), r.tag_or_latest())?
        } else {
            None
        };
        let had_image = self.index().image(&id)?.is_some();

        let downloaded = self.pull_layers(
            client,
            repo,
            &scopes,
            &m,
            &cfg.diff_ids,
            opts,
            lease,
            progress,
            report,
        )?;

        if opts.extract {
            self.ensure_layers_leased(&cfg.diff_ids, lease)?;
        }
        let descs: Vec<(String, Digest, u64)> = m
            .layers
            .iter()
            .map(|l| (l.media_type.clone(), l.digest.clone(), l.size))
            .collect();
        let tags = if tagged { vec![r.clone()] } else { Vec::new() };
        let id = self.record_image(
            StoredImage {
                manifest: Some((mdata, mt)),
                docker_manifest: false,
                config: &config,
                layers: &descs,
                tags: &tags,
                repo_digests: &[(r.repository(), Some(top.clone()))],
                label: &r.to_string(),
            },
            lease,
        )?;
        let updated = match &before {
            Some(t) => t.image_id != id || t.manifest_digest.as_ref() != Some(&mdigest),
            None => !had_image || tagged,
        };
        Ok(Pulled {
            reference: r.clone(),
            digest: top,
            manifest: mdigest,
            id,
            updated,
            downloaded,
            endpoint: client.endpoint().display(),
        })
    }

    /// Downloads the layer blobs the store lacks, `opts.jobs` at a time, each into its own
    /// connection to the index (the store's handle is not shared across threads) under the
    /// pull's lease, and records the layers the store lacks as pending. Returns how many blobs
    /// were downloaded.
    #[allow(clippy::too_many_arguments)]
    fn pull_layers(
        &self,
        client: &Client,
        repo: &str,
        scopes: &[String],
        m: &image::Manifest,
        diff_ids: &[Digest],
        opts: &PullOptions,
        lease: &Lease<'_>,
        progress: &Progress,
        report: &(dyn Fn(&str) + Sync),
    ) -> Result<usize> {
        let n = m.layers.len();
        if n == 0 {
            return Ok(0);
        }
        let compressions = m
            .layers
            .iter()
            .map(|l| {
                Compression::from_media_type(&l.media_type)
                    .map_err(|e| Error::BadInput(format!("layer {}: {e}", l.digest)))
            })
            .collect::<Result<Vec<_>>>()?;
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let downloaded = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<()>>>> = Mutex::new((0..n).map(|_| None).collect());
        let jobs = opts.jobs.clamp(1, n);
        let root = self.root().to_path_buf();
        let lease_id = lease.id().to_string();
        std::thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| {
                    let store = match Store::open(&root) {
                        Ok(st) => st,
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i < n {
                                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(Err(e));
                            }
                            return;
                        }
                    };
                    let wl = store.borrow_lease(&lease_id);
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return;
                        }
                        let l = &m.layers[i];
                        let src = Lazy {
                            client,
                            repo,
                            digest: &l.digest,
                            size: l.size,
                            scopes,
                            inner: None,
                        };
                        let blob = LayerBlob {
                            blob: &l.digest,
                            size: l.size,
                            media_type: &l.media_type,
                            compression: compressions[i],
                            diff_id: &diff_ids[i],
                        };
                        let bar = progress.bytes(l.digest.short(), Some(l.size));
                        let res =
                            store.store_layer_blob(src, &blob, &l.digest.to_string(), &wl, &bar);
                        bar.finish_and_clear();
                        match &res {
                            Ok(true) => {
                                downloaded.fetch_add(1, Ordering::Relaxed);
                                report(&format!("{}: Pull complete", l.digest.short()));
                            }
                            Ok(false) => report(&format!("{}: Already exists", l.digest.short())),
                            Err(_) => failed.store(true, Ordering::Relaxed),
                        }
                        results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(res.map(drop));
                    }
                });
            }
        });
        let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
        for r in results.into_iter().flatten() {
            r?;
        }
        Ok(downloaded.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn classifies() {
        assert!(matches!(
            classify(Some(OCI_INDEX), b"{}", "x").unwrap(),
            Kind::Index
        ));
        assert!(matches!(
            classify(
                Some("application/json"),
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#,
                "x"
            )
            .unwrap(),
            Kind::Manifest(_)
        ));
        assert!(matches!(
            classify(None, br#"{"schemaVersion":2,"manifests":[]}"#, "x").unwrap(),
            Kind::Index
        ));
        let e = classify(Some("application/vnd.example.thing+json"), b"{}", "m")
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("unsupported manifest media type"),
            "{e}"
        );
        assert!(
            classify(
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                b"{}",
                "m"
            )
            .is_err()
        );
    }
}
