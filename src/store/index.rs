//! The SQLite index (`index.db`): created from `schema.sql`, versioned with `PRAGMA
//! user_version`, in WAL mode so that readers never wait for a writer. Every change runs inside
//! `BEGIN IMMEDIATE`, with a long busy timeout, so that several strata processes at once queue
//! for the write lock instead of failing with "database is locked".

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::digest::Digest;
use super::error::{DbContext, Error, Result};
use super::layer::Compression;

/// The schema, embedded.
pub const SCHEMA: &str = include_str!("../../schema.sql");
/// The version `schema.sql` creates; migrations bring older stores up to it.
pub const SCHEMA_VERSION: i64 = 2;

/// Version 1 → 2: layers may be pending (pulled, extracted on first use). The `layers` table is
/// rebuilt (SQLite cannot relax NOT NULL in place), as SQLite's documented procedure does it:
/// new table, copy, drop, rename, with foreign keys off and checked before the commit. Frozen:
/// later schema changes get a migration of their own.
const MIGRATE_1_TO_2: &str = "
CREATE TABLE layers_v2 (
    diff_id      TEXT PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('extracted', 'pending')),
    size         INTEGER NOT NULL,
    content_size INTEGER,
    entries      INTEGER,
    tree_digest  TEXT,
    xattr_ns     TEXT,
    blob         TEXT REFERENCES blobs(digest),
    compression  TEXT,
    created      INTEGER NOT NULL,
    CHECK (CASE state
        WHEN 'extracted' THEN content_size IS NOT NULL AND entries IS NOT NULL
            AND tree_digest IS NOT NULL AND xattr_ns IS NOT NULL
            AND blob IS NULL AND compression IS NULL
        ELSE content_size IS NULL AND entries IS NULL AND tree_digest IS NULL
            AND xattr_ns IS NULL AND blob IS NOT NULL AND compression IS NOT NULL
            AND compression IN ('gzip', 'zstd', 'none')
    END)
) WITHOUT ROWID;
INSERT INTO layers_v2 (diff_id, state, size, content_size, entries, tree_digest, xattr_ns, created)
    SELECT diff_id, 'extracted', size, content_size, entries, tree_digest, xattr_ns, created
    FROM layers;
DROP TABLE layers;
ALTER TABLE layers_v2 RENAME TO layers;
CREATE INDEX layers_by_blob ON layers(blob);
PRAGMA user_version = 2;
";
/// How long a process waits for another's write transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(300);

/// A blob row.
#[derive(Debug, Clone)]
pub struct BlobRow {
    pub digest: Digest,
    pub size: u64,
    pub media_type: Option<String>,
}

/// A layer row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar; while pending, an estimate from the blob.
    pub size: u64,
    pub state: LayerState,
    pub created: i64,
}

/// Where a layer stands: extracted (with what its extraction found), or pending (with the blob
/// to extract it from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerState {
    /// Its tree is under `layers/<hex>/`.
    Extracted {
        /// Bytes of regular-file content (hard links once).
        content_size: u64,
        /// Objects in the layer, whiteouts included.
        entries: u64,
        /// The digest of `tree.bin`.
        tree_digest: Digest,
        /// `trusted` or `user`: where opaque marks were written.
        xattr_ns: String,
    },
    /// Pulled, not yet extracted: no directory; extracted from `blob` on first use.
    Pending {
        blob: Digest,
        compression: Compression,
    },
}

impl LayerRow {
    /// Whether the layer still waits for its extraction.
    pub fn is_pending(&self) -> bool {
        matches!(self.state, LayerState::Pending { .. })
    }

    /// The bytes of file content, once extracted.
    pub fn content_size(&self) -> Option<u64> {
        match &self.state {
            LayerState::Extracted { content_size, .. } => Some(*content_size),
            LayerState::Pending { .. } => None,
        }
    }
}

/// An image row.
#[derive(Debug, Clone)]
pub struct ImageRow {
    pub id: Digest,
    pub manifest_digest: Digest,
    pub created: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub size: u64,
    pub added: i64,
}

/// A tag row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    pub repository: String,
    pub tag: String,
    pub image_id: Digest,
    pub manifest_digest: Option<Digest>,
}

/// An open index.
pub struct Index {
    conn: Connection,
}

