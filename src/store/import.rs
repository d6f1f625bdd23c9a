//! `import`: a rootfs tarball (plain, gzip or zstd; a file or standard input) becomes a
//! one-layer image, with an OCI config and manifest written by strata. The tarball's bytes are
//! kept as the layer blob, so its digest is the file's own.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::Store;
use super::digest::Digest;
use super::error::{Error, IoContext, Result};
use super::image::{self, host_platform, rfc3339_now};
use super::images::{LayerInput, NewImage};
use super::layer::Expect;
use super::reference::Reference;
use crate::progress::Progress;

/// Options of `strata import`.
#[derive(Debug, Default, Clone)]
pub struct ImportOptions {
    /// Dockerfile-like instructions applied to the config (`CMD`, `ENTRYPOINT`, `ENV`,
    /// `WORKDIR`, `USER`, `LABEL`, `EXPOSE`, `VOLUME`, `STOPSIGNAL`).
    pub changes: Vec<String>,
    /// The history comment.
    pub message: Option<String>,
}

/// Applies one `--change` instruction to a config's `config` object.
pub fn apply_change(cfg: &mut Map<String, Value>, change: &str) -> Result<()> {
    let change = change.trim();
    let (instr, arg) = change
        .split_once(char::is_whitespace)
        .unwrap_or((change, ""));
    let arg = arg.trim();
    let bad = |why: &str| Error::Invalid(format!("--change {change:?}: {why}"));
    if arg.is_empty() {
        return Err(bad("missing argument"));
    }
    // JSON array form, or shell form run by /bin/sh -c.
    let argv = || -> Result<Value> {
        if arg.starts_with('[') {
            let v: Vec<String> =
                serde_json::from_str(arg).map_err(|_| bad("not a JSON array of strings"))?;
            Ok(json!(v))
        } else {
            Ok(json!(["/bin/sh", "-c", arg]))
        }
    };
    match instr.to_ascii_uppercase().as_str() {
        "CMD" => {
            cfg.insert("Cmd".into(), argv()?);
        }
        "ENTRYPOINT" => {
            cfg.insert("Entrypoint".into(), argv()?);
        }
        "WORKDIR" => {
            cfg.insert("WorkingDir".into(), json!(arg));
        }
        "USER" => {
            cfg.insert("User".into(), json!(arg));
        }
        "STOPSIGNAL" => {
            cfg.insert("StopSignal".into(), json!(arg));
        }
        "ENV" => {
            let (k, v) = arg
                .split_once('=')
                .or_else(|| arg.split_once(char::is_whitespace))
                .ok_or_else(|| bad("expected KEY=VALUE"))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(bad("empty variable name"));
            }
            let env = cfg.entry("Env").or_insert_with(|| json!([]));
            let list = env.as_array_mut().ok_or_else(|| bad("Env is not a list"))?;
            list.retain(|e| {
                e.as_str()
                    .and_then(|s| s.split_once('='))
                    .is_none_or(|(ek, _)| ek != k)
            });
            list.push(json!(format!("{k}={}", v.trim())));
        }
        "LABEL" => {
            let (k, v) = arg
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE"))?;
            let labels = cfg.entry("Labels").or_insert_with(|| json!({}));
            labels
                .as_object_mut()
                .ok_or_else(|| bad("Labels is not an object"))?
                .insert(
                    k.trim().trim_matches('"').to_string(),
                    json!(v.trim().trim_matches('"')),
                );
        }
        "EXPOSE" => {
            let ports = cfg.entry("ExposedPorts").or_insert_with(|| json!({}));
            let obj = ports
                .as_object_mut()
                .ok_or_else(|| bad("ExposedPorts is not an object"))?;
            for p in arg.split_whitespace() {
                let p = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                };
                obj.insert(p, json!({}));
            }
        }
        "VOLUME" => {
            let vols = cfg.entry("Volumes").or_insert_with(|| json!({}));
            let obj = vols
                .as_object_mut()
                .ok_or_else(|| bad("Volumes is not an object"))?;
            let list: Vec<String> = if arg.starts_with('[') {
                serde_json::from_str(arg).map_err(|_| bad("not a JSON array of strings"))?
            } else {
                arg.split_whitespace().map(str::to_string).collect()
            };
            for v in list {
                obj.insert(v, json!({}));
            }
        }
        other => {
            return Err(bad(&format!(
                "unsupported instruction {other} (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL)"
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Imports a rootfs tarball from `source` (a path, or `-` for standard input) as a new image,
    /// tagged `name` if given. Returns the image id.
    pub fn import(
        &self,
        source: &str,
        name: Option<&str>,
        opts: &ImportOptions,
        progress: &Progress,
    ) -> Result<Digest> {
        let tag = name
            .map(|n| Reference::parse_tagged(n).map_err(Error::Invalid))
            .transpose()?;
        if tag.as_ref().is_some_and(|t| t.digest.is_some()) {
            return Err(Error::Invalid(
                "an imported image cannot be named by digest".into(),
            ));
        }
        let mut cfg = Map::new();
        for c in &opts.changes {
            apply_change(&mut cfg, c)?;
        }
        let (reader, size): (Box<dyn Read + Send>, Option<u64>) = if source == "-" {
            (Box::new(std::io::stdin()), None)
        } else {
            let p = Path::new(source);
            let f = File::open(p).ctx("open tarball", p)?;
            let meta = f.metadata().ctx("stat tarball", p)?;
            if meta.is_dir() {
                return Err(Error::Invalid(format!(
                    "{source}: is a directory; import takes a tarball"
                )));
            }
            (Box::new(f), Some(meta.len()))
        };
        let lease = self.lease()?;
        let bar = progress.bytes("importing", size);
        let label = if source == "-" {
            "<stdin>".to_string()
        } else {
            source.to_string()
        };
        let got = self.ingest_layer(reader, &Expect::default(), &label, &lease, &bar)?;
        super::pause::pause_point(super::pause::IMPORT_LAYER_STORED);

        let (os, arch) = host_platform();
        let created = rfc3339_now();
        let mut history =
            json!({"created": created, "created_by": format!("strata import {label}")});
        history["comment"] = json!(
            opts.message
                .clone()
                .unwrap_or_else(|| "imported from tarball".into())
        );
        let config = json!({
            "created": created,
            "architecture": arch,
            "os": os,
            "config": Value::Object(cfg),
            "rootfs": {"type": "layers", "diff_ids": [got.diff_id.to_string()]},
            "history": [history],
        });
        let config = serde_json::to_vec(&config).expect("JSON values serialize");
        let blob = got.blob.clone();
        let blob_size = got.blob_size;
        let compression = got.compression;
        let store = self;
        let img = NewImage {
            manifest: Some((
                image::make_manifest(
                    (&Digest::of(&config), config.len() as u64),
                    &[(
                        compression.oci_media_type().to_string(),
                        blob.clone(),
                        blob_size,
                    )],
                    false,
                ),
                image::OCI_MANIFEST.to_string(),
            )),
            docker_manifest: false,
            config,
            layers: vec![LayerInput {
                open: Box::new(move || {
                    Ok(Box::new(store.open_blob(&blob)?) as Box<dyn Read + Send>)
                }),
                expect: Expect::default(),
                label: got.blob.to_string(),
                size: Some(blob_size),
            }],
            tags: tag.into_iter().collect(),
            repo_digests: Vec::new(),
            label,
        };
        self.add_image(img, &lease, &Progress::hidden())
    }
}
