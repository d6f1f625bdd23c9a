//! `push`: an image's blobs and manifest, exactly as the store keeps them (the same bytes
//! `save --format oci-*` writes), so the registry's digests are the store's.
//!
//! For each blob (layers, then the config): `HEAD` first, and nothing is sent if the registry
//! has it; else a cross-repository mount from a repository of the same registry that the
//! store knows has it (from its repo digests: images pulled from or pushed to there); else an
//! upload: one `PUT` for blobs up to the chunk size, `PATCH` chunks with `Content-Range` and
//! a closing `PUT` for larger ones. Then the manifest is `PUT` under the tag, and the
//! destination recorded as a repo digest of the image.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::client::{Client, Payload, add_query, resolve_url};
use super::config::source_endpoint;
use super::{Registries, RegistryError};
use crate::progress::Progress;
use crate::store::Store;
use crate::store::digest::Digest;
use crate::store::error::{Error, Result};
use crate::store::image;
use crate::store::index;
use crate::store::reference::Reference;

/// The default size of upload chunks (and the size above which blobs go in chunks).
pub const DEFAULT_CHUNK: u64 = 16 << 20;

/// Options of a push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs larger than this are uploaded in chunks of this size.
    pub chunk_size: u64,
    /// Blobs uploaded at once.
    pub jobs: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            chunk_size: DEFAULT_CHUNK,
            jobs: 3,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Where the image went.
    pub reference: Reference,
    /// The manifest digest (as the registry reports it, checked against the bytes sent).
    pub digest: Digest,
    /// The manifest's size.
    pub size: u64,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs the registry had.
    pub existed: usize,
}

/// How one blob got there.
enum Outcome {
    Existed,
    Mounted(String),
    Uploaded,
}

fn location(resp: &ureq::http::Response<ureq::Body>, url: &str) -> Result<String> {
    let loc = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            RegistryError::Protocol(format!(
                "{url}: the registry answered HTTP {} without a Location for the upload",
                resp.status().as_u16()
            ))
        })?;
    Ok(resolve_url(url, loc))
}

impl Store {
    /// Pushes the image `image` to `dest` (default: `image` itself, which must then be a
    /// name). `report` receives docker's status lines.
    pub fn push(
        &self,
        image: &str,
        dest: Option<&str>,
        opts: &PushOptions,
        regs: &Registries,
        progress: &Progress,
        report: &(dyn Fn(&str) + Sync),
    ) -> Result<Pushed> {
        let res = self.resolve(image)?;
        let dest_name = match dest {
            Some(d) => d.strip_prefix("docker://").unwrap_or(d).to_string(),
            None => match &res.tag {
                Some(_) => image.to_string(),
                None => {
                    return Err(Error::Invalid(format!(
                        "{image}: name a destination: strata push {image} REGISTRY/REPOSITORY[:TAG]"
                    )));
                }
            },
        };
        let r = Reference::parse_tagged(&dest_name).map_err(Error::Invalid)?;
        if r.digest.is_some() {
            return Err(Error::Invalid(format!(
                "{dest_name}: cannot push to a digest; give a tag"
            )));
        }
        let manifest = self.read_blob(&res.manifest)?;
        let m = image::parse_manifest(&manifest, &format!("manifest {}", res.manifest))?;
        let mt = self
            .index()
            .manifests_of(&res.id)?
            .into_iter()
            .find(|(d, _)| *d == res.manifest)
            .map(|(_, t)| t)
            .unwrap_or_else(|| m.media_type.clone());
        // Every blob the manifest names, with its file and where else it may be.
        let mut blobs = Vec::new();
        for d in m.layers.iter().chain(std::iter::once(&m.config)) {
            if !self.has_blob(&d.digest)? {
                return Err(Error::NotFound(format!(
                    "blob {} of image {} is missing from the store (run strata fsck)",
                    d.digest, res.id
                )));
            }
            let from: Vec<String> = self
                .index()
                .repositories_with_blob(&d.digest)?
                .into_iter()
                .filter_map(|repo| {
                    let (domain, path) = repo.split_once('/')?;
                    (domain == r.domain && path != r.path).then(|| path.to_string())
                })
                .collect();
            blobs.push((d.clone(), self.blob_path(&d.digest), from));
        }
        report(&format!(
            "The push refers to repository [{}]",
            r.repository()
        ));
        let client = regs.client(source_endpoint(&r.domain), &r.domain);
        let repo = r.path.as_str();
        let scopes = vec![format!("repository:{repo}:pull,push")];

        let n = blobs.len();
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Mutex<Vec<Option<Result<Outcome>>>> =
            Mutex::new((0..n).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..opts.jobs.clamp(1, n.max(1)) {
                s.spawn(|| {
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return;
                        }
                        let (d, path, from) = &blobs[i];
                        let bar = progress.bytes(d.digest.short(), Some(d.size));
                        let res = push_blob(&client, repo, &scopes, d, path, from, opts, &bar);
                        bar.finish_and_clear();
                        let short = d.digest.short();
                        match &res {
                            Ok(Outcome::Existed) => {
                                report(&format!("{short}: Layer already exists"))
                            }
                            Ok(Outcome::Mounted(f)) => {
                                report(&format!("{short}: Mounted from {f}"))
                            }
                            Ok(Outcome::Uploaded) => report(&format!("{short}: Pushed")),
                            Err(_) => failed.store(true, Ordering::Relaxed),
                        }
                        results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(res);
                    }
                });
            }
        });
        let (mut uploaded, mut mounted, mut existed) = (0, 0, 0);
        for res in results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .flatten()
        {
            match res? {
                Outcome::Existed => existed += 1,
                Outcome::Mounted(_) => mounted += 1,
                Outcome::Uploaded => uploaded += 1,
            }
        }

        let tag = r.tag_or_latest();
        let path = format!("/v2/{repo}/manifests/{tag}");
        let resp = client.send(
            "PUT",
            &path,
            &[("Content-Type", mt.clone())],
            Payload::Bytes(&manifest),
            &scopes,
            false,
        )?;
        let st = resp.status().as_u16();
        if !(200..300).contains(&st) {
            return Err(client.status_error(&format!("manifest {tag}"), "PUT", &path, resp));
        }
        let digest = Digest::of(&manifest);
        if let Some(h) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && h != digest.to_string()
        {
            return Err(Error::DigestMismatch {
                what: format!("manifest pushed to {r} (the registry's Docker-Content-Digest)"),
                expected: digest.to_string(),
                actual: h.to_string(),
            });
        }
        report(&format!("{tag}: digest: {digest} size: {}", manifest.len()));
        let repository = r.repository();
        self.index().write("record pushed repo digest", |c| {
            if index::image(c, &res.id)?.is_some() {
                index::add_repo_digest(c, &repository, &digest, &res.id)?;
            }
            Ok(())
        })?;
        Ok(Pushed {
            reference: r,
            digest,
            size: manifest.len() as u64,
            uploaded,
            mounted,
            existed,
        })
    }
}

