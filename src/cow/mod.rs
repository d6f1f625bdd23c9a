//! The union logic of strata: lower layers plus a copy-on-write upper directory merged with
//! kernel overlayfs semantics (`union`), over directory file descriptors (`layer`), in the
//! on-disk encoding kernel overlayfs reads (`format`, which the store also uses to write layer
//! directories). `cow` knows nothing of SQLite or FUSE, and is tested without a mount.

pub mod acl;
pub mod format;
pub mod layer;
pub mod union;

pub use union::{Attr, Caller, DirEntry, Ino, ROOT_INO, SetAttr, Union, UnionSpec};