fn digest_col(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Digest> {
    let s: String = row.get(i)?;
    s.parse().map_err(|e: super::digest::BadDigest| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn opt_digest_col(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<Digest>> {
    let s: Option<String> = row.get(i)?;
    s.map(|s| {
        s.parse().map_err(|e: super::digest::BadDigest| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::DatabaseBusy || f.code == rusqlite::ErrorCode::DatabaseLocked)
}

/// Runs `f` again while SQLite answers "busy" (the busy handler does not cover every case, for
/// example changing the journal mode), up to the busy timeout.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Err(e) if is_busy(&e) && start.elapsed() < BUSY_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

impl Index {
    /// Opens (creating or migrating) the index at `path`.
    pub fn open(path: &Path) -> Result<Index> {
        let conn =
            Connection::open(path).map_err(|e| Error::db(format!("open {}", path.display()), e))?;
        conn.busy_timeout(BUSY_TIMEOUT).dbctx("set busy timeout")?;
        let mode: String =
            retry_busy(|| conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)))
                .dbctx("switch to WAL mode")?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Invalid(format!(
                "{}: SQLite refused WAL mode (got {mode}); is the store on a network filesystem?",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .dbctx("set pragmas")?;
        let index = Index { conn };
        index.migrate()?;
        Ok(index)
    }

    fn user_version(&self) -> Result<i64> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .dbctx("read schema version")
    }

    fn migrate(&self) -> Result<()> {
        if self.user_version()? == SCHEMA_VERSION {
            return Ok(());
        }
        // A migration rebuilds tables that others reference: foreign keys are off meanwhile (a
        // no-op inside a transaction, hence here) and checked before the migration commits.
        self.conn
            .execute_batch("PRAGMA foreign_keys = OFF")
            .dbctx("turn off foreign keys to migrate")?;
        let done = self.write("create or migrate the schema", |conn| {
            let mut from = None;
            loop {
                // Read under the write lock: another process may have just done it.
                let v: i64 = conn
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
                    .dbctx("read schema version")?;
                match v {
                    0 => conn
                        .execute_batch(SCHEMA)
                        .dbctx("create tables from schema.sql")?,
                    1 => {
                        from.get_or_insert(v);
                        conn.execute_batch(MIGRATE_1_TO_2)
                            .dbctx("migrate the schema from version 1 to 2")?
                    }
                    SCHEMA_VERSION => break,
                    v if v > SCHEMA_VERSION => {
                        return Err(Error::Invalid(format!(
                            "the index has schema version {v}, newer than this strata ({SCHEMA_VERSION}); upgrade strata"
                        )));
                    }
                    v => return Err(Error::Invalid(format!("no migration from schema version {v}"))),
                }
            }
            let broken: i64 = conn
                .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
                .dbctx("check foreign keys after the migration")?;
            if broken > 0 {
                return Err(Error::Invalid(format!(
                    "the migration of the index left {broken} rows referring to nothing; nothing was changed"
                )));
            }
            Ok(from)
        });
        let on = self
            .conn
            .execute_batch("PRAGMA foreign_keys = ON")
            .dbctx("turn foreign keys back on");
        if let Some(v) = done? {
            log::info!("index: schema migrated from version {v} to {SCHEMA_VERSION}");
        }
        on
    }

    /// The schema version of the open index.
    pub fn schema_version(&self) -> Result<i64> {
        self.user_version()
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`): committed when `f` succeeds, rolled
    /// back otherwise.
    pub fn write<T>(&self, what: &str, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        retry_busy(|| self.conn.execute_batch("BEGIN IMMEDIATE"))
            .map_err(|e| Error::db(format!("{what}: begin"), e))?;
        match f(&self.conn) {
            Ok(v) => match retry_busy(|| self.conn.execute_batch("COMMIT")) {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(Error::db(format!("{what}: commit"), e))
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The connection, for reads.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    // ---- blobs

    /// The row of a blob.
    pub fn blob(&self, d: &Digest) -> Result<Option<BlobRow>> {
        blob(&self.conn, d)
    }

    /// Every blob row.
    pub fn blobs(&self) -> Result<Vec<BlobRow>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT digest, size, media_type FROM blobs ORDER BY digest")
            .dbctx("list blobs")?;
        st.query_map([], |r| {
            Ok(BlobRow {
                digest: digest_col(r, 0)?,
                size: r.get::<_, i64>(1)? as u64,
                media_type: r.get(2)?,
            })
        })
        .dbctx("list blobs")?
        .collect::<rusqlite::Result<_>>()
        .dbctx("list blobs")
    }

    // ---- layers

    /// The row of a layer.
    pub fn layer(&self, diff_id: &Digest) -> Result<Option<LayerRow>> {
        layer(&self.conn, diff_id)
    }

    /// Every layer row.
    pub fn layers(&self) -> Result<Vec<LayerRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{LAYER_SELECT} ORDER BY diff_id"))
            .dbctx("list layers")?;
        st.query_map([], layer_row)
            .dbctx("list layers")?
            .collect::<rusqlite::Result<_>>()
            .dbctx("list layers")
    }

    // ---- images and tags

    /// The row of an image.
    pub fn image(&self, id: &Digest) -> Result<Option<ImageRow>> {
        image(&self.conn, id)
    }

    /// Every image, newest first.
    pub fn images(&self) -> Result<Vec<ImageRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{IMAGE_SELECT} ORDER BY added DESC, id"))
            .dbctx("list images")?;
        st.query_map([], image_row)
            .dbctx("list images")?
            .collect::<rusqlite::Result<_>>()
            .dbctx("list images")
    }

    /// The diff_ids of an image's layers, bottom first.
    pub fn image_layers(&self, id: &Digest) -> Result<Vec<Digest>> {
        image_layers(&self.conn, id)
    }

    /// Every tag, sorted by repository and tag.
    pub fn tags(&self) -> Result<Vec<TagRow>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT repository, tag, image_id, manifest_digest FROM tags ORDER BY repository, tag",
            )
            .dbctx("list tags")?;
        st.query_map([], tag_row)
            .dbctx("list tags")?
            .collect::<rusqlite::Result<_>>()
            .dbctx("list tags")
    }

    /// The tags of one image.
    pub fn tags_of(&self, id: &Digest) -> Result<Vec<TagRow>> {
        tags_of(&self.conn, id)
    }

    /// The tag row of `repository:tag`.
    pub fn tag(&self, repository: &str, tag: &str) -> Result<Option<TagRow>> {
        self.conn
            .query_row(
                "SELECT repository, tag, image_id, manifest_digest FROM tags WHERE repository = ?1 AND tag = ?2",
                params![repository, tag],
                tag_row,
            )
            .optional()
            .dbctx("read tag")
    }

    /// The repository digests (`repo@sha256:…`) of one image.
    pub fn repo_digests_of(&self, id: &Digest) -> Result<Vec<(String, Digest)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT repository, digest FROM repo_digests WHERE image_id = ?1 ORDER BY repository, digest")
            .dbctx("list repo digests")?;
        st.query_map([id.to_string()], |r| Ok((r.get(0)?, digest_col(r, 1)?)))
            .dbctx("list repo digests")?
            .collect::<rusqlite::Result<_>>()
            .dbctx("list repo digests")
    }

    /// The image recorded for `repository@digest`.
    pub fn image_of_repo_digest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Digest>> {
        self.conn
            .query_row(
                "SELECT image_id FROM repo_digests WHERE repository = ?1 AND digest = ?2",
                params![repository, digest.to_string()],
                |r| digest_col(r, 0),
            )
            .optional()
            .dbctx("find repo digest")
    }

    /// The repositories (from repo digests, so pulled or pushed) of images whose manifests
    /// name the blob `blob`: where a registry may already have it.
    pub fn repositories_with_blob(&self, blob: &Digest) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT rd.repository FROM repo_digests rd
                 JOIN manifests m ON m.image_id = rd.image_id
                 JOIN manifest_blobs mb ON mb.manifest_digest = m.digest
                 WHERE mb.blob_digest = ?1 ORDER BY rd.repository",
            )
            .dbctx("find repositories of a blob")?;
        st.query_map([blob.to_string()], |r| r.get(0))
            .dbctx("find repositories of a blob")?
            .collect::<rusqlite::Result<_>>()
            .dbctx("find repositories of a blob")
    }

    /// The image a manifest digest belongs to.
    pub fn image_of_manifest(&self, manifest: &Digest) -> Result<Option<Digest>> {
        self.conn
            .query_row(
                "SELECT image_id FROM manifests WHERE digest = ?1",
                [manifest.to_string()],
                |r| digest_col(r, 0),
            )
            .optional()
            .dbctx("find manifest")
    }

    /// Every (manifest digest, media type) of an image.
    pub fn manifests_of(&self, id: &Digest) -> Result<Vec<(Digest, String)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT digest, media_type FROM manifests WHERE image_id = ?1 ORDER BY digest",
            )
            .dbctx("list manifests")?;
        st.query_map([id.to_string()], |r| Ok((digest_col(r, 0)?, r.get(1)?)))
            .dbctx("list manifests")?
            .collect::<rusqlite::Result<_>>()
            .dbctx("list manifests")
    }

    /// Every image id whose hex starts with `prefix`.
    pub fn images_with_prefix(&self, prefix: &str) -> Result<Vec<Digest>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM images WHERE substr(id, 8, ?2) = ?1 ORDER BY id")
            .dbctx("find image by id prefix")?;
        st.query_map(params![prefix, prefix.len() as i64], |r| digest_col(r, 0))
            .dbctx("find image by id prefix")?
            .collect::<rusqlite::Result<_>>()
            .dbctx("find image by id prefix")
    }

    /// How many containers use an image.
    pub fn containers_using(&self, id: &Digest) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM containers WHERE image_id = ?1",
                [id.to_string()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .dbctx("count containers")
    }

    /// Number of rows in a table (for `info` and `system df`).
    pub fn count(&self, table: &str) -> Result<u64> {
        // table names come from this crate only
        self.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .dbctx("count rows")
    }
}

// ---- statement helpers usable inside a write transaction (they take the connection)

const LAYER_SELECT: &str = "SELECT diff_id, size, state, content_size, entries, tree_digest, xattr_ns, blob, compression, created FROM layers";
const IMAGE_SELECT: &str =
    "SELECT id, manifest_digest, created, architecture, os, size, added FROM images";

fn layer_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LayerRow> {
    let state: String = r.get(2)?;
    let state = match state.as_str() {
        "extracted" => LayerState::Extracted {
            content_size: r.get::<_, i64>(3)? as u64,
            entries: r.get::<_, i64>(4)? as u64,
            tree_digest: digest_col(r, 5)?,
            xattr_ns: r.get(6)?,
        },
        _ => {
            let c: String = r.get(8)?;
            LayerState::Pending {
                blob: digest_col(r, 7)?,
                compression: Compression::from_name(&c).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        8,
                        rusqlite::types::Type::Text,
                        format!("unknown compression {c:?}").into(),
                    )
                })?,
            }
        }
    };
    Ok(LayerRow {
        diff_id: digest_col(r, 0)?,
        size: r.get::<_, i64>(1)? as u64,
        state,
        created: r.get(9)?,
    })
}

fn image_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        id: digest_col(r, 0)?,
        manifest_digest: digest_col(r, 1)?,
        created: r.get(2)?,
        architecture: r.get(3)?,
        os: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        added: r.get(6)?,
    })
}

fn tag_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TagRow> {
    Ok(TagRow {
        repository: r.get(0)?,
        tag: r.get(1)?,
        image_id: digest_col(r, 2)?,
        manifest_digest: opt_digest_col(r, 3)?,
    })
}

/// The row of a blob.
pub fn blob(conn: &Connection, d: &Digest) -> Result<Option<BlobRow>> {
    conn.query_row(
        "SELECT digest, size, media_type FROM blobs WHERE digest = ?1",
        [d.to_string()],
        |r| {
            Ok(BlobRow {
                digest: digest_col(r, 0)?,
                size: r.get::<_, i64>(1)? as u64,
                media_type: r.get(2)?,
            })
        },
    )
    .optional()
    .dbctx("read blob row")
}

/// Records a blob (no change if it is known).
pub fn insert_blob(
    conn: &Connection,
    d: &Digest,
    size: u64,
    media_type: Option<&str>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO blobs (digest, size, media_type, created) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(digest) DO UPDATE SET media_type = coalesce(blobs.media_type, excluded.media_type)",
        params![d.to_string(), size as i64, media_type, now],
    )
    .map(drop)
    .dbctx("insert blob row")
}

/// The row of a layer.
pub fn layer(conn: &Connection, diff_id: &Digest) -> Result<Option<LayerRow>> {
    conn.query_row(
        &format!("{LAYER_SELECT} WHERE diff_id = ?1"),
        [diff_id.to_string()],
        layer_row,
    )
    .optional()
    .dbctx("read layer row")
}

/// Records an extracted layer; a pending row of it becomes extracted (its blob is then only
/// the manifests' business).
pub fn put_extracted_layer(conn: &Connection, l: &LayerRow) -> Result<()> {
    let LayerState::Extracted {
        content_size,
        entries,
        tree_digest,
        xattr_ns,
    } = &l.state
    else {
        return Err(Error::Invalid(format!(
            "layer {}: a pending row recorded as extracted",
            l.diff_id
        )));
    };
    let was_pending = layer(conn, &l.diff_id)?.is_some_and(|r| r.is_pending());
    conn.execute(
        "INSERT INTO layers (diff_id, state, size, content_size, entries, tree_digest, xattr_ns, blob, compression, created)
         VALUES (?1, 'extracted', ?2, ?3, ?4, ?5, ?6, NULL, NULL, ?7)
         ON CONFLICT(diff_id) DO UPDATE SET state = 'extracted', size = excluded.size,
             content_size = excluded.content_size, entries = excluded.entries,
             tree_digest = excluded.tree_digest, xattr_ns = excluded.xattr_ns,
             blob = NULL, compression = NULL, created = excluded.created",
        params![
            l.diff_id.to_string(),
            l.size as i64,
            *content_size as i64,
            *entries as i64,
            tree_digest.to_string(),
            xattr_ns,
            l.created
        ],
    )
    .dbctx("write layer row")?;
    if was_pending {
        // Its real size replaces the estimate in the sizes of the images that have it.
        conn.execute(
            "UPDATE images SET size = (SELECT coalesce(sum(l.size), 0) FROM image_layers il
                 JOIN layers l ON l.diff_id = il.diff_id WHERE il.image_id = images.id)
             WHERE id IN (SELECT image_id FROM image_layers WHERE diff_id = ?1)",
            [l.diff_id.to_string()],
        )
        .dbctx("update image sizes")?;
    }
    Ok(())
}

/// Records a pending layer: its blob is stored, its extraction waits for its first use. No
/// change if the layer is known (pending or extracted).
pub fn insert_pending_layer(
    conn: &Connection,
    diff_id: &Digest,
    size_estimate: u64,
    blob: &Digest,
    compression: Compression,
    now: i64,
) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO layers (diff_id, state, size, blob, compression, created)
         VALUES (?1, 'pending', ?2, ?3, ?4, ?5)",
        params![
            diff_id.to_string(),
            size_estimate as i64,
            blob.to_string(),
            compression.name(),
            now
        ],
    )
    .map(drop)
    .dbctx("insert pending layer row")
}

/// The row of an image.
pub fn image(conn: &Connection, id: &Digest) -> Result<Option<ImageRow>> {
    conn.query_row(
        &format!("{IMAGE_SELECT} WHERE id = ?1"),
        [id.to_string()],
        image_row,
    )
    .optional()
    .dbctx("read image row")
}

/// The diff_ids of an image's layers, bottom first.
pub fn image_layers(conn: &Connection, id: &Digest) -> Result<Vec<Digest>> {
    let mut st = conn
        .prepare_cached("SELECT diff_id FROM image_layers WHERE image_id = ?1 ORDER BY position")
        .dbctx("list image layers")?;
    st.query_map([id.to_string()], |r| digest_col(r, 0))
        .dbctx("list image layers")?
        .collect::<rusqlite::Result<_>>()
        .dbctx("list image layers")
}

/// Records an image with its layers (no change if the image is known). Its size is the sum of
/// its layer rows' sizes, computed here (`img.size` is not used), and kept so when a pending
/// layer of it is extracted ([`put_extracted_layer`]).
pub fn insert_image(conn: &Connection, img: &ImageRow, layers: &[Digest]) -> Result<bool> {
    let n = conn
        .execute(
            "INSERT OR IGNORE INTO images (id, manifest_digest, created, architecture, os, size, added)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                img.id.to_string(),
                img.manifest_digest.to_string(),
                img.created,
                img.architecture,
                img.os,
                img.size as i64,
                img.added
            ],
        )
        .dbctx("insert image row")?;
    if n == 0 {
        return Ok(false);
    }
    for (i, l) in layers.iter().enumerate() {
        conn.execute(
            "INSERT INTO image_layers (image_id, position, diff_id) VALUES (?1, ?2, ?3)",
            params![img.id.to_string(), i as i64, l.to_string()],
        )
        .dbctx("insert image layer row")?;
    }
    conn.execute(
        "UPDATE images SET size = (SELECT coalesce(sum(l.size), 0) FROM image_layers il
             JOIN layers l ON l.diff_id = il.diff_id WHERE il.image_id = ?1)
         WHERE id = ?1",
        [img.id.to_string()],
    )
    .dbctx("compute image size")?;
    Ok(true)
}

/// Records a manifest of an image and the blobs it names (no change if known).
pub fn insert_manifest(
    conn: &Connection,
    digest: &Digest,
    image: &Digest,
    media_type: &str,
    blobs: &[Digest],
) -> Result<()> {
    let n = conn
        .execute(
            "INSERT OR IGNORE INTO manifests (digest, image_id, media_type) VALUES (?1, ?2, ?3)",
            params![digest.to_string(), image.to_string(), media_type],
        )
        .dbctx("insert manifest row")?;
    if n > 0 {
        for b in blobs {
            conn.execute(
                "INSERT OR IGNORE INTO manifest_blobs (manifest_digest, blob_digest) VALUES (?1, ?2)",
                params![digest.to_string(), b.to_string()],
            )
            .dbctx("insert manifest blob row")?;
        }
    }
    Ok(())
}

/// Points `repository:tag` at an image (moving it if it pointed elsewhere). The image must
/// still exist: another process may have removed it since the caller resolved its name.
pub fn set_tag(conn: &Connection, t: &TagRow) -> Result<()> {
    if image(conn, &t.image_id)?.is_none() {
        return Err(Error::NotFound(format!(
            "No such image: {} (removed meanwhile)",
            t.image_id
        )));
    }
    conn.execute(
        "INSERT INTO tags (repository, tag, image_id, manifest_digest) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(repository, tag) DO UPDATE SET image_id = excluded.image_id,
             manifest_digest = excluded.manifest_digest",
        params![
            t.repository,
            t.tag,
            t.image_id.to_string(),
            t.manifest_digest.as_ref().map(|d| d.to_string())
        ],
    )
    .map(drop)
    .dbctx("write tag row")
}

/// Records `repository@digest` for an image.
pub fn add_repo_digest(
    conn: &Connection,
    repository: &str,
    digest: &Digest,
    image: &Digest,
) -> Result<()> {
    conn.execute(
        "INSERT INTO repo_digests (repository, digest, image_id) VALUES (?1, ?2, ?3)
         ON CONFLICT(repository, digest) DO UPDATE SET image_id = excluded.image_id",
        params![repository, digest.to_string(), image.to_string()],
    )
    .map(drop)
    .dbctx("write repo digest row")
}

/// The tags of one image.
pub fn tags_of(conn: &Connection, id: &Digest) -> Result<Vec<TagRow>> {
    let mut st = conn
        .prepare_cached(
            "SELECT repository, tag, image_id, manifest_digest FROM tags WHERE image_id = ?1 ORDER BY repository, tag",
        )
        .dbctx("list tags")?;
    st.query_map([id.to_string()], tag_row)
        .dbctx("list tags")?
        .collect::<rusqlite::Result<_>>()
        .dbctx("list tags")
}

/// The tag row of `repository:tag`.
pub fn tags_of_name(conn: &Connection, repository: &str, tag: &str) -> Result<Option<TagRow>> {
    conn.query_row(
        "SELECT repository, tag, image_id, manifest_digest FROM tags WHERE repository = ?1 AND tag = ?2",
        params![repository, tag],
        tag_row,
    )
    .optional()
    .dbctx("read tag")
}

/// Removes one tag; whether it existed.
pub fn delete_tag(conn: &Connection, repository: &str, tag: &str) -> Result<bool> {
    conn.execute(
        "DELETE FROM tags WHERE repository = ?1 AND tag = ?2",
        params![repository, tag],
    )
    .map(|n| n > 0)
    .dbctx("delete tag row")
}

/// Removes an image with its layers list, manifests, tags and repo digests (not the blobs or
/// layers themselves: see [`unreferenced_blobs`] and [`unreferenced_layers`]).
pub fn delete_image(conn: &Connection, id: &Digest) -> Result<()> {
    let id = id.to_string();
    for sql in [
        "DELETE FROM tags WHERE image_id = ?1",
        "DELETE FROM repo_digests WHERE image_id = ?1",
        "DELETE FROM manifest_blobs WHERE manifest_digest IN (SELECT digest FROM manifests WHERE image_id = ?1)",
        "DELETE FROM manifests WHERE image_id = ?1",
        "DELETE FROM image_layers WHERE image_id = ?1",
        "DELETE FROM images WHERE id = ?1",
    ] {
        conn.execute(sql, [&id]).dbctx("delete image rows")?;
    }
    Ok(())
}

/// Blobs no image, manifest, pending layer or live lease refers to.
pub fn unreferenced_blobs(conn: &Connection) -> Result<Vec<Digest>> {
    let mut st = conn
        .prepare_cached(
            "SELECT digest FROM blobs b WHERE
                 NOT EXISTS (SELECT 1 FROM manifests m WHERE m.digest = b.digest)
             AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)
             AND NOT EXISTS (SELECT 1 FROM images i WHERE i.id = b.digest)
             AND NOT EXISTS (SELECT 1 FROM layers ly WHERE ly.blob = b.digest)
             AND NOT EXISTS (SELECT 1 FROM lease_refs l WHERE l.kind = 'blob' AND l.key = b.digest)",
        )
        .dbctx("find unreferenced blobs")?;
    st.query_map([], |r| digest_col(r, 0))
        .dbctx("find unreferenced blobs")?
        .collect::<rusqlite::Result<_>>()
        .dbctx("find unreferenced blobs")
}

/// Layers no image or live lease refers to.
pub fn unreferenced_layers(conn: &Connection) -> Result<Vec<Digest>> {
    let mut st = conn
        .prepare_cached(
            "SELECT diff_id FROM layers l WHERE
                 NOT EXISTS (SELECT 1 FROM image_layers il WHERE il.diff_id = l.diff_id)
             AND NOT EXISTS (SELECT 1 FROM lease_refs r WHERE r.kind = 'layer' AND r.key = l.diff_id)",
        )
        .dbctx("find unreferenced layers")?;
    st.query_map([], |r| digest_col(r, 0))
        .dbctx("find unreferenced layers")?
        .collect::<rusqlite::Result<_>>()
        .dbctx("find unreferenced layers")
}

/// Deletes a blob row.
pub fn delete_blob(conn: &Connection, d: &Digest) -> Result<()> {
    conn.execute("DELETE FROM blobs WHERE digest = ?1", [d.to_string()])
        .map(drop)
        .dbctx("delete blob row")
}

/// Deletes a layer row.
pub fn delete_layer(conn: &Connection, d: &Digest) -> Result<()> {
    conn.execute("DELETE FROM layers WHERE diff_id = ?1", [d.to_string()])
        .map(drop)
        .dbctx("delete layer row")
}

// ---- leases

/// A lease row.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub id: String,
    pub pid: u32,
    pub pid_start: u64,
}

/// Creates a lease.
pub fn insert_lease(conn: &Connection, l: &LeaseRow, now: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO leases (id, pid, pid_start, created) VALUES (?1, ?2, ?3, ?4)",
        params![l.id, l.pid as i64, l.pid_start as i64, now],
    )
    .map(drop)
    .dbctx("insert lease")
}

/// Adds a reference to a lease. The blob or layer must still have its row: a caller that found
/// it outside this transaction may have lost it to another process's `rmi` or `prune` since.
pub fn lease_ref(conn: &Connection, lease: &str, kind: &str, key: &Digest) -> Result<()> {
    let exists = match kind {
        "blob" => blob(conn, key)?.is_some(),
        "layer" => layer(conn, key)?.is_some(),
        _ => true,
    };
    if !exists {
        return Err(Error::NotFound(format!(
            "{kind} {key} was removed from the store meanwhile; try again"
        )));
    }
    conn.execute(
        "INSERT OR IGNORE INTO lease_refs (lease_id, kind, key) VALUES (?1, ?2, ?3)",
        params![lease, kind, key.to_string()],
    )
    .map(drop)
    .dbctx("insert lease reference")
}

/// Deletes a lease with its references.
pub fn delete_lease(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("DELETE FROM lease_refs WHERE lease_id = ?1", [id])
        .dbctx("delete lease references")?;
    conn.execute("DELETE FROM leases WHERE id = ?1", [id])
        .map(drop)
        .dbctx("delete lease")
}

/// Every lease.
pub fn leases(conn: &Connection) -> Result<Vec<LeaseRow>> {
    let mut st = conn
        .prepare_cached("SELECT id, pid, pid_start FROM leases ORDER BY id")
        .dbctx("list leases")?;
    st.query_map([], |r| {
        Ok(LeaseRow {
            id: r.get(0)?,
            pid: r.get::<_, i64>(1)? as u32,
            pid_start: r.get::<_, i64>(2)? as u64,
        })
    })
    .dbctx("list leases")?
    .collect::<rusqlite::Result<_>>()
    .dbctx("list leases")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tagging an image or leasing a blob or layer that another process removed after the
    /// caller looked it up fails cleanly (no foreign key error, no reference to nothing).
    #[test]
    fn set_tag_and_lease_ref_refuse_rows_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("index.db")).unwrap();
        let d = Digest::of(b"gone");
        let tag = TagRow {
            repository: "docker.io/library/gone".into(),
            tag: "latest".into(),
            image_id: d.clone(),
            manifest_digest: None,
        };
        let e = idx.write("tag", |c| set_tag(c, &tag)).unwrap_err();
        assert!(
            matches!(&e, Error::NotFound(m) if m.starts_with("No such image")),
            "{e}"
        );
        let lease = LeaseRow {
            id: "l".into(),
            pid: 1,
            pid_start: 0,
        };
        idx.write("lease", |c| insert_lease(c, &lease, 0)).unwrap();
        for kind in ["blob", "layer"] {
            let e = idx
                .write("ref", |c| lease_ref(c, "l", kind, &d))
                .unwrap_err();
            assert!(matches!(e, Error::NotFound(_)), "{kind}: {e}");
        }
        idx.write("blob", |c| {
            insert_blob(c, &d, 4, None, 0)?;
            lease_ref(c, "l", "blob", &d)
        })
        .unwrap();
        assert_eq!(idx.count("lease_refs").unwrap(), 1);
    }

    /// `schema.sql` of version 1, as strata created it before pending layers.
    const SCHEMA_V1: &str = include_str!("../../tests/data/schema-v1.sql");

    /// Every table's columns, foreign keys and indexes, as SQLite reports them.
    fn structure(c: &Connection) -> Vec<String> {
        let tables: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut out = Vec::new();
        for t in tables {
            for (what, sql) in [
                (
                    "column",
                    "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid",
                ),
                (
                    "foreign key",
                    "SELECT \"from\", \"table\", \"to\", on_delete FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
                ),
                (
                    "index",
                    "SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1) ORDER BY name",
                ),
            ] {
                let rows: Vec<String> = c
                    .prepare(sql)
                    .unwrap()
                    .query_map([&t], |r| {
                        Ok((0..4)
                            .map(|i| match r.get_ref(i).unwrap() {
                                rusqlite::types::ValueRef::Text(s) => {
                                    String::from_utf8_lossy(s).into_owned()
                                }
                                v => format!("{v:?}"),
                            })
                            .collect::<Vec<_>>()
                            .join(" "))
                    })
                    .unwrap()
                    .collect::<rusqlite::Result<_>>()
                    .unwrap();
                out.extend(rows.into_iter().map(|r| format!("{t}: {what} {r}")));
            }
        }
        out
    }

    /// A version 1 index, migrated, has the structure `schema.sql` creates, and the same rules
    /// for layer rows.
    #[test]
    fn a_migrated_index_is_the_one_schema_sql_creates() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = Index::open(&dir.path().join("fresh.db")).unwrap();
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch(SCHEMA_V1)
            .unwrap();
        let migrated = Index::open(&old).unwrap();
        assert_eq!(migrated.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(structure(migrated.conn()), structure(fresh.conn()));
        for idx in [&fresh, &migrated] {
            let fk: i64 = idx
                .conn()
                .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
                .unwrap();
            assert_eq!(fk, 1, "foreign keys are on again");
            let d = Digest::of(b"layer");
            let b = Digest::of(b"blob");
            // A pending layer needs its blob row, and a blob a pending layer names stays.
            assert!(
                idx.write("pending", |c| insert_pending_layer(
                    c,
                    &d,
                    1,
                    &b,
                    Compression::Gzip,
                    0
                ))
                .is_err()
            );
            idx.write("pending", |c| {
                insert_blob(c, &b, 4, None, 0)?;
                insert_pending_layer(c, &d, 1, &b, Compression::Gzip, 0)
            })
            .unwrap();
            assert!(idx.write("sweep", unreferenced_blobs).unwrap().is_empty());
            assert!(idx.write("delete", |c| delete_blob(c, &b)).is_err());
            // Half an extracted row, or a pending one without its blob, is refused.
            for sql in [
                "UPDATE layers SET state = 'extracted'",
                "UPDATE layers SET blob = NULL",
                "UPDATE layers SET compression = 'lz4'",
                "UPDATE layers SET compression = NULL",
            ] {
                assert!(
                    idx.write("bad row", |c| c.execute_batch(sql).dbctx(sql))
                        .is_err(),
                    "{sql} was accepted"
                );
            }
            let row = LayerRow {
                diff_id: d.clone(),
                size: 10,
                state: LayerState::Extracted {
                    content_size: 3,
                    entries: 2,
                    tree_digest: Digest::of(b"tree"),
                    xattr_ns: "trusted".into(),
                },
                created: 5,
            };
            idx.write("extracted", |c| put_extracted_layer(c, &row))
                .unwrap();
            assert_eq!(idx.layer(&d).unwrap(), Some(row));
            assert_eq!(idx.write("sweep", unreferenced_blobs).unwrap(), [b]);
        }
    }

    /// A store whose index is version 1 (written by the schema of that version, with the rows
    /// of an image this strata imported) opens, migrated, with every row as it was, a clean
    /// fsck, and keeps working: another import, then the removal of the first image.
    #[test]
    fn a_version_1_store_opens_and_keeps_working() {
        use crate::progress::Progress;
        use crate::store::Store;
        use crate::store::import::ImportOptions;

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let tarball = |name: &str, content: &[u8]| {
            let (gz, _) = crate::store::pending::tests::layer(
                &[("etc/greeting", content)],
                crate::store::layer::Compression::Gzip,
            );
            let p = dir.path().join(name);
            std::fs::write(&p, gz).unwrap();
            p.to_str().unwrap().to_string()
        };
        let import = |s: &Store, name: &str, content: &[u8], tag: &str| {
            s.import(
                &tarball(name, content),
                Some(tag),
                &ImportOptions::default(),
                &Progress::hidden(),
            )
            .unwrap()
        };
        let (old_id, layers, images) = {
            let s = Store::open(&root).unwrap();
            let id = import(&s, "old.tar.gz", b"old\n", "old:1");
            (id, s.index().layers().unwrap(), s.index().images().unwrap())
        };
        assert_eq!(layers.len(), 1);

        // index.db rewritten as version 1 had it: the same rows, in version 1's tables.
        let db = root.join("index.db");
        let v1 = dir.path().join("v1.db");
        {
            let c = Connection::open(&v1).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute("ATTACH DATABASE ?1 AS cur", [db.to_str().unwrap()])
                .unwrap();
            for t in [
                "blobs",
                "images",
                "manifests",
                "manifest_blobs",
                "tags",
                "repo_digests",
                "containers",
                "leases",
                "lease_refs",
            ] {
                c.execute_batch(&format!("INSERT INTO main.{t} SELECT * FROM cur.{t}"))
                    .unwrap();
            }
            c.execute_batch(
                "INSERT INTO main.layers SELECT diff_id, size, content_size, entries, tree_digest, xattr_ns, created FROM cur.layers;
                 INSERT INTO main.image_layers SELECT * FROM cur.image_layers;
                 DETACH DATABASE cur;",
            )
            .unwrap();
        }
        for f in ["index.db", "index.db-wal", "index.db-shm"] {
            let _ = std::fs::remove_file(root.join(f));
        }
        std::fs::rename(&v1, &db).unwrap();
        let version: i64 = Connection::open(&db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);

        let s = Store::open(&root).unwrap();
        assert_eq!(s.index().schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.index().layers().unwrap(), layers);
        let again = s.index().images().unwrap();
        assert_eq!(
            again.iter().map(|i| (&i.id, i.size)).collect::<Vec<_>>(),
            images.iter().map(|i| (&i.id, i.size)).collect::<Vec<_>>()
        );
        assert_eq!(s.fsck().unwrap(), Vec::<String>::new());
        let new_id = import(&s, "new.tar.gz", b"new\n", "new:1");
        assert_ne!(new_id, old_id);
        s.remove_image("old:1", false).unwrap();
        assert!(!s.layer_path(&layers[0].diff_id).exists());
        assert_eq!(s.index().images().unwrap().len(), 1);
        assert_eq!(s.fsck().unwrap(), Vec::<String>::new());
    }
}

// ---- containers (the runner's rows; the store only keeps them)

/// A container row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRow {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    pub image_id: Digest,
    /// The image as the user named it.
    pub image_ref: String,
    /// JSON array: the argv run.
    pub command: String,
    /// `created`, `running` or `exited`.
    pub state: String,
    pub exit_code: Option<i64>,
    /// The container's first process, as the host sees it.
    pub pid: Option<i64>,
    pub created: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    /// JSON: the run options.
    pub config: String,
}

const CONTAINER_SELECT: &str = "SELECT id, name, image_id, image_ref, command, state, exit_code, pid, created, started, finished, config FROM containers";

fn container_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContainerRow> {
    Ok(ContainerRow {
        id: r.get(0)?,
        name: r.get(1)?,
        image_id: digest_col(r, 2)?,
        image_ref: r.get(3)?,
        command: r.get(4)?,
        state: r.get(5)?,
        exit_code: r.get(6)?,
        pid: r.get(7)?,
        created: r.get(8)?,
        started: r.get(9)?,
        finished: r.get(10)?,
        config: r.get(11)?,
    })
}

impl Index {
    /// Every container, newest first.
    pub fn containers(&self) -> Result<Vec<ContainerRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{CONTAINER_SELECT} ORDER BY created DESC, id"))
            .dbctx("list containers")?;
        st.query_map([], container_row)
            .dbctx("list containers")?
            .collect::<rusqlite::Result<_>>()
            .dbctx("list containers")
    }

    /// The container with this id.
    pub fn container(&self, id: &str) -> Result<Option<ContainerRow>> {
        self.conn
            .query_row(
                &format!("{CONTAINER_SELECT} WHERE id = ?1"),
                [id],
                container_row,
            )
            .optional()
            .dbctx("read container")
    }
}

/// Adds a container row; a taken name is a conflict.
pub fn insert_container(conn: &Connection, c: &ContainerRow) -> Result<()> {
    let taken: Option<String> = conn
        .query_row(
            "SELECT id FROM containers WHERE name = ?1",
            [&c.name],
            |r| r.get(0),
        )
        .optional()
        .dbctx("check container name")?;
    if let Some(other) = taken {
        return Err(Error::Conflict(format!(
            "Conflict. The container name \"/{}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name.",
            c.name
        )));
    }
    conn.execute(
        "INSERT INTO containers (id, name, image_id, image_ref, command, state, exit_code, pid, created, started, finished, config)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            c.id,
            c.name,
            c.image_id.to_string(),
            c.image_ref,
            c.command,
            c.state,
            c.exit_code,
            c.pid,
            c.created,
            c.started,
            c.finished,
            c.config
        ],
    )
    .dbctx("insert container")?;
    Ok(())
}

/// Records a container's state (and, with it, its pid, times and exit code).
pub fn set_container_state(conn: &Connection, c: &ContainerRow) -> Result<()> {
    conn.execute(
        "UPDATE containers SET state = ?2, exit_code = ?3, pid = ?4, started = ?5, finished = ?6 WHERE id = ?1",
        params![c.id, c.state, c.exit_code, c.pid, c.started, c.finished],
    )
    .dbctx("update container")?;
    Ok(())
}

/// Removes a container row.
pub fn delete_container(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("DELETE FROM containers WHERE id = ?1", [id])
        .dbctx("delete container")?;
    Ok(())
}
