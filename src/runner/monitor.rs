//! Starting a container and watching it until it ends.
//!
//! The monitor is the `strata` process itself for a foreground `run`/`start -a`, or a
//! background process (new session) for `-d`; it holds `monitor.lock` while it lives. It
//! 1. forks a FUSE server process that mounts the container's union at `merged/`;
//! 2. clones the container's first process into new mount, pid, uts and ipc namespaces (and
//!    network with `--network none`), which sets up its root (`rootfs`) and executes the
//!    command (`process`); a close-on-exec pipe reports a failure before the exec;
//! 3. forwards the signals it receives to that process (and the window size to its terminal),
//!    copies terminal I/O, reaps it and takes its exit status (128+N after a signal N);
//! 4. records the end in the index, unmounts (which ends the server) and, with `--rm`,
//!    removes the container.
//!
//! The server and the container get SIGKILL when the monitor dies (`PR_SET_PDEATHSIG`), so a
//! killed monitor leaves no container running unseen. The monitor has no threads: it forks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::process::{self, StartError};
use super::rootfs::{self, EtcFiles};
use super::{Container, Error, Paths, Result};
use crate::fuse::MountOptions;
use crate::store::index;
use crate::store::{self, Store};

/// Where the container's standard streams go.
enum Streams {
    /// The monitor's own (foreground); stdin only with `-i`.
    Inherit,
    /// Log files (detached).
    Logs,
}

/// Signals forwarded to the container's process (SIGCHLD and SIGWINCH are the monitor's).
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGPIPE,
];

fn blocked_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGWINCH);
    set
}

/// Starts a container in the foreground: returns its exit status when it ends.
pub fn start_foreground(store: &Store, c: &Container) -> Result<i32> {
    run_monitor(store, c, Streams::Inherit, None)
}

/// Starts a container with a background monitor; returns once its command runs (or failed to
/// start: the error carries docker's exit status).
pub fn start_detached(store: &Store, c: &Container) -> Result<()> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    match crate::sys::fork_process().map_err(|e| Error::sys("fork the monitor", e))? {
        ForkResult::Parent { .. } => {
            drop(w);
            // One message (written at once): the monitor's children may keep the pipe open.
            let mut buf = vec![0u8; 4096];
            let n = loop {
                match nix::unistd::read(&r, &mut buf) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Ok(n) => break n,
                    Err(_) => break 0,
                }
            };
            buf.truncate(n);
            match buf.split_first() {
                Some((0, _)) => Ok(()),
                Some((code, msg)) => Err(Error::Start {
                    code: *code as i32,
                    message: String::from_utf8_lossy(msg).into_owned(),
                }),
                None => Err(Error::Invalid(
                    "the container's monitor ended before the container started".into(),
                )),
            }
        }
        ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            // A fresh process: an SQLite connection must not be used across a fork, and this
            // one has the parent's. The pipe goes along as descriptor 3.
            let fail = |m: String| -> ! {
                let mut b = vec![125u8];
                b.extend_from_slice(m.as_bytes());
                let _ = nix::unistd::write(&w, &b);
                std::process::exit(125)
            };
            if let Err(e) = crate::sys::dup_onto(w.as_fd(), 3) {
                fail(format!("dup2: {e}"));
            }
            if w.as_raw_fd() == 3 {
                // dup2 onto itself keeps close-on-exec: clear it.
                let _ = nix::fcntl::fcntl(
                    w.as_fd(),
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                );
            }
            let args: std::result::Result<Vec<std::ffi::CString>, _> = [
                "strata".as_bytes(),
                b"--root",
                store.root().as_os_str().as_encoded_bytes(),
                b"container-monitor",
                b"--notify-fd",
                b"3",
                c.id().as_bytes(),
            ]
            .iter()
            .map(|a| std::ffi::CString::new(*a))
            .collect();
            let Ok(args) = args else {
                fail("a NUL byte in the store path".into())
            };
            let e = match nix::unistd::execv(c"/proc/self/exe", &args) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            fail(format!("exec the monitor: {e}"))
        }
    }
}

