//! The store's images: adding one (its layers, config and manifest, then the index rows in one
//! transaction), finding one by name, id or digest, tagging and removing.

use std::io::Read;

use super::digest::Digest;
use super::error::{Error, Result};
use super::image::{self, Manifest};
use super::index::{self, ImageRow, TagRow};
use super::layer::{Compression, Expect};
use super::reference::{Reference, familiar};
use super::{Lease, Store, now};
use crate::progress::Progress;

/// A layer to add: a way to open its blob, and what is known of it.
pub struct LayerInput<'a> {
    /// Opens the blob (compressed or not) for reading.
    pub open: Box<dyn FnMut() -> Result<Box<dyn Read + Send + 'a>> + 'a>,
    pub expect: Expect,
    /// Names the layer in messages (a digest or a file name).
    pub label: String,
    /// Its size, for the progress bar.
    pub size: Option<u64>,
}

/// An image to add.
pub struct NewImage<'a> {
    /// The manifest as received and its media type; `None` makes the store write one.
    pub manifest: Option<(Vec<u8>, String)>,
    /// With no manifest: write a Docker schema 2 one (docker-archive) rather than OCI.
    pub docker_manifest: bool,
    /// The config as received.
    pub config: Vec<u8>,
    pub layers: Vec<LayerInput<'a>>,
    /// Tags to point at the image.
    pub tags: Vec<Reference>,
    /// Repositories to record `repo@digest` for (pulls, pushes): the digest given, or this
    /// image's manifest digest when `None` (an index's digest when pulled through one).
    pub repo_digests: Vec<(String, Option<Digest>)>,
    /// Names the image in messages.
    pub label: String,
}

/// An image whose layers the store has, for [`Store::record_image`].
pub struct StoredImage<'a> {
    /// The manifest as received and its media type; `None` makes the store write one.
    pub manifest: Option<(Vec<u8>, String)>,
    /// With no manifest: write a Docker schema 2 one rather than OCI.
    pub docker_manifest: bool,
    /// The config as received.
    pub config: &'a [u8],
    /// Each layer's (media type, blob digest, blob size), bottom first.
    pub layers: &'a [(String, Digest, u64)],
    pub tags: &'a [Reference],
    pub repo_digests: &'a [(String, Option<Digest>)],
    /// Names the image in messages.
    pub label: &'a str,
}

/// What `rmi` did, in docker's words.
#[derive(Debug, Default)]
pub struct Removed {
    pub untagged: Vec<String>,
    pub deleted: Vec<Digest>,
}

/// How a user named an image, resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub id: Digest,
    /// The tag, if the user named one.
    pub tag: Option<TagRow>,
    /// The manifest to use for this name (the tag's, or the image's first).
    pub manifest: Digest,
}

impl Store {
    /// Adds an image: layers (extracted once each), config and manifest blobs, index rows.
    /// Returns the image id. Nothing is kept if any part fails verification.
    pub fn add_image(
        &self,
        img: NewImage<'_>,
        lease: &Lease<'_>,
        progress: &Progress,
    ) -> Result<Digest> {
        let what = img.label.clone();
        let config = image::parse_config(&img.config, &what)?;
        let config_digest = Digest::of(&img.config);
        let manifest: Option<Manifest> = match &img.manifest {
            Some((bytes, _)) => Some(manifest_of_config(bytes, &what, &config_digest)?),
            None => None,
        };
        let n = img.layers.len();
        if n != config.diff_ids.len() {
            return Err(Error::BadInput(format!(
                "{what}: {n} layers but the config lists {} diff_ids",
                config.diff_ids.len()
            )));
        }
        let mut descs = Vec::with_capacity(n);
        for (i, mut l) in img.layers.into_iter().enumerate() {
            l.expect.diff_id = Some(config.diff_ids[i].clone());
            if let Some(m) = &manifest {
                let d = &m.layers[i];
                l.expect.blob = Some(d.digest.clone());
                l.expect.size = Some(d.size);
                l.expect.media_type = Some(d.media_type.clone());
                l.expect.compression = Some(
                    Compression::from_media_type(&d.media_type)
                        .map_err(|e| Error::BadInput(format!("{what}: layer {i}: {e}")))?,
                );
            }
            let label = format!("{} ({}/{n})", l.label, i + 1);
            let bar = progress.bytes(&short_label(&l.label), l.size);
            let src = (l.open)()?;
            let got = self.ingest_layer(src, &l.expect, &label, lease, &bar)?;
            let mt = match (&manifest, img.docker_manifest) {
                (Some(m), _) => m.layers[i].media_type.clone(),
                (None, true) => got.compression.docker_media_type().to_string(),
                (None, false) => got.compression.oci_media_type().to_string(),
            };
            descs.push((mt, got.blob, got.blob_size));
        }
        self.record_image(
            StoredImage {
                manifest: img.manifest,
                docker_manifest: img.docker_manifest,
                config: &img.config,
                layers: &descs,
                tags: &img.tags,
                repo_digests: &img.repo_digests,
                label: &what,
            },
            lease,
        )
    }

