//! The on-disk encoding of kernel overlayfs that layer and upper directories use: whiteouts
//! (character devices 0/0, or the OCI `.wh.NAME` files read from foreign lowers) and opaque
//! directories (`trusted.overlay.opaque=y` when the process may set `trusted.*` attributes,
//! `user.overlay.opaque=y` otherwise, and the OCI `.wh..wh..opq` marker file).
//!
//! Every function works on a directory file descriptor and a single name, never on a path, so
//! nothing here can be led outside the directory it is given.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag, mknodat};

use crate::sys;

/// Prefix of an OCI whiteout file name (`.wh.NAME` hides `NAME`).
pub const OCI_WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the OCI marker that makes its directory opaque.
pub const OCI_OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The kernel's opaque attribute in the trusted namespace.
pub const TRUSTED_OPAQUE: &str = "trusted.overlay.opaque";
/// The kernel's opaque attribute in the user namespace (`userxattr` mounts).
pub const USER_OPAQUE: &str = "user.overlay.opaque";

/// The kernel's metacopy marks (a copied-up file whose data is still in a lower layer).
pub const TRUSTED_METACOPY: &str = "trusted.overlay.metacopy";
pub const USER_METACOPY: &str = "user.overlay.metacopy";
/// Where a renamed metacopy file's data lives in the lower layers (kernel `redirect_dir`).
pub const TRUSTED_REDIRECT: &str = "trusted.overlay.redirect";
pub const USER_REDIRECT: &str = "user.overlay.redirect";

/// Which xattr namespace the overlay's private attributes are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum XattrNs {
    /// `trusted.overlay.*`: what `mount -t overlay` reads by default; needs CAP_SYS_ADMIN.
    Trusted,
    /// `user.overlay.*`: what `mount -t overlay -o userxattr` reads; any owner may set it.
    User,
}

impl XattrNs {
    /// The namespace this process can write: trusted when it holds CAP_SYS_ADMIN.
    pub fn for_this_process() -> XattrNs {
        if sys::has_capability(sys::CAP_SYS_ADMIN) {
            XattrNs::Trusted
        } else {
            XattrNs::User
        }
    }

    /// The name of the opaque attribute in this namespace.
    pub fn opaque_key(self) -> &'static str {
        match self {
            XattrNs::Trusted => TRUSTED_OPAQUE,
            XattrNs::User => USER_OPAQUE,
        }
    }

    /// The name of the metacopy attribute in this namespace.
    pub fn metacopy_key(self) -> &'static str {
        match self {
            XattrNs::Trusted => TRUSTED_METACOPY,
            XattrNs::User => USER_METACOPY,
        }
    }

    /// A short name for messages and the index (`trusted` or `user`).
    pub fn as_str(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted",
            XattrNs::User => "user",
        }
    }
}

/// Whether an xattr name belongs to the overlay itself and must not show through the union or be
/// copied out of a layer as content (`trusted.overlay.*`, `user.overlay.*`).
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// For an OCI whiteout name `.wh.X`, the hidden name `X`; `None` for the opaque marker and for
/// ordinary names.
pub fn oci_whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OCI_OPAQUE_MARKER.as_bytes() {
        return None;
    }
    name.strip_prefix(OCI_WHITEOUT_PREFIX.as_bytes())
}