/// The detached monitor's process (`strata container-monitor`, started by
/// [`start_detached`]): runs the container and reports its start on `notify`.
pub fn monitor_main(store: &Store, id: &str, notify: Option<OwnedFd>) -> i32 {
    let c = match super::find(store, id) {
        Ok(c) => c,
        Err(e) => {
            report(notify, 125, &e.to_string());
            return 125;
        }
    };
    let paths = Paths::new(store, c.id());
    redirect_monitor_output(&paths);
    match run_monitor(store, &c, Streams::Logs, notify) {
        Ok(code) => code,
        Err(e) => {
            log::error!("container {}: {e}", c.id());
            e.run_exit_code()
        }
    }
}

/// A detached monitor's own messages go to `monitor.log`; it keeps no terminal.
fn redirect_monitor_output(paths: &Paths) {
    crate::sys::detach_stdio();
    if let Ok(f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.monitor_log())
    {
        let _ = crate::sys::dup_onto(f.as_fd(), 2);
    }
}

/// Tells the process that started a detached monitor how the start went.
fn report(notify: Option<OwnedFd>, code: u8, msg: &str) {
    if let Some(fd) = notify {
        let mut b = vec![code];
        b.extend_from_slice(msg.as_bytes());
        let _ = nix::unistd::write(&fd, &b);
    }
}

/// Takes the container's lock (waiting a little: a status check may hold it for a moment).
fn take_lock(paths: &Paths, name: &str) -> Result<Flock<File>> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(paths.lock())
            .map_err(|e| Error::sys(format!("open {}", paths.lock().display()), e))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(Error::Conflict(format!(
                    "container {name} is already running"
                )));
            }
            Err((_, e)) => return Err(Error::sys("lock the container", e)),
        }
    }
}

fn set_state(store: &Store, id: &str, f: impl FnOnce(&mut index::ContainerRow)) -> Result<()> {
    if let Some(mut row) = store.index().container(id)? {
        f(&mut row);
        store.index().write("update container", |conn| {
            index::set_container_state(conn, &row)
        })?;
    }
    Ok(())
}

/// The FUSE server of a container's union: a child process that mounts it, says so, and
/// serves it until it is unmounted.
pub struct Server {
    pid: Pid,
    mountpoint: std::path::PathBuf,
}

impl Server {
    /// Forks the server and waits until the union is mounted at `mountpoint`.
    pub fn spawn(
        spec: &crate::cow::UnionSpec,
        mountpoint: &std::path::Path,
        fsname: String,
        close_in_child: Option<BorrowedFd<'_>>,
    ) -> Result<Server> {
        crate::fuse::clear_stale(mountpoint);
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
        let close_raw = close_in_child.map(|fd| fd.as_raw_fd());
        match crate::sys::fork_process().map_err(|e| Error::sys("fork the FUSE server", e))? {
            ForkResult::Child => {
                drop(r);
                if let Some(raw) = close_raw {
                    // The monitor's lock must not outlive the monitor in this process.
                    crate::sys::close_raw(raw);
                }
                crate::sys::reset_signals();
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                let opts = MountOptions {
                    fsname,
                    nodev: true,
                    ..MountOptions::default()
                };
                let (session, fs) = match crate::fuse::mount(spec, mountpoint, &opts) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = nix::unistd::write(
                            &w,
                            format!("\x01mount {}: {e}", mountpoint.display()).as_bytes(),
                        );
                        std::process::exit(1);
                    }
                };
                let served = crate::fuse::serve(session, &fs, || {
                    let _ = nix::unistd::write(&w, b"\x00");
                    drop(w);
                    crate::sys::detach_stdio();
                });
                let code = match served {
                    Ok(()) => 0,
                    Err(_) => 1,
                };
                std::process::exit(code)
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut buf = Vec::new();
                let _ = File::from(r).read_to_end(&mut buf);
                let server = Server {
                    pid: child,
                    mountpoint: mountpoint.to_path_buf(),
                };
                match buf.split_first() {
                    Some((0, _)) => Ok(server),
                    Some((_, msg)) => {
                        let _ = waitpid(child, None);
                        Err(Error::Invalid(String::from_utf8_lossy(msg).into_owned()))
                    }
                    None => {
                        let _ = waitpid(child, None);
                        Err(Error::Invalid(
                            "the FUSE server ended before mounting".into(),
                        ))
                    }
                }
            }
        }
    }

    /// Unmounts (the server then ends) and reaps the server; kills it if it lingers.
    pub fn stop(self) {
        if let Err(e) = crate::sys::unmount(&self.mountpoint) {
            log::warn!("unmount {}: {e}", self.mountpoint.display());
        }
        if !crate::sys::wait_child_exit(self.pid.as_raw(), Duration::from_secs(5)) {
            log::warn!("the FUSE server {} did not end: killing it", self.pid);
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = crate::sys::unmount(&self.mountpoint);
        }
        let _ = waitpid(self.pid, None);
    }
}