    /// Adds an image whose layers the store has (extracted or pending, held by `lease`): its
    /// config and manifest blobs, then its index rows in one transaction. Returns the image id.
    pub fn record_image(&self, img: StoredImage<'_>, lease: &Lease<'_>) -> Result<Digest> {
        let what = img.label;
        let config = image::parse_config(img.config, what)?;
        let config_digest = Digest::of(img.config);
        let descs = img.layers;
        if descs.len() != config.diff_ids.len() {
            return Err(Error::BadInput(format!(
                "{what}: {} layers but the config lists {} diff_ids",
                descs.len(),
                config.diff_ids.len()
            )));
        }
        let manifest = match &img.manifest {
            Some((bytes, _)) => Some(manifest_of_config(bytes, what, &config_digest)?),
            None => None,
        };
        let config_mt = match (manifest, img.docker_manifest) {
            (Some(m), _) => m.config.media_type,
            (None, true) => image::DOCKER_CONFIG.to_string(),
            (None, false) => image::OCI_CONFIG.to_string(),
        };
        self.put_blob(
            img.config,
            Some(&config_digest),
            Some(&config_mt),
            &format!("{what}: config"),
            lease,
        )?;
        let (manifest_bytes, manifest_mt) = match img.manifest {
            Some(m) => m,
            None => {
                let bytes = image::make_manifest(
                    (&config_digest, img.config.len() as u64),
                    descs,
                    img.docker_manifest,
                );
                let mt = if img.docker_manifest {
                    image::DOCKER_MANIFEST
                } else {
                    image::OCI_MANIFEST
                };
                (bytes, mt.to_string())
            }
        };
        let manifest_digest = self.put_blob(
            &manifest_bytes,
            None,
            Some(&manifest_mt),
            &format!("{what}: manifest"),
            lease,
        )?;
        let mut blobs: Vec<Digest> = descs.iter().map(|(_, d, _)| d.clone()).collect();
        blobs.push(config_digest.clone());
        let row = ImageRow {
            id: config_digest.clone(),
            manifest_digest: manifest_digest.clone(),
            created: config.created.clone(),
            architecture: Some(config.architecture.clone()),
            os: Some(config.os.clone()),
            size: 0, // the sum of its layer rows' sizes, computed by insert_image
            added: now(),
        };
        let mut untagged = Vec::new();
        self.index().write(&format!("add image {what}"), |c| {
            index::insert_image(c, &row, &config.diff_ids)?;
            index::insert_manifest(c, &manifest_digest, &config_digest, &manifest_mt, &blobs)?;
            for t in img.tags {
                if let Some(old) = index_tag(c, t)?
                    && old.image_id != config_digest
                {
                    untagged.push(old.image_id);
                }
                index::set_tag(
                    c,
                    &TagRow {
                        repository: t.repository(),
                        tag: t.tag_or_latest().to_string(),
                        image_id: config_digest.clone(),
                        manifest_digest: Some(manifest_digest.clone()),
                    },
                )?;
            }
            for (r, d) in img.repo_digests {
                index::add_repo_digest(
                    c,
                    r,
                    d.as_ref().unwrap_or(&manifest_digest),
                    &config_digest,
                )?;
            }
            Ok(())
        })?;
        Ok(config_digest)
    }