/// Whether a file of this `st_mode` and `st_rdev` is a kernel whiteout (a character device 0/0).
pub fn is_whiteout(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// Creates the kernel whiteout for `name` in directory `dir`: a character device 0/0 with mode
/// 0000 (unprivileged processes may create exactly this device since Linux 5.8).
pub fn write_whiteout(dir: impl AsFd, name: &OsStr) -> nix::Result<()> {
    mknodat(dir, name, SFlag::S_IFCHR, Mode::empty(), 0)
}

/// Marks the directory `name` inside `dir` opaque in namespace `ns`.
pub fn set_opaque(dir: impl AsFd, name: &OsStr, ns: XattrNs) -> nix::Result<()> {
    sys::lsetxattr_at(dir, name, OsStr::new(ns.opaque_key()), b"y")
}

/// Marks the open directory `fd` opaque in namespace `ns`.
pub fn set_opaque_fd(fd: impl AsFd, ns: XattrNs) -> nix::Result<()> {
    sys::fsetxattr(fd, OsStr::new(ns.opaque_key()), b"y")
}

/// Whether the open directory `fd` is opaque in either namespace (`y`), or holds the OCI marker.
pub fn dir_is_opaque(fd: impl AsFd) -> nix::Result<bool> {
    dir_is_opaque_with(fd, None)
}

/// [`dir_is_opaque`] for a caller that may already know whether the directory holds the OCI
/// marker (`marker`, from a listing): one `flistxattr` then, and a read of an opaque
/// attribute only when the directory has one.
pub fn dir_is_opaque_with(fd: impl AsFd, marker: Option<bool>) -> nix::Result<bool> {
    let fd = fd.as_fd();
    let names = match sys::flistxattr(fd) {
        Ok(n) => n,
        // Filesystems without xattrs: not opaque there.
        Err(Errno::ENOTSUP) | Err(Errno::EPERM) | Err(Errno::EACCES) => Vec::new(),
        Err(e) => return Err(e),
    };
    for key in [TRUSTED_OPAQUE, USER_OPAQUE] {
        if !names.iter().any(|n| n.as_bytes() == key.as_bytes()) {
            continue;
        }
        match sys::fgetxattr(fd, OsStr::new(key)) {
            Ok(Some(v)) if v == b"y" => return Ok(true),
            Ok(_) => {}
            // A namespace we may not read: not opaque there.
            Err(Errno::ENOTSUP) | Err(Errno::EPERM) | Err(Errno::EACCES) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(m) = marker {
        return Ok(m);
    }
    match nix::sys::stat::fstatat(
        fd,
        OCI_OPAQUE_MARKER,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `name` in `dir` is a metacopy file (metadata copied up, data still below), and the
/// redirect to its data's path when it has one (`None` inside: the same path below).
pub fn metacopy_at(dir: impl AsFd, name: &[u8]) -> nix::Result<Option<Option<Vec<u8>>>> {
    let dir = dir.as_fd();
    let name = OsStr::from_bytes(name);
    let read = |key: &str| match sys::lgetxattr_at(dir, name, OsStr::new(key)) {
        Ok(v) => Ok(v),
        Err(Errno::ENOTSUP) | Err(Errno::EPERM) | Err(Errno::EACCES) => Ok(None),
        Err(e) => Err(e),
    };
    if read(TRUSTED_METACOPY)?.is_none() && read(USER_METACOPY)?.is_none() {
        return Ok(None);
    }
    let redirect = match read(TRUSTED_REDIRECT)? {
        Some(r) => Some(r),
        None => read(USER_REDIRECT)?,
    };
    Ok(Some(redirect))
}

/// Whether `name` is a reserved OCI name (a whiteout or the opaque marker) that never shows in a
/// merged view.
pub fn is_oci_special(name: &OsStr) -> bool {
    name.as_bytes().starts_with(OCI_WHITEOUT_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(oci_whiteout_target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(oci_whiteout_target(b".wh..wh..opq"), None);
        assert_eq!(oci_whiteout_target(b"foo"), None);
        assert!(is_private_xattr(b"trusted.overlay.opaque"));
        assert!(is_private_xattr(b"user.overlay.redirect"));
        assert!(!is_private_xattr(b"user.foo"));
        assert!(!is_private_xattr(b"security.capability"));
    }

    #[test]
    fn whiteout_device_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        write_whiteout(&dir, OsStr::new("gone")).unwrap();
        let st = nix::sys::stat::lstat(&d.path().join("gone")).unwrap();
        assert!(is_whiteout(st.st_mode, st.st_rdev));
    }
}