/// A terminal put in raw mode, restored when dropped.
struct RawTerminal {
    saved: Option<termios::Termios>,
}

impl RawTerminal {
    fn new(enable: bool) -> RawTerminal {
        let stdin = std::io::stdin();
        if !enable || !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return RawTerminal { saved: None };
        }
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, t);
        }
    }
}

/// The container process's standard streams, prepared by the monitor.
pub struct ChildIo {
    /// A terminal's slave side (for `-t`): all three streams and the controlling terminal.
    pub tty: Option<OwnedFd>,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// In a child: makes `tty` its controlling terminal (in a new session) and its streams.
fn install_tty(tty: &OwnedFd) -> std::result::Result<(), String> {
    // A session of its own (unless it has one already: `ChildIo::install` makes it).
    if nix::unistd::getsid(None).ok() != Some(nix::unistd::getpid()) {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    }
    crate::sys::set_controlling_terminal(tty.as_fd())
        .map_err(|e| format!("set the controlling terminal: {e}"))?;
    for t in 0..3 {
        crate::sys::dup_onto(tty.as_fd(), t).map_err(|e| format!("dup2: {e}"))?;
    }
    Ok(())
}

impl ChildIo {
    /// In the child: installs the streams (0, 1, 2) and the controlling terminal. Without a
    /// terminal of its own the child still gets a session of its own, so that the terminal
    /// strata runs on is not its controlling terminal (it could push input into the user's
    /// shell with TIOCSTI).
    pub fn install(&self) -> std::result::Result<(), String> {
        if let Some(tty) = &self.tty {
            return install_tty(tty);
        }
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        for (fd, t) in [(&self.stdin, 0), (&self.stdout, 1), (&self.stderr, 2)] {
            if let Some(fd) = fd {
                crate::sys::dup_onto(fd.as_fd(), t).map_err(|e| format!("dup2: {e}"))?;
            }
        }
        Ok(())
    }
}

fn dev_null() -> Result<OwnedFd> {
    Ok(File::open("/dev/null")
        .map_err(|e| Error::sys("open /dev/null", e))?
        .into())
}

fn run_monitor(
    store: &Store,
    c: &Container,
    streams: Streams,
    notify: Option<OwnedFd>,
) -> Result<i32> {
    let paths = Paths::new(store, c.id());
    let lock = match take_lock(&paths, &c.row.name) {
        Ok(l) => l,
        Err(e) => {
            report(notify, 125, &e.to_string());
            return Err(e);
        }
    };
    let mut notify = notify;
    let result = match start_and_watch(store, c, &paths, &lock, streams, &mut notify) {
        Ok(code) => Ok(code),
        Err(e) => {
            report(notify.take(), e.run_exit_code() as u8, &e.to_string());
            Err(e)
        }
    };
    // The exit status, for `wait`ers that hold the lock file open (its directory may be gone
    // with --rm), written before the lock is released.
    let code = match &result {
        Ok(code) => *code,
        Err(e) => e.run_exit_code(),
    };
    {
        use std::os::unix::fs::FileExt;
        let _ = lock.set_len(0);
        let _ = lock.write_at(code.to_string().as_bytes(), 0);
    }
    drop(lock);
    result
}

fn start_and_watch(
    store: &Store,
    c: &Container,
    paths: &Paths,
    lock: &Flock<File>,
    streams: Streams,
    notify: &mut Option<OwnedFd>,
) -> Result<i32> {
    let cfg = &c.config;
    super::relaxed_sync(store);
    if c.row.state != "created" || super::is_mounted(paths) {
        // A start after a crash or a reboot-like restart may find its old mount, and one made
        // by `strata mount` gives way to the container's own.
        super::unmount_stale(paths);
    }
    let spec = super::union_spec(store, c)?;
    let blocked = blocked_set();
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut old_mask))
        .map_err(|e| Error::sys("block signals", e))?;
    let _restore_mask = RestoreMask(old_mask);
    let sfd = SignalFd::with_flags(&blocked, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::sys("signalfd", e))?;

    let server = Server::spawn(
        &spec,
        &paths.merged(),
        format!("strata-container:{}", c.id()),
        Some(lock.as_fd()),
    )?;
    let result = run_container(store, c, paths, &sfd, streams, notify);
    let code = match &result {
        Ok(code) => *code as i64,
        Err(e) => e.run_exit_code() as i64,
    };
    if cfg.auto_remove {
        server.stop();
        if let Err(e) = store.index().write("remove container", |conn| {
            index::delete_container(conn, c.id())
        }) {
            log::error!("container {}: remove its row: {e}", c.id());
        }
        if let Err(e) = store::remove_any(&paths.dir) {
            log::warn!("remove {}: {e}", paths.dir.display());
        }
        return result;
    }
    if let Err(e) = set_state(store, c.id(), |r| {
        r.state = "exited".into();
        r.exit_code = Some(code);
        r.pid = None;
        r.finished = Some(store::now());
    }) {
        log::error!("container {}: record its end: {e}", c.id());
    }
    server.stop();
    result
}