    /// Finds an image by tag, id (full or a prefix of at least one hex digit, with or without
    /// `sha256:`) or `repo@digest`.
    pub fn resolve(&self, name: &str) -> Result<Resolved> {
        let no_such = || Error::NotFound(format!("No such image: {name}"));
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if !hex.is_empty()
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let ids = self.index().images_with_prefix(hex)?;
            match ids.len() {
                1 => {
                    let id = ids.into_iter().next().expect("one");
                    let row = self.index().image(&id)?.ok_or_else(no_such)?;
                    return Ok(Resolved {
                        id,
                        tag: None,
                        manifest: row.manifest_digest,
                    });
                }
                0 => {}
                _ if name.starts_with("sha256:") || hex.len() >= 12 => {
                    return Err(Error::Invalid(format!("{name}: ambiguous image id prefix")));
                }
                _ => {}
            }
            if name.starts_with("sha256:") {
                return Err(no_such());
            }
        }
        let r = Reference::parse(name).map_err(Error::Invalid)?;
        if let Some(d) = &r.digest {
            if let Some(id) = self.index().image_of_manifest(d)? {
                return Ok(Resolved {
                    id,
                    tag: None,
                    manifest: d.clone(),
                });
            }
            // The digest of an index the image was pulled through: its own manifest serves.
            let id = self
                .index()
                .image_of_repo_digest(&r.repository(), d)?
                .ok_or_else(no_such)?;
            let row = self.index().image(&id)?.ok_or_else(no_such)?;
            return Ok(Resolved {
                id,
                tag: None,
                manifest: row.manifest_digest,
            });
        }
        let t = self
            .index()
            .tag(&r.repository(), r.tag_or_latest())?
            .ok_or_else(no_such)?;
        let row = self.index().image(&t.image_id)?.ok_or_else(no_such)?;
        Ok(Resolved {
            id: t.image_id.clone(),
            manifest: t.manifest_digest.clone().unwrap_or(row.manifest_digest),
            tag: Some(t),
        })
    }

    /// Points `target` (a new name) at the image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let r = Reference::parse_tagged(target).map_err(Error::Invalid)?;
        if r.digest.is_some() {
            return Err(Error::Invalid(format!(
                "{target}: a tag cannot name a digest"
            )));
        }
        self.index().write("tag image", |c| {
            let src = self.resolve(source)?; // under the write lock, as in remove_image
            index::set_tag(
                c,
                &TagRow {
                    repository: r.repository(),
                    tag: r.tag_or_latest().to_string(),
                    image_id: src.id.clone(),
                    manifest_digest: Some(src.manifest.clone()),
                },
            )
        })
    }

    /// Removes an image name, and the image when nothing names it any more (docker's `rmi`).
    /// Without `force`, an image named by id that has several tags, or that a container uses,
    /// is refused.
    pub fn remove_image(&self, name: &str, force: bool) -> Result<Removed> {
        let mut out = Removed::default();
        let mut trash = Vec::new();
        self.index().write("remove image", |c| {
            // Resolved under the write lock: a tag moved by another process meanwhile must not
            // make this remove the image the tag left.
            let res = self.resolve(name)?;
            let tags = index::tags_of(c, &res.id)?;
            let users: i64 = c
                .query_row("SELECT count(*) FROM containers WHERE image_id = ?1", [res.id.to_string()], |r| r.get(0))
                .map_err(|e| Error::db("count containers", e))?;
            if let Some(t) = &res.tag
                && tags.len() > 1
            {
                index::delete_tag(c, &t.repository, &t.tag)?;
                out.untagged.push(format!("{}:{}", familiar(&t.repository), t.tag));
                return Ok(());
            }
            if users > 0 && !force {
                return Err(Error::Conflict(format!(
                    "conflict: unable to remove {name} (must force) - image {} is used by {users} container(s)",
                    res.id.short()
                )));
            }
            if res.tag.is_none() && tags.len() > 1 && !force {
                return Err(Error::Conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    res.id.short()
                )));
            }
            for t in &tags {
                out.untagged.push(format!("{}:{}", familiar(&t.repository), t.tag));
            }
            if users > 0 {
                // forced while containers use it: keep the image, drop its names (docker does so)
                for t in &tags {
                    index::delete_tag(c, &t.repository, &t.tag)?;
                }
                return Ok(());
            }
            index::delete_image(c, &res.id)?;
            out.deleted.push(res.id.clone());
            trash = self.sweep_unreferenced(c)?;
            Ok(())
        })?;
        self.empty_trash(&trash);
        Ok(out)
    }

    /// After an operation that failed (its lease ended): removes the blobs and layers that only
    /// its lease kept, as `rmi` would, so the store is as before.
    pub fn sweep_after_failure(&self, what: &str) {
        let mut trash = Vec::new();
        let swept = self
            .index()
            .write(&format!("clean up after a failed {what}"), |c| {
                trash = self.sweep_unreferenced(c)?;
                Ok(())
            });
        if let Err(e) = swept {
            log::warn!("cleaning up after a failed {what}: {e} (system prune will retry)");
        }
        self.empty_trash(&trash);
    }

    /// Inside a write transaction: removes the rows of blobs and layers nothing references any
    /// more and moves their files to the trash. Returns the trashed paths.
    pub fn sweep_unreferenced(&self, c: &rusqlite::Connection) -> Result<Vec<std::path::PathBuf>> {
        let mut trash = Vec::new();
        for d in index::unreferenced_layers(c)? {
            index::delete_layer(c, &d)?;
            trash.extend(self.to_trash(&self.layer_path(&d))?);
        }
        for d in index::unreferenced_blobs(c)? {
            index::delete_blob(c, &d)?;
            trash.extend(self.to_trash(&self.blob_path(&d))?);
        }
        Ok(trash)
    }
}

