//! `overlay`, `mount` and `umount`: strata's FUSE union mounted by hand (with the option
//! syntax of `mount -t overlay`), for an image of the store, and listed or unmounted.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{Failure, fail};
use crate::cow::UnionSpec;
use crate::fuse::{self, MountOptions, options};
use crate::store::Store;

/// `strata overlay`.
#[derive(Args, Debug)]
pub struct OverlayArgs {
    /// Mount options: lowerdir=L1:L2,upperdir=U,workdir=W (as mount -t overlay), volatile, ro
    #[arg(short = 'o', value_name = "OPTIONS", required = true)]
    pub options: Vec<String>,
    /// Stay in the foreground
    #[arg(short, long)]
    pub foreground: bool,
    /// Request threads (0: the default, two)
    #[arg(long, default_value = "0")]
    pub threads: usize,
    /// [SOURCE] MOUNTPOINT (a source, as mount(8) passes it, is ignored)
    #[arg(required = true, num_args = 1..=2, value_name = "MOUNTPOINT")]
    pub args: Vec<PathBuf>,
}

/// Mounts `spec` and serves it: in the foreground, or in a background process once the mount
/// is ready.
pub fn serve(
    spec: &UnionSpec,
    mountpoint: &Path,
    opts: &MountOptions,
    foreground: bool,
    on_ready: impl FnOnce(),
) -> Result<(), Failure> {
    let ready = if foreground {
        None
    } else {
        Some(
            crate::sys::daemonize()
                .map_err(|e| fail(format!("cannot start the background server: {e}")))?,
        )
    };
    let (session, fs) = match fuse::mount(spec, mountpoint, opts) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("mount {}: {e}", mountpoint.display());
            if let Some(r) = ready {
                r.fail(&msg);
                std::process::exit(1);
            }
            return Err(fail(msg));
        }
    };
    let mode = if opts.passthrough {
        "FUSE passthrough (CAP_SYS_ADMIN)"
    } else {
        "userspace I/O (no CAP_SYS_ADMIN, or STRATA_NO_PASSTHROUGH)"
    };
    let requests = fuse::transport(opts);
    if foreground {
        // The mount log: say what serves file data and what carries requests.
        eprintln!(
            "strata: mounted {}; file data: {mode}; requests: {requests}",
            mountpoint.display()
        );
    }
    log::info!(
        "mounted {}; file data: {mode}; requests: {requests}",
        mountpoint.display()
    );
    fuse::serve(session, &fs, || {
        on_ready();
        if let Some(r) = ready {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            r.ok();
            crate::sys::detach_stdio();
        }
    })
    .map_err(|e| fail(format!("serving {}: {e}", mountpoint.display())))?;
    Ok(())
}

/// `strata overlay -o lowerdir=…[,upperdir=…,workdir=…] [SOURCE] MOUNTPOINT`.
pub fn overlay(a: &OverlayArgs) -> Result<(), Failure> {
    let o = options::parse(&a.options).map_err(fail)?;
    for i in &o.ignored {
        log::debug!("option {i} accepted, no effect");
    }
    let mountpoint = a.args.last().expect("clap requires one").clone();
    if o.remount {
        // `mount -o remount,ro|rw MNT`: only the flags of the existing mount change.
        use nix::mount::{MsFlags, mount};
        let mut flags = MsFlags::MS_REMOUNT;
        if o.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        return mount(None::<&str>, &mountpoint, None::<&str>, flags, None::<&str>)
            .map_err(|e| fail(format!("remount {}: {e}", mountpoint.display())));
    }
    let opts = MountOptions {
        fsname: o.fsname.clone().unwrap_or_else(|| "strata-overlay".into()),
        threads: a.threads,
        ..MountOptions::default()
    };
    serve(&o.spec, &mountpoint, &opts, a.foreground, || {})
}

/// The strata mounts of this machine: (source, mount point).
pub fn strata_mounts() -> Vec<(String, PathBuf)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (src, dir, kind) = (f.next()?, f.next()?, f.next()?);
            // fuser mounts as plain "fuse" when root: strata's mounts are known by their source.
            (kind.starts_with("fuse") && src.starts_with("strata"))
                .then(|| (unescape(src), PathBuf::from(unescape(dir))))
        })
        .collect()
}

