//! Garbage collection and checks: `system prune` (unused images, stale leases of killed
//! processes, and orphans a crash left: blob files and layer directories no row names,
//! temporary files of dead leases, the trash) and `fsck` (re-hashes every blob, rebuilds every
//! extracted layer's tree index from disk and compares, decompresses every pending layer's blob
//! to check its diff_id, checks every reference between rows and files).

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use super::Store;
use super::digest::{Digest, Hasher};
use super::error::{Error, IoContext, Result};
use super::image;
use super::index::{self, LayerState};
use super::tree::LayerTree;
use crate::sys;

/// What `system prune` removed.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub images: Vec<Digest>,
    pub stale_leases: usize,
    pub orphans: Vec<PathBuf>,
    /// Bytes freed (blob files and layer content).
    pub reclaimed: u64,
}

fn lease_alive(l: &index::LeaseRow) -> bool {
    sys::process_start_time(l.pid) == Some(l.pid_start)
}

fn dir_names(p: &std::path::Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in fs::read_dir(p).ctx("read directory", p)? {
        let e = e.ctx("read directory", p)?;
        v.push(e.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

fn du(p: &std::path::Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| du(&e.path())).sum::<u64>())
        .unwrap_or(0)
}

impl Store {
    /// Removes unused images (dangling ones; every image no container uses with `all`), then
    /// everything nothing references and every orphan a crash left.
    pub fn prune(&self, all: bool) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let mut trash = Vec::new();
        self.index().write("prune", |c| {
            let leases = index::leases(c)?;
            let mut live = HashSet::new();
            for l in &leases {
                if lease_alive(l) {
                    live.insert(l.id.clone());
                } else {
                    index::delete_lease(c, &l.id)?;
                    report.stale_leases += 1;
                }
            }
            let candidates: Vec<Digest> = {
                let sql = if all {
                    "SELECT id FROM images i WHERE NOT EXISTS (SELECT 1 FROM containers c WHERE c.image_id = i.id)"
                } else {
                    "SELECT id FROM images i WHERE NOT EXISTS (SELECT 1 FROM containers c WHERE c.image_id = i.id)
                       AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.image_id = i.id)"
                };
                let mut st = c.prepare(sql).map_err(|e| Error::db("find unused images", e))?;
                let rows = st
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(|e| Error::db("find unused images", e))?;
                let mut v = Vec::new();
                for r in rows {
                    let s = r.map_err(|e| Error::db("find unused images", e))?;
                    v.push(s.parse().map_err(|e: super::digest::BadDigest| Error::BadInput(e.to_string()))?);
                }
                v
            };
            for id in candidates {
                index::delete_image(c, &id)?;
                report.images.push(id);
            }
            for p in self.sweep_unreferenced(c)? {
                report.reclaimed += du(&p);
                trash.push(p);
            }
            // Orphans: files no row names.
            let blobs_dir = self.root().join("blobs/sha256");
            for name in dir_names(&blobs_dir)? {
                let known = match Digest::from_hex(&name) {
                    Ok(d) => index::blob(c, &d)?.is_some(),
                    Err(_) => false,
                };
                if !known {
                    let p = blobs_dir.join(&name);
                    report.reclaimed += du(&p);
                    report.orphans.push(p.clone());
                    trash.extend(self.to_trash(&p)?);
                }
            }
            let layers_dir = self.root().join("layers");
            for name in dir_names(&layers_dir)? {
                // A pending layer has no directory yet: one there is what an interrupted
                // extraction left.
                let known = match Digest::from_hex(&name) {
                    Ok(d) => index::layer(c, &d)?.is_some_and(|l| !l.is_pending()),
                    Err(_) => false,
                };
                if !known {
                    let p = layers_dir.join(&name);
                    report.reclaimed += du(&p);
                    report.orphans.push(p.clone());
                    trash.extend(self.to_trash(&p)?);
                }
            }
            for name in dir_names(&self.tmp_dir())? {
                if !live.iter().any(|l| name.starts_with(&format!("{l}-"))) {
                    let p = self.tmp_dir().join(&name);
                    report.orphans.push(p.clone());
                    trash.extend(self.to_trash(&p)?);
                }
            }
            Ok(())
        })?;
        self.empty_trash(&trash);
        // Whatever an interrupted removal left in the trash.
        let trash_dir = self.root().join("trash");
        for name in dir_names(&trash_dir)? {
            let _ = super::remove_any(&trash_dir.join(name));
        }
        Ok(report)
    }

    /// Checks the whole store; returns one line per problem (empty when all is well).
    pub fn fsck(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let idx = self.index();
        let blobs = idx.blobs()?;
        let known_blobs: HashSet<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
        for b in &blobs {
            let p = self.blob_path(&b.digest);
            match fs::File::open(&p) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    problems.push(format!("blob {}: file missing", b.digest))
                }
                Err(e) => problems.push(format!("blob {}: cannot open: {e}", b.digest)),
                Ok(mut f) => {
                    let mut h = Hasher::default();
                    let mut buf = vec![0u8; 1 << 20];
                    let res: io::Result<()> = (|| loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        h.update(&buf[..n]);
                    })();
                    if let Err(e) = res {
                        problems.push(format!("blob {}: read error: {e}", b.digest));
                        continue;
                    }
                    let size = h.len();
                    let got = h.finish();
                    if size != b.size {
                        problems.push(format!(
                            "blob {}: size {size}, the index says {}",
                            b.digest, b.size
                        ));
                    }
                    if got != b.digest {
                        problems.push(format!("blob {}: content hashes to {got}", b.digest));
                    }
                }
            }
        }
        let layers = idx.layers()?;
        let known_layers: HashSet<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        for l in &layers {
            let tree_digest = match &l.state {
                LayerState::Extracted { tree_digest, .. } => tree_digest,
                LayerState::Pending { blob, compression } => {
                    // No directory until its first use; its blob must be there, and decompress
                    // to the diff_id (as the extraction will check).
                    if self.layer_path(&l.diff_id).exists() {
                        problems.push(format!(
                            "layer {}: pending, but layers/{} exists (left by an interrupted extraction; strata system prune removes it)",
                            l.diff_id,
                            l.diff_id.hex()
                        ));
                    }
                    if !known_blobs.contains(blob) {
                        problems.push(format!(
                            "layer {}: pending, and its blob {blob} is missing",
                            l.diff_id
                        ));
                    } else if let Err(e) = self.tar_size_of_blob(&l.diff_id, blob, *compression) {
                        problems.push(format!("layer {}: pending: {e}", l.diff_id));
                    }
                    continue;
                }
            };
            let diff = self.layer_diff(&l.diff_id);
            if !diff.is_dir() {
                problems.push(format!(
                    "layer {}: directory {} missing",
                    l.diff_id,
                    diff.display()
                ));
                continue;
            }
            match fs::read(self.layer_tree(&l.diff_id)) {
                Err(e) => problems.push(format!("layer {}: tree index unreadable: {e}", l.diff_id)),
                Ok(stored) => {
                    if Digest::of(&stored) != *tree_digest {
                        problems.push(format!(
                            "layer {}: tree index does not match the index's digest",
                            l.diff_id
                        ));
                    }
                    match LayerTree::scan(&diff) {
                        Err(e) => problems.push(format!("layer {}: cannot scan: {e}", l.diff_id)),
                        Ok(t) => {
                            if t.to_bytes() != stored {
                                let detail = match LayerTree::from_bytes(&stored) {
                                    Ok(old) => first_difference(&old, &t),
                                    Err(e) => e.to_string(),
                                };
                                problems.push(format!(
                                    "layer {}: contents changed since extraction ({detail})",
                                    l.diff_id
                                ));
                            }
                        }
                    }
                }
            }
        }
        for img in idx.images()? {
            if !known_blobs.contains(&img.id) {
                problems.push(format!("image {}: config blob missing", img.id));
            }
            for d in idx.image_layers(&img.id)? {
                if !known_layers.contains(&d) {
                    problems.push(format!("image {}: layer {d} missing", img.id));
                }
            }
            for (m, _) in idx.manifests_of(&img.id)? {
                if !known_blobs.contains(&m) {
                    problems.push(format!("image {}: manifest {m} missing", img.id));
                    continue;
                }
                match self
                    .read_blob(&m)
                    .and_then(|data| image::parse_manifest(&data, &m.to_string()))
                {
                    Err(e) => problems.push(format!("image {}: manifest {m}: {e}", img.id)),
                    Ok(man) => {
                        for l in man.layers {
                            if !known_blobs.contains(&l.digest) {
                                problems.push(format!(
                                    "image {}: layer blob {} missing",
                                    img.id, l.digest
                                ));
                            }
                        }
                    }
                }
            }
        }
        // Orphans and leftovers.
        for name in dir_names(&self.root().join("blobs/sha256"))? {
            if Digest::from_hex(&name)
                .map(|d| !known_blobs.contains(&d))
                .unwrap_or(true)
            {
                problems.push(format!(
                    "orphan blob file blobs/sha256/{name} (strata system prune removes it)"
                ));
            }
        }
        for name in dir_names(&self.root().join("layers"))? {
            if Digest::from_hex(&name)
                .map(|d| !known_layers.contains(&d))
                .unwrap_or(true)
            {
                problems.push(format!(
                    "orphan layer directory layers/{name} (strata system prune removes it)"
                ));
            }
        }
        let leases = self.index().conn();
        let leases = index::leases(leases)?;
        let live: Vec<&index::LeaseRow> = leases.iter().filter(|l| lease_alive(l)).collect();
        for l in leases.iter().filter(|l| !lease_alive(l)) {
            problems.push(format!(
                "stale lease {} of process {} that is gone (strata system prune removes it)",
                l.id, l.pid
            ));
        }
        for name in dir_names(&self.tmp_dir())? {
            if !live.iter().any(|l| name.starts_with(&format!("{}-", l.id))) {
                problems.push(format!(
                    "leftover temporary tmp/{name} (strata system prune removes it)"
                ));
            }
        }
        for name in dir_names(&self.root().join("trash"))? {
            problems.push(format!(
                "trash/{name} not yet deleted (strata system prune removes it)"
            ));
        }
        Ok(problems)
    }
}