struct RestoreMask(SigSet);
impl Drop for RestoreMask {
    fn drop(&mut self) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

fn run_container(
    store: &Store,
    c: &Container,
    paths: &Paths,
    sfd: &SignalFd,
    streams: Streams,
    notify: &mut Option<OwnedFd>,
) -> Result<i32> {
    let cfg = &c.config;
    // The container's streams.
    // With -t, the container makes its terminal in its own devpts and hands the master side
    // over this socket.
    let console = if cfg.tty {
        Some(crate::sys::seqpacket_pair().map_err(|e| Error::sys("socketpair", e))?)
    } else {
        None
    };
    let io = if cfg.tty {
        ChildIo {
            tty: None,
            stdin: None,
            stdout: None,
            stderr: None,
        }
    } else {
        match streams {
            Streams::Inherit => ChildIo {
                tty: None,
                stdin: Some(if cfg.interactive {
                    std::io::stdin()
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| Error::sys("dup stdin", e))?
                } else {
                    dev_null()?
                }),
                stdout: None,
                stderr: None,
            },
            Streams::Logs => ChildIo {
                tty: None,
                stdin: Some(dev_null()?),
                stdout: Some(open_log(&paths.stdout_log())?),
                stderr: Some(open_log(&paths.stderr_log())?),
            },
        }
    };
    let size = crate::sys::window_size(std::io::stdin().as_fd());
    let etc = EtcFiles {
        hosts: paths.etc("hosts"),
        hostname: paths.etc("hostname"),
        resolv_conf: paths.etc("resolv.conf"),
    };
    let merged = paths.merged();
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if cfg.network_none {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let argv = cfg.argv();
    let pid = crate::sys::clone_process(flags, || {
        // In the container's first process (PID 1 of its namespace).
        let _ = nix::sys::prctl::set_dumpable(false);
        crate::sys::reset_signals();
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        let fail = |code: i32, msg: String| -> isize {
            let mut b = vec![code as u8];
            b.extend_from_slice(msg.as_bytes());
            let _ = nix::unistd::write(&err_w, &b);
            code as isize
        };
        if let Err(m) = io.install() {
            return fail(125, m);
        }
        let req = console.as_ref().map(|(_, child)| rootfs::ConsoleRequest {
            socket: child,
            size,
        });
        match rootfs::setup(cfg, &merged, &etc, req.as_ref()) {
            Ok(Some(tty)) => {
                if let Err(m) = install_tty(&tty) {
                    return fail(125, m);
                }
            }
            Ok(None) => {}
            Err(m) => return fail(125, m),
        }
        let StartError { code, message } = process::exec(cfg, &argv, &[]);
        fail(code, message)
    })
    .map_err(|e| Error::sys("clone the container process", e))?;
    drop(err_w);
    drop(io);
    // The terminal's master side, unless the container failed before making it.
    let master = console.and_then(|(parent, child)| {
        drop(child);
        crate::sys::recv_fd(&parent)
    });
    let _ = set_state(store, c.id(), |r| {
        r.state = "running".into();
        r.pid = Some(pid.as_raw() as i64);
        r.exit_code = None;
        r.started = Some(store::now());
        r.finished = None;
    });
    // EOF: the command was executed; a message: it was not.
    let mut buf = Vec::new();
    let _ = File::from(err_r).read_to_end(&mut buf);
    if let Some((code, msg)) = buf.split_first() {
        let _ = waitpid(pid, None);
        return Err(Error::Start {
            code: *code as i32,
            message: String::from_utf8_lossy(msg).into_owned(),
        });
    }
    report(notify.take(), 0, "");
    let out: Option<OwnedFd> = match (&master, &streams) {
        (Some(_), Streams::Logs) => Some(open_log(&paths.stdout_log())?),
        _ => None,
    };
    let forward_stdin = cfg.interactive && matches!(streams, Streams::Inherit);
    let _raw = RawTerminal::new(master.is_some() && matches!(streams, Streams::Inherit));
    Ok(supervise(
        pid,
        sfd,
        master.as_ref(),
        forward_stdin,
        out.as_ref(),
    ))
}

fn open_log(p: &std::path::Path) -> Result<OwnedFd> {
    Ok(OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| Error::sys(format!("open {}", p.display()), e))?
        .into())
}

fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(0) => return,
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
}

/// Watches the process `pid` until it ends: forwards signals, copies a terminal (`master`)
/// to standard output (or `out`) and standard input to it, reaps it; its exit status.
pub fn supervise(
    pid: Pid,
    sfd: &SignalFd,
    master: Option<&OwnedFd>,
    forward_stdin: bool,
    out: Option<&OwnedFd>,
) -> i32 {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let out_fd: BorrowedFd<'_> = match out {
        Some(o) => o.as_fd(),
        None => stdout.as_fd(),
    };
    let mut master_open = master.is_some();
    let mut stdin_open = forward_stdin && master.is_some();
    let mut status: Option<i32> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if status.is_some() && !master_open {
            break;
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let mi = if master_open {
            if let Some(m) = master {
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
                Some(fds.len() - 1)
            } else {
                None
            }
        } else {
            None
        };
        let si = if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            Some(fds.len() - 1)
        } else {
            None
        };
        // Once the process has ended, its terminal output is drained without waiting.
        let timeout = if status.is_some() {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) if status.is_some() => break,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready = |i: Option<usize>| {
            i.and_then(|i| fds[i].revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (m_ready, s_ready, sig_ready) = (ready(mi), ready(si), ready(Some(0)));
        drop(fds);
        if sig_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                let signo = info.ssi_signo as i32;
                match Signal::try_from(signo) {
                    Ok(Signal::SIGCHLD) => {}
                    Ok(Signal::SIGWINCH) => {
                        if let (Some(m), Some(ws)) =
                            (master, crate::sys::window_size(stdin.as_fd()))
                        {
                            let _ = crate::sys::set_window_size(m.as_fd(), &ws);
                        }
                    }
                    Ok(s) => {
                        let _ = kill(pid, s);
                    }
                    Err(_) => {}
                }
            }
            if status.is_none() {
                loop {
                    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => break,
                        Ok(ws) => {
                            if let Some(code) = exit_code(ws) {
                                status = Some(code);
                                break;
                            }
                        }
                        Err(_) => {
                            status = Some(125);
                            break;
                        }
                    }
                }
                // Other children (none of the container's: it is their reaper) are not ours.
            }
        }
        if m_ready && let Some(m) = master {
            match nix::unistd::read(m.as_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => master_open = false,
                Ok(n) => write_all(out_fd, &buf[..n]),
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => master_open = false,
            }
        } else if status.is_some() {
            master_open = false;
        }
        if s_ready && let Some(m) = master {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) => {
                    stdin_open = false;
                    // End of input: the terminal's EOF character.
                    write_all(m.as_fd(), &[4]);
                }
                Ok(n) => write_all(m.as_fd(), &buf[..n]),
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => stdin_open = false,
            }
        }
    }
    let _ = std::io::stdout().flush();
    status.unwrap_or(125)
}

