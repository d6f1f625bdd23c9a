//! The runner: containers on strata's own union mount, with docker's life cycle.
//!
//! A container is a row of the index (`containers`) and a directory `containers/<id>/` in the
//! store: `upper/` and `work/` (its copy-on-write layer), `init/` (a small read-only layer
//! above the image with the mount points docker's "init layer" holds: `/proc`, `/dev`,
//! `/sys`, `/etc/hosts`…, so they never show up in `diff` or `commit`), `merged/` (where its
//! union is mounted while it runs), `hosts`, `hostname`, `resolv.conf`, the logs of a detached
//! container, and `monitor.lock`, which the container's monitor process holds while it lives
//! (so "running" is never a stale word in the index: a dead monitor frees the lock).
//!
//! - [`spec`]: pure: image config + flags → [`spec::ContainerConfig`].
//! - [`monitor`]: starts a container: a FUSE server process for its union, the container
//!   process in new namespaces, forwarding of signals and terminal, exit status, cleanup.
//! - [`rootfs`]: inside the namespaces: mounts, devices, masked paths, pivot_root.
//! - [`process`]: user, capabilities, no_new_privs, working directory, PATH search, exec.
//! - [`changes`]: `diff`, `commit`, `export` and `cp` on a container's layers.

pub mod changes;
pub mod monitor;
pub mod process;
pub mod rootfs;
pub mod spec;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use crate::store::index::{self, ContainerRow};
use crate::store::{self, Store};
use spec::{ContainerConfig, RunOptions};

/// The runner's errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    /// No such container.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// The request conflicts with the container's state.
    #[error("{0}")]
    Conflict(String),
    /// A bad flag or argument.
    #[error("{0}")]
    Invalid(String),
    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The container's command did not start: docker's 125, 126 or 127.
    #[error("{message}")]
    Start { code: i32, message: String },
}

impl Error {
    fn sys(context: impl Into<String>, source: impl Into<std::io::Error>) -> Error {
        Error::Sys {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The exit status `strata run` leaves with for this error (docker's).
    pub fn run_exit_code(&self) -> i32 {
        match self {
            Error::Start { code, .. } => *code,
            _ => 125,
        }
    }
}

/// Result of the runner.
pub type Result<T> = std::result::Result<T, Error>;

/// The files of one container.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(store: &Store, id: &str) -> Paths {
        Paths {
            dir: store.root().join("containers").join(id),
        }
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn init(&self) -> PathBuf {
        self.dir.join("init")
    }
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("monitor.lock")
    }
    pub fn stdout_log(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }
    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }
    pub fn monitor_log(&self) -> PathBuf {
        self.dir.join("monitor.log")
    }
    pub fn etc(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What a container is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Created,
    Running { pid: i32, started: i64 },
    Exited { code: i64, finished: i64 },
}

/// A container: its row, its decoded config and its status.
#[derive(Debug, Clone)]
pub struct Container {
    pub row: ContainerRow,
    pub config: ContainerConfig,
    pub status: Status,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.row.id
    }
    pub fn is_running(&self) -> bool {
        matches!(self.status, Status::Running { .. })
    }
}

/// Whether a monitor process holds the container's lock (so the container is really up).
pub fn monitor_alive(paths: &Paths) -> bool {
    let Ok(f) = File::open(paths.lock()) else {
        return false;
    };
    match Flock::lock(f, FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err(_) => false,
    }
}