/// One blob to `repo`: skipped if there, mounted if possible, uploaded otherwise.
#[allow(clippy::too_many_arguments)]
fn push_blob(
    client: &Client,
    repo: &str,
    scopes: &[String],
    d: &image::Desc,
    path: &std::path::Path,
    from: &[String],
    opts: &PushOptions,
    bar: &indicatif::ProgressBar,
) -> Result<Outcome> {
    if client.has_blob(repo, &d.digest, scopes)? {
        return Ok(Outcome::Existed);
    }
    let uploads = format!("/v2/{repo}/blobs/uploads/");
    let mut session = None;
    for f in from {
        let mut sc = scopes.to_vec();
        sc.push(format!("repository:{f}:pull"));
        let url = add_query(
            &add_query(&uploads, "mount", &d.digest.to_string()),
            "from",
            f,
        );
        let resp = client.send("POST", &url, &[], Payload::Bytes(&[]), &sc, false)?;
        match resp.status().as_u16() {
            201 => return Ok(Outcome::Mounted(f.clone())),
            202 => {
                // Not mounted (the registry does not have it there): it opened an upload.
                let base = client.base()?;
                session = Some(location(&resp, &format!("{base}{url}"))?);
                break;
            }
            _ => {
                log::info!("mount of {} from {f} refused; uploading", d.digest);
            }
        }
    }
    let mut loc = match session {
        Some(l) => l,
        None => {
            let resp = client.send("POST", &uploads, &[], Payload::Bytes(&[]), scopes, false)?;
            if resp.status().as_u16() != 202 {
                return Err(client.status_error(
                    &format!("upload of blob {}", d.digest),
                    "POST",
                    &uploads,
                    resp,
                ));
            }
            let base = client.base()?;
            location(&resp, &format!("{base}{uploads}"))?
        }
    };
    let octet = ("Content-Type", "application/octet-stream".to_string());
    let what = format!("upload of blob {}", d.digest);
    let final_payload = if d.size <= opts.chunk_size {
        Payload::File {
            path,
            offset: 0,
            len: d.size,
            bar: Some(bar),
        }
    } else {
        let mut off = 0u64;
        while off < d.size {
            let len = opts.chunk_size.min(d.size - off);
            let resp = client.send(
                "PATCH",
                &loc,
                &[
                    octet.clone(),
                    ("Content-Range", format!("{off}-{}", off + len - 1)),
                ],
                Payload::File {
                    path,
                    offset: off,
                    len,
                    bar: Some(bar),
                },
                scopes,
                false,
            )?;
            if resp.status().as_u16() != 202 {
                return Err(client.status_error(&what, "PATCH", &loc, resp));
            }
            loc = location(&resp, &loc)?;
            off += len;
        }
        Payload::Bytes(&[])
    };
    let put = add_query(&loc, "digest", &d.digest.to_string());
    let resp = client.send("PUT", &put, &[octet], final_payload, scopes, false)?;
    if resp.status().as_u16() != 201 {
        return Err(client.status_error(&what, "PUT", &put, resp));
    }
    if let Some(h) = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        && h != d.digest.to_string()
    {
        return Err(Error::DigestMismatch {
            what,
            expected: d.digest.to_string(),
            actual: h.to_string(),
        });
    }
    Ok(Outcome::Uploaded)
}