fn first_difference(a: &LayerTree, b: &LayerTree) -> String {
    let paths = |t: &LayerTree| -> std::collections::BTreeMap<Vec<u8>, usize> {
        (0..t.nodes.len()).map(|i| (t.path(i), i)).collect()
    };
    let (pa, pb) = (paths(a), paths(b));
    for (p, i) in &pa {
        match pb.get(p) {
            None => return format!("{} removed", String::from_utf8_lossy(p)),
            Some(j) => {
                let (x, y) = (&a.nodes[*i], &b.nodes[*j]);
                if (
                    x.kind,
                    x.mode,
                    x.uid,
                    x.gid,
                    x.size,
                    x.mtime_sec,
                    x.mtime_nsec,
                    &x.target,
                    &x.xattrs,
                    x.opaque,
                ) != (
                    y.kind,
                    y.mode,
                    y.uid,
                    y.gid,
                    y.size,
                    y.mtime_sec,
                    y.mtime_nsec,
                    &y.target,
                    &y.xattrs,
                    y.opaque,
                ) {
                    return format!("{} changed", String::from_utf8_lossy(p));
                }
            }
        }
    }
    for p in pb.keys() {
        if !pa.contains_key(p) {
            return format!("{} added", String::from_utf8_lossy(p));
        }
    }
    "hard links changed".into()
}