/// Blocks until no monitor holds the container's lock (it has finished); the exit status
/// the last monitor left in it, if any.
pub fn wait_monitor(paths: &Paths) -> Option<i64> {
    use std::io::Read;
    let f = File::open(paths.lock()).ok()?;
    let mut l = Flock::lock(f, FlockArg::LockShared).ok()?;
    let mut s = String::new();
    l.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

fn status_of(row: &ContainerRow, paths: &Paths) -> Status {
    if row.state != "running" && monitor_alive(paths) {
        // A monitor holds it but has not recorded the start yet: it is starting.
        return Status::Running {
            pid: row.pid.unwrap_or(0) as i32,
            started: row.started.unwrap_or(row.created),
        };
    }
    match row.state.as_str() {
        "running" => {
            if monitor_alive(paths) {
                Status::Running {
                    pid: row.pid.unwrap_or(0) as i32,
                    started: row.started.unwrap_or(row.created),
                }
            } else {
                // Its monitor is gone (killed, or the machine restarted) without recording an
                // end: as docker after a daemon crash.
                Status::Exited {
                    code: row.exit_code.unwrap_or(255),
                    finished: row.finished.or(row.started).unwrap_or(row.created),
                }
            }
        }
        "exited" => Status::Exited {
            code: row.exit_code.unwrap_or(0),
            finished: row.finished.unwrap_or(row.created),
        },
        _ => Status::Created,
    }
}

fn load(store: &Store, row: ContainerRow) -> Result<Container> {
    let config: ContainerConfig = serde_json::from_str(&row.config)
        .map_err(|e| Error::Invalid(format!("container {}: unreadable config: {e}", row.id)))?;
    let status = status_of(&row, &Paths::new(store, &row.id));
    Ok(Container {
        row,
        config,
        status,
    })
}

/// Every container, newest first.
pub fn list(store: &Store) -> Result<Vec<Container>> {
    store
        .index()
        .containers()?
        .into_iter()
        .map(|r| load(store, r))
        .collect()
}

/// Finds a container by name, full id or unique id prefix.
pub fn find(store: &Store, name: &str) -> Result<Container> {
    let name = name.strip_prefix('/').unwrap_or(name);
    let rows = store.index().containers()?;
    if let Some(r) = rows.iter().find(|r| r.id == name || r.name == name) {
        return load(store, r.clone());
    }
    let matches: Vec<&ContainerRow> = if name.is_empty() {
        Vec::new()
    } else {
        rows.iter().filter(|r| r.id.starts_with(name)).collect()
    };
    match matches.as_slice() {
        [one] => load(store, (*one).clone()),
        [] => Err(Error::NoSuchContainer(name.to_string())),
        _ => Err(Error::Invalid(format!(
            "multiple IDs found with provided prefix: {name}"
        ))),
    }
}

/// Re-reads a container.
pub fn reload(store: &Store, id: &str) -> Result<Option<Container>> {
    match store.index().container(id)? {
        Some(r) => Ok(Some(load(store, r)?)),
        None => Ok(None),
    }
}

/// Creates a container from an image: its config, directories and row (state `created`).
pub fn create(store: &Store, image: &str, opts: &RunOptions) -> Result<Container> {
    relaxed_sync(store);
    let resolved = store.resolve(image)?;
    let raw: Value = serde_json::from_slice(&store.read_blob(&resolved.id)?)
        .map_err(|e| Error::Invalid(format!("{image}: unreadable image config: {e}")))?;
    let image_config = raw.get("config").cloned().unwrap_or(Value::Null);
    // A pulled image's layers are extracted on first use: here, so that a layer that fails
    // its check fails the create, before any container exists.
    store.ensure_layers(&store.index().image_layers(&resolved.id)?)?;
    let id = spec::new_id();
    let name = match &opts.name {
        Some(n) if !spec::valid_name(n) => {
            return Err(Error::Invalid(format!(
                "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        Some(n) => n.trim_start_matches('/').to_string(),
        None => spec::random_name(&id),
    };
    let config = spec::build(&image_config, opts, &id)?;
    let paths = Paths::new(store, &id);
    make_dirs(&paths, &config).inspect_err(|_| {
        let _ = store::remove_any(&paths.dir);
    })?;
    let row = ContainerRow {
        id: id.clone(),
        name,
        image_id: resolved.id.clone(),
        image_ref: image.to_string(),
        command: serde_json::to_string(&config.argv()).expect("strings serialize"),
        state: "created".into(),
        exit_code: None,
        pid: None,
        created: store::now(),
        started: None,
        finished: None,
        config: serde_json::to_string(&config).expect("config serializes"),
    };
    if let Err(e) = store
        .index()
        .write("create container", |c| index::insert_container(c, &row))
    {
        let _ = store::remove_any(&paths.dir);
        return Err(match e {
            store::Error::Conflict(m) => Error::Conflict(m),
            e => e.into(),
        });
    }
    load(store, row)
}

fn make_dirs(paths: &Paths, config: &ContainerConfig) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |what: &Path, e: std::io::Error| Error::sys(format!("create {}", what.display()), e);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&paths.dir)
        .map_err(|e| io(&paths.dir, e))?;
    for d in [paths.upper(), paths.work(), paths.merged()] {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&d)
            .map_err(|e| io(&d, e))?;
    }
    // The init layer: mount points, and nothing else.
    let init = paths.init();
    for d in ["", "dev", "dev/pts", "dev/shm", "proc", "sys", "etc"] {
        let p = init.join(d);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&p)
            .map_err(|e| io(&p, e))?;
    }
    for f in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "dev/console",
    ] {
        let p = init.join(f);
        File::create(&p).map_err(|e| io(&p, e))?;
    }
    let h = &config.hostname;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{h}\n"
    );
    let resolv = if config.network_none {
        String::new()
    } else {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    };
    for (name, text) in [
        ("hosts", hosts),
        ("hostname", format!("{h}\n")),
        ("resolv.conf", resolv),
    ] {
        let p = paths.etc(name);
        std::fs::write(&p, text).map_err(|e| io(&p, e))?;
    }
    Ok(())
}

