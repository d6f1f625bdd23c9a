-- schema.sql of index schema version 1 (strata up to commit 3b891e3), kept as it was: the
-- migration test of src/store/index.rs builds a version 1 store from it. Do not edit.
-- The index of a strata store (index.db, SQLite in WAL mode). It is the truth: a blob file or a
-- layer directory that no row names is an orphan that `strata system prune` removes.
-- Version 1. Later versions add migrations in src/store/index.rs and bump user_version.

-- Every blob under blobs/sha256/<hex>: manifests, configs, image indexes and layer blobs, kept
-- byte for byte as received so that save and push reproduce the same digests.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY,          -- 'sha256:<64 hex>', the sha256 of the file's bytes
    size       INTEGER NOT NULL,          -- bytes
    media_type TEXT,                      -- as declared by the manifest that brought it, if any
    created    INTEGER NOT NULL           -- unix seconds when it was stored
) WITHOUT ROWID;

-- Every extracted layer under layers/<diff_id hex>/{diff,tree.bin}, in kernel overlayfs format.
CREATE TABLE layers (
    diff_id      TEXT PRIMARY KEY,        -- sha256 of the uncompressed layer tar
    size         INTEGER NOT NULL,        -- bytes of the uncompressed layer tar
    content_size INTEGER NOT NULL,        -- bytes of regular-file content (hard links once)
    entries      INTEGER NOT NULL,        -- objects in the layer, whiteouts included
    tree_digest  TEXT NOT NULL,           -- sha256 of tree.bin, the layer's tree index
    xattr_ns     TEXT NOT NULL,           -- 'trusted' or 'user': where opaque marks were written
    created      INTEGER NOT NULL         -- unix seconds when it was extracted
) WITHOUT ROWID;

-- Images: one per config. The id is the config's digest, as docker's.
CREATE TABLE images (
    id              TEXT PRIMARY KEY,     -- 'sha256:<hex>' of the config blob
    manifest_digest TEXT NOT NULL,        -- the manifest first stored for it (save uses it)
    created         TEXT,                 -- the config's 'created' (RFC 3339), if any
    architecture    TEXT,
    os              TEXT,
    size            INTEGER NOT NULL,     -- sum of the uncompressed sizes of its layers
    added           INTEGER NOT NULL      -- unix seconds when it entered this store
) WITHOUT ROWID;

-- The ordered layers of each image, bottom first (position 0).
CREATE TABLE image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    diff_id  TEXT NOT NULL REFERENCES layers(diff_id),
    PRIMARY KEY (image_id, position)
) WITHOUT ROWID;
CREATE INDEX image_layers_by_layer ON image_layers(diff_id);

-- Manifests (and image indexes) known for an image, and the blobs each one names.
CREATE TABLE manifests (
    digest     TEXT PRIMARY KEY,          -- the manifest blob
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    media_type TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX manifests_by_image ON manifests(image_id);

CREATE TABLE manifest_blobs (
    manifest_digest TEXT NOT NULL REFERENCES manifests(digest) ON DELETE CASCADE,
    blob_digest     TEXT NOT NULL,        -- config and layer blobs the manifest names
    PRIMARY KEY (manifest_digest, blob_digest)
) WITHOUT ROWID;
CREATE INDEX manifest_blobs_by_blob ON manifest_blobs(blob_digest);

-- Tags: repository (fully qualified, e.g. 'docker.io/library/busybox') + tag -> image.
CREATE TABLE tags (
    repository      TEXT NOT NULL,
    tag             TEXT NOT NULL,
    image_id        TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    manifest_digest TEXT,                 -- the manifest this tag was loaded or pulled with
    PRIMARY KEY (repository, tag)
) WITHOUT ROWID;
CREATE INDEX tags_by_image ON tags(image_id);

-- Repository digests (repository@sha256:manifest), as docker's RepoDigests.
CREATE TABLE repo_digests (
    repository TEXT NOT NULL,
    digest     TEXT NOT NULL,             -- the manifest digest
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;

-- Containers, filled in by the runner.
CREATE TABLE containers (
    id        TEXT PRIMARY KEY,           -- 64 hex
    name      TEXT NOT NULL UNIQUE,
    image_id  TEXT NOT NULL REFERENCES images(id),
    image_ref TEXT NOT NULL,              -- the image as the user named it
    command   TEXT NOT NULL,              -- JSON array: the argv run
    state     TEXT NOT NULL,              -- created | running | exited
    exit_code INTEGER,
    pid       INTEGER,
    created   INTEGER NOT NULL,           -- unix seconds
    started   INTEGER,
    finished  INTEGER,
    config    TEXT NOT NULL DEFAULT '{}'  -- JSON: the run options
) WITHOUT ROWID;

-- Leases keep blobs and layers alive while an import, load or pull that will reference them
-- is still running; a lease whose process is gone is stale and pruned.
CREATE TABLE leases (
    id        TEXT PRIMARY KEY,
    pid       INTEGER NOT NULL,
    pid_start INTEGER NOT NULL,           -- the process's start time, so a reused pid is not it
    created   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE lease_refs (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    kind     TEXT NOT NULL,               -- 'blob' or 'layer'
    key      TEXT NOT NULL,               -- the blob digest or the layer diff_id
    PRIMARY KEY (lease_id, kind, key)
) WITHOUT ROWID;
CREATE INDEX lease_refs_by_key ON lease_refs(kind, key);

PRAGMA user_version = 1;
