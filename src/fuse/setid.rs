//! Set-id bits killed on the kernel's behalf. The server tells the kernel it handles this
//! (`FUSE_HANDLE_KILLPRIV_V2`), which saves a GETATTR for every chown and a GETXATTR for many
//! writes; in return the server must clear setuid (and setgid when the file is
//! group-executable) when a caller without CAP_FSETID writes, truncates or chowns a file, as the
//! VFS does. The union writes as its own (privileged) user, so the lower file system would not
//! do it by itself.
//!
//! How each case reaches the server:
//! - a write, fallocate or copy_file_range with FUSE passthrough (or the kernel's own check
//!   before one): a SETATTR that changes nothing (the kernel strips the mode change it would
//!   have sent) — the kernel has already decided the bits must go;
//! - `chown(f, -1, -1)`: a SETATTR of the ctime alone, same rule;
//! - a write through the server: the `FUSE_WRITE_KILL_SUIDGID` write flag;
//! - a truncate, or an open with `O_TRUNC`: the kernel's flag for it is not passed on by
//!   fuser, so the caller's capabilities are read from `/proc/PID/status`; this only happens
//!   for files that carry a set-id bit.

use std::fs;

/// `CAP_FSETID`, bit 4 of the capability sets.
const CAP_FSETID: u32 = 4;

/// What kind of change kills the bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A write, truncate, fallocate or copy into the file.
    Write,
    /// A change of owner or group (also `chown(f, -1, -1)`).
    Chown,
}

/// Who asks: the process and the ids it acts with.
#[derive(Debug, Clone, Copy)]
pub struct Asker {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What `/proc/PID/status` says of a process's privileges.
struct Privileges {
    fsetid: bool,
    groups: Vec<u32>,
}

impl Privileges {
    /// Read from `/proc`; a process that is gone is taken to be root with every capability
    /// when it asked as root, and an unprivileged process without groups otherwise.
    fn of(a: &Asker) -> Privileges {
        let text = fs::read_to_string(format!("/proc/{}/status", a.pid)).unwrap_or_default();
        let caps = field(&text, "CapEff:").and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
        Privileges {
            fsetid: match caps {
                Some(c) => c & (1u64 << CAP_FSETID) != 0,
                None => a.uid == 0,
            },
            groups: field(&text, "Groups:")
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The value of the line of `status` that starts with `key`.
fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key))
}

/// The permission bits (`mode & 0o7777`) a regular file with mode `mode` and group `gid`
/// keeps after `change` by `asker`, or `None` when no bit goes. As the VFS
/// (`setattr_should_drop_suidgid`, `chown_common`): a write by a process without CAP_FSETID
/// drops setuid, and setgid when the file is group-executable or the process is outside the
/// file's group; a chown always drops setuid, and setgid when group-executable or (without
/// CAP_FSETID) outside the group. `/proc` is only read when the file has a set-id bit.
pub fn killed_mode(mode: u32, gid: u32, change: Change, asker: &Asker) -> Option<u32> {
    if mode & libc::S_IFMT != libc::S_IFREG || mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return None;
    }
    let p = Privileges::of(asker);
    let mut kill = 0;
    if change == Change::Chown || !p.fsetid {
        kill |= libc::S_ISUID;
    }
    let in_group = asker.gid == gid || p.groups.contains(&gid);
    let sgid = if mode & libc::S_IXGRP != 0 {
        change == Change::Chown || !p.fsetid
    } else {
        !in_group && !p.fsetid
    };
    if sgid {
        kill |= libc::S_ISGID;
    }
    kill &= mode;
    (kill != 0).then_some(mode & 0o7777 & !kill)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that cannot exist: its privileges are those of its uid.
    fn gone(uid: u32, gid: u32) -> Asker {
        Asker {
            pid: u32::MAX,
            uid,
            gid,
        }
    }

    #[test]
    fn writes_by_the_unprivileged_drop_setuid_and_setgid() {
        let reg = libc::S_IFREG;
        let user = gone(1000, 1000);
        let w = Change::Write;
        assert_eq!(killed_mode(reg | 0o4755, 0, w, &user), Some(0o755));
        assert_eq!(killed_mode(reg | 0o6755, 0, w, &user), Some(0o755));
        // setgid without group execute: dropped unless the writer is in the file's group.
        assert_eq!(killed_mode(reg | 0o2745, 0, w, &user), Some(0o745));
        assert_eq!(killed_mode(reg | 0o2745, 1000, w, &user), None);
        assert_eq!(killed_mode(reg | 0o6745, 1000, w, &user), Some(0o2745));
        // Nothing to drop, or not a regular file.
        assert_eq!(killed_mode(reg | 0o755, 0, w, &user), None);
        assert_eq!(killed_mode(libc::S_IFDIR | 0o6755, 0, w, &user), None);
    }

    #[test]
    fn root_keeps_bits_on_write_but_not_on_chown() {
        let reg = libc::S_IFREG;
        let root = gone(0, 0);
        assert_eq!(killed_mode(reg | 0o6755, 5, Change::Write, &root), None);
        assert_eq!(
            killed_mode(reg | 0o6755, 5, Change::Chown, &root),
            Some(0o755)
        );
        // A chown keeps setgid without group execute for a privileged process.
        assert_eq!(
            killed_mode(reg | 0o6745, 5, Change::Chown, &root),
            Some(0o2745)
        );
    }

    #[test]
    fn reads_this_process() {
        let me = Asker {
            pid: std::process::id(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let p = Privileges::of(&me);
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let caps = u64::from_str_radix(field(&status, "CapEff:").unwrap().trim(), 16).unwrap();
        assert_eq!(p.fsetid, caps & (1 << CAP_FSETID) != 0);
    }
}
