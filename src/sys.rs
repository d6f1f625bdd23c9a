//! The few system calls the crate needs that `nix` does not wrap: extended attributes on file
//! descriptors and on names relative to a directory descriptor. This is the only module of the
//! store and of `cow` that contains `unsafe` code; every function here checks its arguments and
//! turns the C return convention into `nix::Result`.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;

fn cstring(bytes: &[u8]) -> nix::Result<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// The path `/proc/self/fd/<dirfd>/<name>`: it names `name` inside the directory `dirfd` without
/// resolving any path from `/`, and the `l*xattr` calls do not follow `name` if it is a symlink.
fn fd_path(dir: impl AsFd, name: &OsStr) -> nix::Result<CString> {
    if name.is_empty() || name.as_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    let mut p = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    cstring(&p)
}

/// Sets the extended attribute `key` of the open file `fd`.
pub fn fsetxattr(fd: impl AsFd, key: &OsStr, value: &[u8]) -> nix::Result<()> {
    let k = cstring(key.as_bytes())?;
    // SAFETY: k is NUL-terminated, value is a valid slice for its length.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_fd().as_raw_fd(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Sets the extended attribute `key` of `name` inside directory `dir`, not following a symlink.
pub fn lsetxattr_at(dir: impl AsFd, name: &OsStr, key: &OsStr, value: &[u8]) -> nix::Result<()> {
    let p = fd_path(dir, name)?;
    let k = cstring(key.as_bytes())?;
    // SAFETY: both strings are NUL-terminated, value is valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Runs a size-query-then-fetch xattr call until the buffer is large enough.
fn grow_read(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> nix::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let want = Errno::result(call(std::ptr::null_mut(), 0))? as usize;
        if want == 0 {
            return Ok(Vec::new());
        }
        buf.resize(want, 0);
        match Errno::result(call(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue, // it grew in between: ask again
            Err(e) => return Err(e),
        }
    }
}

fn split_names(list: Vec<u8>) -> Vec<OsString> {
    list.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

/// Lists the extended attribute names of `name` inside `dir` (symlinks not followed).
pub fn llistxattr_at(dir: impl AsFd, name: &OsStr) -> nix::Result<Vec<OsString>> {
    let p = fd_path(dir, name)?;
    // SAFETY: p is NUL-terminated; grow_read passes a buffer valid for the given length.
    let list = grow_read(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) })?;
    Ok(split_names(list))
}

/// Reads the extended attribute `key` of `name` inside `dir` (symlinks not followed).
/// `Ok(None)` when the attribute does not exist.
pub fn lgetxattr_at(dir: impl AsFd, name: &OsStr, key: &OsStr) -> nix::Result<Option<Vec<u8>>> {
    let p = fd_path(dir, name)?;
    let k = cstring(key.as_bytes())?;
    // SAFETY: both strings are NUL-terminated; the buffer is valid for the given length.
    match grow_read(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf, len) }) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lists the extended attribute names of the open file `fd`.
pub fn flistxattr(fd: impl AsFd) -> nix::Result<Vec<OsString>> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: the buffer is valid for the given length.
    let list = grow_read(|buf, len| unsafe { libc::flistxattr(raw, buf.cast(), len) })?;
    Ok(split_names(list))
}

/// Reads the extended attribute `key` of the open file `fd`; `Ok(None)` when it does not exist.
pub fn fgetxattr(fd: impl AsFd, key: &OsStr) -> nix::Result<Option<Vec<u8>>> {
    let raw = fd.as_fd().as_raw_fd();
    let k = cstring(key.as_bytes())?;
    // SAFETY: k is NUL-terminated; the buffer is valid for the given length.
    match grow_read(|buf, len| unsafe { libc::fgetxattr(raw, k.as_ptr(), buf, len) }) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a process with this pid exists now, and its start time (field 22 of
/// `/proc/PID/stat`, in clock ticks since boot), so that a reused pid is not mistaken for it.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip to the last ')'.
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether this process holds `cap` in its effective capability set (read from /proc).
pub fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << cap) != 0)
}

/// `CAP_SYS_ADMIN`, needed for FUSE passthrough and for `trusted.*` xattrs.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_MKNOD`, needed to create device nodes.
pub const CAP_MKNOD: u32 = 27;

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A `CStr` view for diagnostics.
pub fn lossy(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}