/// /proc/mounts escapes spaces and such as `\040`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `strata mount IMAGE [DIR]`: a read-only mount of an image's layers; `strata mount
/// CONTAINER`: the container's union, read-write, at its merged directory (the running
/// container's own mount when it runs); prints the mount point (as `podman mount`).
/// `strata mount`: lists the strata mounts.
pub fn mount(s: &Store, target: Option<&str>, dir: Option<&Path>) -> Result<(), Failure> {
    let Some(name) = target else {
        for (src, dir) in strata_mounts() {
            let id = src
                .strip_prefix("strata:")
                .or_else(|| src.strip_prefix("strata-container:"))
                .unwrap_or(&src);
            println!("{}  {}", &id[..id.len().min(12)], dir.display());
        }
        return Ok(());
    };
    if let Ok(c) = crate::runner::find(s, name) {
        return mount_container(s, &c, dir);
    }
    let r = s.resolve(name)?;
    let layers = s.index().image_layers(&r.id)?;
    s.ensure_layers(&layers)?; // a pulled image's layers are extracted on first use
    let spec = UnionSpec {
        lowers: layers.iter().rev().map(|d| s.layer_diff(d)).collect(),
        ..UnionSpec::default()
    };
    let mountpoint = match dir {
        Some(d) => d.to_path_buf(),
        None => s.root().join("mounts").join(r.id.hex()),
    };
    let fsname = format!("strata:{}", r.id.hex());
    crate::fuse::clear_stale(&mountpoint);
    if strata_mounts()
        .iter()
        .any(|(src, d)| *src == fsname && *d == mountpoint)
    {
        println!("{}", mountpoint.display());
        return Ok(()); // already mounted there
    }
    std::fs::create_dir_all(&mountpoint)
        .map_err(|e| fail(format!("{}: {e}", mountpoint.display())))?;
    let opts = MountOptions {
        fsname,
        ..MountOptions::default()
    };
    serve(&spec, &mountpoint, &opts, false, || {
        println!("{}", mountpoint.display())
    })
}

fn mount_container(
    s: &Store,
    c: &crate::runner::Container,
    dir: Option<&Path>,
) -> Result<(), Failure> {
    let paths = crate::runner::Paths::new(s, c.id());
    let merged = paths.merged();
    if dir.is_some_and(|d| d != merged) {
        return Err(fail(format!(
            "a container is mounted at its own directory ({}), not elsewhere",
            merged.display()
        )));
    }
    crate::fuse::clear_stale(&merged);
    if strata_mounts().iter().any(|(_, d)| *d == merged) {
        println!("{}", merged.display());
        return Ok(()); // its monitor's mount, or an earlier `strata mount`
    }
    let spec = crate::runner::union_spec(s, c).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&merged).map_err(|e| fail(format!("{}: {e}", merged.display())))?;
    let opts = MountOptions {
        fsname: format!("strata-container:{}", c.id()),
        nodev: true,
        ..MountOptions::default()
    };
    serve(&spec, &merged, &opts, false, || {
        println!("{}", merged.display())
    })
}

/// `strata umount DIR|IMAGE|CONTAINER...`.
pub fn umount(s: Option<&Store>, targets: &[String]) -> Result<(), Failure> {
    let mounts = strata_mounts();
    let mut failed = false;
    for t in targets {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let p = Path::new(t);
        if let Ok(canon) =
            std::fs::canonicalize(p).or_else(|_| Ok::<_, std::io::Error>(p.to_path_buf()))
            && (mounts.iter().any(|(_, d)| *d == canon) || p.is_absolute() || t.starts_with('.'))
        {
            dirs.push(canon);
        } else if let Some(store) = s
            && let Ok(c) = crate::runner::find(store, t)
        {
            let merged = crate::runner::Paths::new(store, c.id()).merged();
            if c.is_running() {
                eprintln!("Error: container {t} is running: its mount goes when it stops");
                failed = true;
                continue;
            }
            if mounts.iter().any(|(_, d)| *d == merged) {
                dirs.push(merged);
            }
        } else if let Some(store) = s {
            match store.resolve(t) {
                Ok(r) => {
                    let want = format!("strata:{}", r.id.hex());
                    dirs.extend(
                        mounts
                            .iter()
                            .filter(|(src, _)| *src == want)
                            .map(|(_, d)| d.clone()),
                    );
                }
                Err(e) => {
                    eprintln!("Error: {e}");
                    failed = true;
                    continue;
                }
            }
        }
        if dirs.is_empty() {
            eprintln!("Error: {t} is not mounted by strata");
            failed = true;
        }
        for d in dirs {
            match crate::sys::unmount(&d) {
                Ok(()) => println!("{}", d.display()),
                Err(e) => {
                    eprintln!("Error: umount {}: {e}", d.display());
                    failed = true;
                }
            }
        }
    }
    if failed {
        return Err(Failure {
            message: String::new(),
            code: 1,
        });
    }
    Ok(())
}