/// The layers of a manifest as inputs of [`Store::add_image`], each opened with `open` (from
/// its blob digest). Loads of OCI layouts and pulls share it: the manifest, as received, says
/// what every layer blob is, and `add_image` checks each against it.
pub fn manifest_layers<'a, F>(m: &Manifest, open: F) -> Vec<LayerInput<'a>>
where
    F: Fn(&Digest) -> Result<Box<dyn Read + Send + 'a>> + Clone + 'a,
{
    m.layers
        .iter()
        .map(|l| {
            let d = l.digest.clone();
            let open = open.clone();
            LayerInput {
                open: Box::new(move || open(&d)),
                expect: Expect::default(),
                label: l.digest.to_string(),
                size: Some(l.size),
            }
        })
        .collect()
}

fn index_tag(c: &rusqlite::Connection, r: &Reference) -> Result<Option<TagRow>> {
    index::tags_of_name(c, &r.repository(), r.tag_or_latest())
}

fn short_label(l: &str) -> String {
    match l.parse::<Digest>() {
        Ok(d) => d.short().to_string(),
        Err(_) => {
            let s: String = l.chars().rev().take(20).collect();
            s.chars().rev().collect()
        }
    }
}

/// Parses manifest `bytes` and checks that it names the config whose digest is `config`.
fn manifest_of_config(bytes: &[u8], what: &str, config: &Digest) -> Result<Manifest> {
    let m = image::parse_manifest(bytes, what)?;
    if m.config.digest != *config {
        return Err(Error::DigestMismatch {
            what: format!("{what}: config"),
            expected: m.config.digest.to_string(),
            actual: config.to_string(),
        });
    }
    Ok(m)
}
