//! The option syntax of `mount -t overlay` and fuse-overlayfs:
//! `lowerdir=L1:L2,upperdir=U,workdir=W` (lower directories top first, `\:` and `\,` escape),
//! plus the generic options mount(8) adds, which are accepted.

use std::path::PathBuf;

use crate::cow::UnionSpec;

/// What `-o` asked for.
#[derive(Debug, Clone, Default)]
pub struct OverlayOptions {
    pub spec: UnionSpec,
    /// `ro` was given (also without an upper directory).
    pub read_only: bool,
    /// `fsname=` (the mount's source as shown by `mount`).
    pub fsname: Option<String>,
    /// `remount`: change the flags of an existing mount (mount(8) passes it for
    /// `mount -o remount,ro MNT`) instead of mounting.
    pub remount: bool,
    /// Options that were accepted but have no effect here.
    pub ignored: Vec<String>,
}

/// Generic options of mount(8) and of FUSE that need no action.
const GENERIC: &[&str] = &[
    // FUSE's own, which mount(8) passes back from the mount table on a remount
    "user_id",
    "group_id",
    "rootmode",
    "fd",
    "max_read",
    "blksize",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "async",
    "sync",
    "dirsync",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "defaults",
    "nofail",
    "_netdev",
    "allow_other",
    "allow_root",
    "default_permissions",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
    "mand",
    "nomand",
    "iversion",
    "noiversion",
];

/// Overlay options that only tune kernel overlayfs (strata always behaves its own way).
const OVERLAY_TUNING: &[&str] = &[
    "index",
    "redirect_dir",
    "xino",
    "nfs_export",
    "userxattr",
    "uuid",
    "verity",
    "fast_ino",
    "noacl",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "static_nlink",
    "noxattrs",
    "plugins",
    "threaded",
    "fsync",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "max_idle_threads",
];

/// Splits on `sep` unless escaped with a backslash; `keep` leaves the escapes in the parts
/// (the option string is split on ',' first, its values on ':' later).
fn split_escaped(s: &str, sep: char, keep: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if keep {
                    cur.push('\\');
                }
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c == sep => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parses one or more `-o` option strings.
pub fn parse(opts: &[String]) -> Result<OverlayOptions, String> {
    let mut o = OverlayOptions::default();
    for s in opts {
        for opt in split_escaped(s, ',', true) {
            if opt.is_empty() {
                continue; // containers-storage passes a trailing empty option
            }
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            match (key, value) {
                ("lowerdir", Some(v)) => {
                    o.spec.lowers = split_escaped(v, ':', false)
                        .into_iter()
                        .filter(|l| !l.is_empty())
                        .map(PathBuf::from)
                        .collect();
                }
                ("upperdir", Some(v)) => o.spec.upper = Some(PathBuf::from(v)),
                ("workdir", Some(v)) => o.spec.work = Some(PathBuf::from(v)),
                ("volatile", None) => o.spec.volatile = true,
                ("metacopy", Some("on")) => o.spec.metacopy = true,
                ("metacopy", Some("off")) => o.spec.metacopy = false,
                ("metacopy", _) => {
                    return Err(format!("metacopy takes on or off, not {opt:?}"));
                }
                ("ro", None) => o.read_only = true,
                ("remount", None) => o.remount = true,
                ("fsname", Some(v)) => o.fsname = Some(v.to_string()),
                ("subtype", Some(_)) => o.ignored.push(opt.clone()),
                (k, _)
                    if GENERIC.contains(&k)
                        || OVERLAY_TUNING.contains(&k)
                        || k.starts_with("x-") =>
                {
                    o.ignored.push(opt.clone())
                }
                (k, _) => return Err(format!("unknown overlay option {k:?}")),
            }
        }
    }
    if o.remount {
        return Ok(o); // the mount exists: no layers to name
    }
    if o.spec.lowers.is_empty() && o.spec.upper.is_none() {
        return Err(
            "no lowerdir given (-o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR])".into(),
        );
    }
    if o.spec.upper.is_some() != o.spec.work.is_some() && !o.read_only {
        return Err("upperdir and workdir go together".into());
    }
    if o.read_only {
        o.spec.upper = None;
        o.spec.work = None;
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_mount() {
        let o = parse(&[
            "lowerdir=/a:/b\\:c,upperdir=/u,workdir=/w,volatile,".into(),
            "rw,nodev".into(),
        ])
        .unwrap();
        assert_eq!(
            o.spec.lowers,
            vec![PathBuf::from("/a"), PathBuf::from("/b:c")]
        );
        assert_eq!(o.spec.upper, Some(PathBuf::from("/u")));
        assert!(o.spec.volatile);
        assert!(parse(&["upperdir=/u".into()]).is_err());
        assert!(parse(&["lowerdir=/a,bogus".into()]).is_err());
        let ro = parse(&["lowerdir=/a".into()]).unwrap();
        assert!(ro.spec.upper.is_none());
        // mount -o remount,ro MNT through mount.fuse: the mount table's options come back.
        let r = parse(&[
            "ro,relatime,remount,user_id=0,group_id=0,default_permissions,allow_other,dev,suid"
                .into(),
        ])
        .unwrap();
        assert!(r.remount && r.read_only);
    }
}