/// The union a container runs on: its init layer over the image's layers, its upper on top,
/// with metadata-only copy-up. Layers of the image still pending (pulled, never used) are
/// extracted first.
pub fn union_spec(store: &Store, c: &Container) -> Result<crate::cow::UnionSpec> {
    let paths = Paths::new(store, c.id());
    let layers = store.index().image_layers(&c.row.image_id)?;
    store.ensure_layers(&layers)?;
    let mut lowers = vec![paths.init()];
    lowers.extend(layers.iter().rev().map(|d| store.layer_diff(d)));
    Ok(crate::cow::UnionSpec {
        lowers,
        upper: Some(paths.upper()),
        work: Some(paths.work()),
        volatile: false,
        metacopy: true,
    })
}

/// Container rows change at every start and end: this process's commits skip the fsync of
/// the WAL (`synchronous = NORMAL`; the index stays consistent, and a power loss may only
/// forget the last state changes, which the monitor lock tells apart anyway).
pub fn relaxed_sync(store: &Store) {
    let _ = store
        .index()
        .conn()
        .execute_batch("PRAGMA synchronous = NORMAL");
}

/// Sends a signal to a running container's first process.
pub fn kill(store: &Store, c: &Container, sig: Signal) -> Result<()> {
    let Status::Running { pid, .. } = c.status else {
        return Err(Error::Conflict(format!(
            "cannot kill container: {}: container {} is not running",
            c.row.name, c.row.id
        )));
    };
    let _ = store;
    nix::sys::signal::kill(Pid::from_raw(pid), sig)
        .map_err(|e| Error::sys(format!("kill {} {sig}", c.row.name), e))
}

/// Stops a running container: its stop signal (SIGTERM by default), then SIGKILL after
/// `timeout`; returns when its monitor has finished.
pub fn stop(store: &Store, c: &Container, timeout: Duration) -> Result<()> {
    if !c.is_running() {
        return Ok(());
    }
    let paths = Paths::new(store, c.id());
    let sig = c
        .config
        .stop_signal
        .as_deref()
        .and_then(parse_signal)
        .unwrap_or(Signal::SIGTERM);
    let _ = kill(store, c, sig);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !monitor_alive(&paths) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(store, c, Signal::SIGKILL);
    wait_monitor(&paths);
    Ok(())
}

/// Waits until a container stops; its exit code.
pub fn wait(store: &Store, c: &Container) -> Result<i64> {
    let paths = Paths::new(store, c.id());
    // A container never started yet: wait for its start first (docker's `wait` blocks until
    // the container has run and stopped).
    let mut status = c.status.clone();
    while status == Status::Created {
        std::thread::sleep(std::time::Duration::from_millis(50));
        match reload(store, c.id())? {
            Some(now) => status = now.status,
            None => return Err(Error::NoSuchContainer(c.id().to_string())),
        }
    }
    let last = wait_monitor(&paths);
    match reload(store, c.id())? {
        Some(c) => match c.status {
            Status::Exited { code, .. } => Ok(code),
            _ => Ok(last.unwrap_or(0)),
        },
        // Removed (--rm) once it stopped: the status its monitor left in the lock file.
        None => Ok(last.unwrap_or(0)),
    }
}

/// Removes a container (with `force`, a running one is killed first): its mount, its server,
/// its directory and its row.
pub fn remove(store: &Store, c: &Container, force: bool) -> Result<()> {
    let paths = Paths::new(store, c.id());
    if c.is_running() {
        if !force {
            return Err(Error::Conflict(format!(
                "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                c.row.name
            )));
        }
        let _ = kill(store, c, Signal::SIGKILL);
        wait_monitor(&paths);
    }
    // Held while the container goes: a `start` that begins now waits, then finds nothing.
    let _lock = match File::options().write(true).open(paths.lock()) {
        Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Some(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(Error::Conflict(format!(
                    "cannot remove container \"/{}\": it is being started",
                    c.row.name
                )));
            }
            Err(_) => None,
        },
        Err(_) => None,
    };
    unmount_stale(&paths);
    store.index().write("remove container", |conn| {
        index::delete_container(conn, c.id())
    })?;
    store::remove_any(&paths.dir)
        .map_err(|e| Error::sys(format!("remove {}", paths.dir.display()), e))?;
    Ok(())
}

/// Whether the container's union is mounted now (by its running monitor, or by `strata
/// mount`): its merged directory is on another device than the directory holding it.
pub fn is_mounted(paths: &Paths) -> bool {
    use std::os::unix::fs::MetadataExt;
    let merged = paths.merged();
    match (
        std::fs::symlink_metadata(&merged),
        merged.parent().map(std::fs::symlink_metadata),
    ) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        // A dead server's mount is still a mount.
        (Err(e), _) => e.raw_os_error() == Some(libc::ENOTCONN),
        _ => false,
    }
}

/// Unmounts what a dead monitor left mounted at the container's root.
pub fn unmount_stale(paths: &Paths) {
    let merged = paths.merged();
    crate::fuse::clear_stale(&merged);
    if crate::cli::mount::strata_mounts()
        .iter()
        .any(|(_, d)| *d == merged)
    {
        let _ = crate::sys::unmount(&merged);
    }
}

/// Parses a signal name or number (`KILL`, `SIGKILL`, `9`).
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse().ok()
}