/// `exec`: runs a command in a running container (joining its namespaces and root, with its
/// user, environment and working directory unless overridden); its exit status.
pub fn exec_in(c: &Container, opts: &ExecOptions) -> Result<i32> {
    let super::Status::Running { pid, .. } = c.status else {
        return Err(Error::Conflict(format!(
            "container {} is not running",
            c.row.id
        )));
    };
    let mut cfg = c.config.clone();
    if let Some(u) = &opts.user {
        cfg.user = u.clone();
    }
    if let Some(w) = &opts.workdir {
        cfg.workdir = w.clone();
    }
    cfg.tty = opts.tty;
    let mut nss = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let p = format!("/proc/{pid}/ns/{name}");
        let f = File::open(&p).map_err(|e| Error::sys(format!("open {p}"), e))?;
        nss.push((f, flag, name));
    }
    let blocked = blocked_set();
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut old_mask))
        .map_err(|e| Error::sys("block signals", e))?;
    let _restore_mask = RestoreMask(old_mask);
    let sfd = SignalFd::with_flags(&blocked, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::sys("signalfd", e))?;
    let console = if opts.tty {
        Some(crate::sys::seqpacket_pair().map_err(|e| Error::sys("socketpair", e))?)
    } else {
        None
    };
    let size = crate::sys::window_size(std::io::stdin().as_fd());
    let io = ChildIo {
        tty: None,
        stdin: if opts.interactive || opts.tty {
            None
        } else {
            Some(dev_null()?)
        },
        stdout: None,
        stderr: None,
    };
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    // Joining a pid namespace applies to the children made afterwards: the forked child is
    // in the container's (this process stays where it is).
    let p = format!("/proc/{pid}/ns/pid");
    let pidns = File::open(&p).map_err(|e| Error::sys(format!("open {p}"), e))?;
    nix::sched::setns(pidns.as_fd(), CloneFlags::CLONE_NEWPID)
        .map_err(|e| Error::sys("join the container's pid namespace", e))?;
    let child = match crate::sys::fork_process().map_err(|e| Error::sys("fork", e))? {
        ForkResult::Child => {
            drop(err_r);
            // Until its exec, this process holds strata's descriptors (the index among
            // them) and joins the container's pid namespace: no process of the container
            // may read them through /proc (it could while the process is dumpable).
            let _ = nix::sys::prctl::set_dumpable(false);
            crate::sys::reset_signals();
            let fail = |code: i32, msg: String| -> ! {
                let mut b = vec![code as u8];
                b.extend_from_slice(msg.as_bytes());
                let _ = nix::unistd::write(&err_w, &b);
                std::process::exit(code)
            };
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            for (f, flag, name) in &nss {
                if let Err(e) = nix::sched::setns(f.as_fd(), *flag) {
                    fail(125, format!("join the container's {name} namespace: {e}"));
                }
            }
            if let Err(m) = io.install() {
                fail(125, m);
            }
            // Nothing of strata's but the error pipe and the console socket goes further.
            let mut keep = vec![err_w.as_raw_fd()];
            if let Some((_, child)) = &console {
                keep.push(child.as_raw_fd());
            }
            crate::sys::close_fds_except(3, &keep);
            if let Err(e) = nix::unistd::chdir("/") {
                fail(125, format!("chdir /: {e}"));
            }
            if let Some((_, child)) = &console {
                // A terminal of the container's own devpts.
                let req = rootfs::ConsoleRequest {
                    socket: child,
                    size,
                };
                let tty = match nix::fcntl::open(
                    "/dev/pts",
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                ) {
                    Ok(pts) => rootfs::new_pty(pts.as_fd(), &req),
                    Err(e) => Err(format!("open /dev/pts: {e}")),
                };
                match tty.and_then(|t| install_tty(&t)) {
                    Ok(()) => {}
                    Err(m) => fail(125, m),
                }
            }
            let StartError { code, message } = process::exec(&cfg, &opts.cmd, &opts.env);
            fail(code, message)
        }
        ForkResult::Parent { child } => child,
    };
    drop(err_w);
    drop(io);
    let master = console.and_then(|(parent, child)| {
        drop(child);
        crate::sys::recv_fd(&parent)
    });
    let mut buf = Vec::new();
    let _ = File::from(err_r).read_to_end(&mut buf);
    if let Some((code, msg)) = buf.split_first() {
        let _ = waitpid(child, None);
        return Err(Error::Start {
            code: *code as i32,
            message: String::from_utf8_lossy(msg).into_owned(),
        });
    }
    let _raw = RawTerminal::new(master.is_some());
    Ok(supervise(
        child,
        &sfd,
        master.as_ref(),
        opts.interactive,
        None,
    ))
}

/// The `exec` flags.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub interactive: bool,
    pub tty: bool,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub cmd: Vec<String>,
}
