//! The FUSE server: the FUSE operations of a [`crate::cow::Union`] (`adapter`), the two
//! transports that bring them requests — fuser's `/dev/fuse` loop (`dev_fuse`) and FUSE over
//! io_uring (`ring`, its unsafe half in `ring_sys`, and `ring_dispatch`, with our own codec
//! of the wire ABI in `wire`) — and the mounting of it (several request threads, one
//! `/dev/fuse` clone each; passthrough when the process holds CAP_SYS_ADMIN).

pub mod adapter;
pub mod dev_fuse;
pub mod options;
pub mod pool;
pub mod ring;
mod ring_dispatch;
mod ring_sys;
pub mod setid;
pub mod wire;

use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::cow::{Union, UnionSpec};
pub use adapter::FuseFs;

/// The largest write the kernel sends the server in one request (1 MiB: its page limit for
/// one request anyway).
pub const MAX_WRITE: usize = 1 << 20;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The name shown as the mount's source (`mount` and /proc/mounts).
    pub fsname: String,
    /// Request threads (0: the default, two). One thread alone serves a lone writer with
    /// a little less wake-up latency, but background requests (release, forget) then queue
    /// in front of it: measured on the benchmark fixture, creating 10,000 files took 3.2 s
    /// with one thread, 2.2 s with two and 1.7 s with four (untar 4.5, 2.0, 2.5 s). Slow
    /// requests go to worker threads anyway.
    pub threads: usize,
    /// Use FUSE passthrough for file data when allowed.
    pub passthrough: bool,
    /// Take requests over io_uring when the kernel offers it (`ring_dispatch`).
    pub io_uring: bool,
    /// Allow device nodes and setuid files (a container root needs both).
    pub dev_suid: bool,
    /// With `dev_suid`: device nodes stay closed all the same (`nodev`; a container's union:
    /// its image's device nodes must not reach the host's devices).
    pub nodev: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: "strata".into(),
            threads: 0,
            // Both need strata's own /dev/fuse descriptor, which it has when it mounts as root.
            passthrough: crate::sys::euid() == 0
                && crate::sys::has_capability(crate::sys::CAP_SYS_ADMIN)
                && std::env::var_os("STRATA_NO_PASSTHROUGH").is_none(),
            io_uring: crate::sys::euid() == 0 && std::env::var_os("STRATA_NO_IO_URING").is_none(),
            dev_suid: crate::sys::euid() == 0,
            nodev: false,
        }
    }
}

/// Whether the kernel offers FUSE over io_uring to servers (`enable_uring`, Linux 6.14+; off
/// by default: `echo 1 > /sys/module/fuse/parameters/enable_uring` as root turns it on).
pub fn io_uring_offered() -> bool {
    std::fs::read_to_string(IO_URING_PARAM).is_ok_and(|v| v.trim() == "Y")
}

/// The kernel's switch for FUSE over io_uring.
pub const IO_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// How requests will reach a server mounted with `opts` (for logs and `strata info`).
pub fn transport(opts: &MountOptions) -> &'static str {
    match (opts.io_uring, io_uring_offered()) {
        (true, true) => "io_uring (one queue per CPU)",
        (false, _) => "/dev/fuse (io_uring needs root; STRATA_NO_IO_URING unset)",
        (true, false) => "/dev/fuse (the kernel's enable_uring is off)",
    }
}

/// Mounts `spec` at `mountpoint`; the returned session serves it when run (see [`serve`]),
/// through the returned adapter.
pub fn mount(
    spec: &UnionSpec,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<(Session<FuseFs>, FuseFs)> {
    let union = Arc::new(Union::new(spec)?);
    let writable = union.writable();
    let fs = FuseFs::new(union, opts.passthrough, opts.io_uring);
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("strata".into()),
        MountOption::DefaultPermissions,
        if writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
    ];
    if opts.dev_suid {
        cfg.mount_options.push(if opts.nodev {
            MountOption::NoDev
        } else {
            MountOption::Dev
        });
        cfg.mount_options.push(MountOption::Suid);
    }
    cfg.acl = SessionACL::All;
    let threads = match opts.threads {
        0 => 2,
        n => n,
    };
    cfg.n_threads = Some(threads);
    cfg.clone_fd = threads > 1;
    crate::sys::raise_nofile_limit();
    clear_stale(mountpoint);
    if crate::sys::euid() != 0 {
        // Only fusermount3 may mount for other users: fuser does it.
        return Ok((Session::new(fs.clone(), mountpoint, &cfg)?, fs));
    }
    let dev = mount_dev_fuse(mountpoint, opts, writable)?;
    fs.set_dev(dev.try_clone()?);
    Ok((Session::from_fd(fs.clone(), dev, cfg.acl, cfg)?, fs))
}

/// Serves `session` (from [`mount`], with its adapter `fs`) until its mount goes away.
/// `ready` is called once the mount serves requests the way it will — its INIT answered and,
/// with io_uring, the ring registered — so that whoever is told the mount is ready cannot
/// unmount it while the ring's threads are still registering (a kernel race that can leave
/// the unmount hanging).
pub fn serve(session: Session<FuseFs>, fs: &FuseFs, ready: impl FnOnce()) -> std::io::Result<()> {
    let bg = session.spawn()?;
    fs.wait_serving(std::time::Duration::from_secs(5));
    ready();
    bg.join()
}

/// Mounts a new FUSE connection at `mountpoint` (as root) and returns its `/dev/fuse`
/// descriptor. fuser's own mount is not used as root: when its session ends it unmounts
/// `mountpoint` by path once more (0.18 takes an ended connection for a live one), and by
/// then a new mount may be there — a container started right after its `strata mount` was
/// unmounted lost its root that way. A session on our descriptor unmounts nothing: a strata
/// mount ends only when it is unmounted (`strata umount`, `umount`, a stopping container).
fn mount_dev_fuse(
    mountpoint: &Path,
    opts: &MountOptions,
    writable: bool,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, open};
    use nix::mount::{MsFlags, mount};
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let dev = open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    let data = format!(
        "fd={},rootmode={root_mode:o},user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    );
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if opts.dev_suid {
        flags.remove(MsFlags::MS_NOSUID);
        if !opts.nodev {
            flags.remove(MsFlags::MS_NODEV);
        }
    }
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    // Type "fuse", as fuser mounted it: with "fuse.strata", mount(8) would hand a
    // `mount -o remount,ro` to a mount.fuse helper, which runs `strata SOURCE ...`.
    mount(
        Some(opts.fsname.as_str()),
        mountpoint,
        Some("fuse"),
        flags,
        Some(data.as_str()),
    )
    .map_err(std::io::Error::from)?;
    Ok(dev)
}

/// A mount whose server died (kill -9) answers ENOTCONN to everything: detach it, so that a
/// new mount at the same place works instead of hanging or failing.
pub fn clear_stale(mountpoint: &Path) {
    if let Err(e) = std::fs::metadata(mountpoint)
        && e.raw_os_error() == Some(libc::ENOTCONN)
    {
        log::warn!(
            "{}: a stale mount (its server is gone): detaching it",
            mountpoint.display()
        );
        let _ = crate::sys::unmount(mountpoint);
    }
}
