//! The container commands (`run`, `create`, `ps`, `start`, `stop`, `kill`, `restart`, `rm`,
//! `logs`, `exec`, `wait`, `commit`, `diff`, `export`, `cp`): docker's flags, output and exit
//! statuses (`run`, `start -a` and `exec` leave with the command's status, or docker's 125,
//! 126, 127; the others with 1 on failure). The work is the runner's.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::format::{Row, ago, ellipsis, go_time, human_duration, print_rows};
use super::{Failure, fail};
use crate::runner::monitor::{self, ExecOptions};
use crate::runner::spec::RunOptions;
use crate::runner::{self, Container, Paths, Status};
use crate::store::{Store, now};

/// `strata run` and `strata create`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Run the container in the background and print its ID
    #[arg(short, long)]
    pub detach: bool,
    /// Keep STDIN open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to pass the host's value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long)]
    pub user: Option<String>,
    /// Bind mount a host path: SRC:DST[:ro]
    #[arg(short, long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// Container host name
    #[arg(long)]
    pub hostname: Option<String>,
    /// Network: host (the host's, the default) or none (an empty network namespace)
    #[arg(long, alias = "net")]
    pub network: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Mount the container's root filesystem as read only
    #[arg(long)]
    pub read_only: bool,
    /// The image
    pub image: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            name: self.name.clone(),
            env: self.env.clone(),
            env_files: self.env_file.clone(),
            workdir: self.workdir.clone(),
            user: self.user.clone(),
            volumes: self.volume.clone(),
            hostname: self.hostname.clone(),
            network: self.network.clone(),
            entrypoint: self.entrypoint.clone(),
            read_only: self.read_only,
            tty: self.tty,
            interactive: self.interactive,
            auto_remove: self.rm,
            detach: self.detach,
            cmd: self.cmd.clone(),
        }
    }
}

/// `strata ps`.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Format output: a Go-like template, 'table TEMPLATE', or 'json'
    #[arg(long)]
    pub format: Option<String>,
    /// Show the n last created containers (includes all states)
    #[arg(short = 'n', long)]
    pub last: Option<usize>,
    /// Show the latest created container (includes all states)
    #[arg(short, long)]
    pub latest: bool,
}

/// `strata exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Keep STDIN open
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Set environment variables
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Detached mode: run the command in the background (not supported)
    #[arg(short, long, hide = true)]
    pub detach: bool,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// A runner error, for commands that leave with 1.
fn rf(e: runner::Error) -> Failure {
    Failure {
        message: e.to_string(),
        code: 1,
    }
}

/// A runner error of `run`/`start -a`/`exec`: docker's 125/126/127.
fn run_failure(e: runner::Error) -> Failure {
    Failure {
        code: e.run_exit_code(),
        message: e.to_string(),
    }
}

fn exit_with(code: i32) -> Result<(), Failure> {
    if code == 0 {
        return Ok(());
    }
    Err(Failure {
        message: String::new(),
        code,
    })
}

/// `strata run`.
pub fn run(s: &Store, a: &RunArgs) -> Result<(), Failure> {
    let c = runner::create(s, &a.image, &a.options()).map_err(run_failure)?;
    if a.detach {
        match monitor::start_detached(s, &c) {
            Ok(()) => {
                println!("{}", c.id());
                Ok(())
            }
            Err(e) => {
                if a.rm {
                    if let Ok(c) = runner::find(s, c.id()) {
                        let _ = runner::remove(s, &c, true);
                    }
                }
                Err(run_failure(e))
            }
        }
    } else {
        match monitor::start_foreground(s, &c) {
            Ok(code) => exit_with(code),
            Err(e) => {
                // A start that failed early (before the monitor's own clean-up) leaves no
                // container behind with --rm.
                if a.rm
                    && let Ok(c) = runner::find(s, c.id())
                {
                    let _ = runner::remove(s, &c, true);
                }
                Err(run_failure(e))
            }
        }
    }
}

/// `strata create`.
pub fn create(s: &Store, a: &RunArgs) -> Result<(), Failure> {
    let c = runner::create(s, &a.image, &a.options()).map_err(run_failure)?;
    println!("{}", c.id());
    Ok(())
}

/// Docker's STATUS column.
fn status_text(c: &Container) -> String {
    match &c.status {
        Status::Created => "Created".into(),
        Status::Running { started, .. } => format!("Up {}", human_duration(now() - started)),
        Status::Exited { code, finished } => format!("Exited ({code}) {}", ago(*finished)),
    }
}

fn state_word(c: &Container) -> &'static str {
    match c.status {
        Status::Created => "created",
        Status::Running { .. } => "running",
        Status::Exited { .. } => "exited",
    }
}

/// Docker's COMMAND column: the argv joined, cut to 20 characters, quoted.
fn command_text(c: &Container, no_trunc: bool) -> String {
    let argv = c.config.argv();
    let joined = argv.join(" ");
    let s = if no_trunc {
        joined
    } else {
        ellipsis(&joined, 20)
    };
    format!("{s:?}")
}

/// `strata ps`.
pub fn ps(s: &Store, a: &PsArgs) -> Result<(), Failure> {
    let mut all = runner::list(s).map_err(rf)?;
    let limit = if a.latest { Some(1) } else { a.last };
    if let Some(n) = limit {
        all.truncate(n);
    } else if !a.all {
        all.retain(Container::is_running);
    }
    if a.quiet {
        for c in &all {
            println!("{}", if a.no_trunc { c.id() } else { &c.id()[..12] });
        }
        return Ok(());
    }
    let rows: Vec<Row> = all
        .iter()
        .map(|c| {
            vec![
                (
                    "ID",
                    json!(if a.no_trunc {
                        c.id().to_string()
                    } else {
                        c.id()[..12].to_string()
                    }),
                ),
                ("Image", json!(c.row.image_ref)),
                ("Command", json!(command_text(c, a.no_trunc))),
                ("CreatedAt", json!(go_time(c.row.created))),
                ("RunningFor", json!(ago(c.row.created))),
                ("Status", json!(status_text(c))),
                ("Ports", json!("")),
                ("Names", json!(c.row.name)),
                ("State", json!(state_word(c))),
                ("Labels", json!("")),
                (
                    "Mounts",
                    json!(
                        c.config
                            .volumes
                            .iter()
                            .map(|v| v.target.clone())
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ),
                (
                    "Networks",
                    json!(if c.config.network_none {
                        "none"
                    } else {
                        "host"
                    }),
                ),
                ("Size", json!("N/A")),
                ("LocalVolumes", json!("0")),
                ("Platform", json!("")),
            ]
        })
        .collect();
    let headers = [
        ("ID", "CONTAINER ID"),
        ("Image", "IMAGE"),
        ("Command", "COMMAND"),
        ("RunningFor", "CREATED"),
        ("Status", "STATUS"),
        ("Ports", "PORTS"),
        ("Names", "NAMES"),
    ];
    print_rows(&rows, &headers, a.format.as_deref())?;
    Ok(())
}

fn find(s: &Store, name: &str) -> Result<Container, Failure> {
    runner::find(s, name).map_err(rf)
}

/// Runs `f` on each named container, printing the name on success and the error otherwise;
/// fails (1) if any failed.
fn each(
    s: &Store,
    names: &[String],
    mut f: impl FnMut(&Container) -> Result<(), runner::Error>,
) -> Result<(), Failure> {
    let mut failed = false;
    for n in names {
        match runner::find(s, n).and_then(|c| f(&c)) {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
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

/// `strata start [-a] CONTAINER...`.
pub fn start(s: &Store, attach: bool, names: &[String]) -> Result<(), Failure> {
    if attach {
        let [name] = names else {
            return Err(fail(
                "you cannot start and attach multiple containers at once",
            ));
        };
        let c = find(s, name)?;
        if c.is_running() {
            return Err(fail(format!("container {name} is already running")));
        }
        let code = monitor::start_foreground(s, &c).map_err(run_failure)?;
        return exit_with(code);
    }
    each(s, names, |c| {
        if c.is_running() {
            return Ok(());
        }
        monitor::start_detached(s, c)
    })
}

/// `strata stop [-t N] CONTAINER...`.
pub fn stop(s: &Store, timeout: u64, names: &[String]) -> Result<(), Failure> {
    each(s, names, |c| {
        runner::stop(s, c, Duration::from_secs(timeout))
    })
}

/// `strata restart [-t N] CONTAINER...`.
pub fn restart(s: &Store, timeout: u64, names: &[String]) -> Result<(), Failure> {
    each(s, names, |c| {
        runner::stop(s, c, Duration::from_secs(timeout))?;
        let c = runner::find(s, c.id())?;
        monitor::start_detached(s, &c)
    })
}

/// `strata kill [-s SIGNAL] CONTAINER...`.
pub fn kill(s: &Store, signal: &str, names: &[String]) -> Result<(), Failure> {
    let sig =
        runner::parse_signal(signal).ok_or_else(|| fail(format!("Invalid signal: {signal}")))?;
    each(s, names, |c| runner::kill(s, c, sig))
}

/// `strata rm [-f] CONTAINER...`.
pub fn rm(s: &Store, force: bool, names: &[String]) -> Result<(), Failure> {
    each(s, names, |c| runner::remove(s, c, force))
}

/// `strata wait CONTAINER...`: prints each exit code.
pub fn wait(s: &Store, names: &[String]) -> Result<(), Failure> {
    let mut failed = false;
    for n in names {
        match runner::find(s, n).and_then(|c| runner::wait(s, &c)) {
            Ok(code) => println!("{code}"),
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
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

fn copy_file_from(path: &std::path::Path, pos: u64, out: &mut dyn Write) -> u64 {
    use std::io::Seek;
    let Ok(mut f) = std::fs::File::open(path) else {
        return pos;
    };
    if f.seek(std::io::SeekFrom::Start(pos)).is_err() {
        return pos;
    }
    let mut buf = Vec::new();
    let n = f.read_to_end(&mut buf).unwrap_or(0);
    let _ = out.write_all(&buf);
    let _ = out.flush();
    pos + n as u64
}

/// `strata logs [-f] CONTAINER`: what a detached container wrote (standard output, then
/// standard error).
pub fn logs(s: &Store, follow: bool, name: &str) -> Result<(), Failure> {
    let c = find(s, name)?;
    let paths = Paths::new(s, c.id());
    let (mut out_pos, mut err_pos) = (0u64, 0u64);
    loop {
        let running = follow && runner::monitor_alive(&paths);
        out_pos = copy_file_from(&paths.stdout_log(), out_pos, &mut std::io::stdout());
        err_pos = copy_file_from(&paths.stderr_log(), err_pos, &mut std::io::stderr());
        if !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `strata exec`.
pub fn exec(s: &Store, a: &ExecArgs) -> Result<(), Failure> {
    if a.detach {
        return Err(Failure {
            message: "exec -d is not supported".into(),
            code: 125,
        });
    }
    let c = runner::find(s, &a.container).map_err(run_failure)?;
    let opts = ExecOptions {
        interactive: a.interactive,
        tty: a.tty,
        env: a.env.clone(),
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        cmd: a.cmd.clone(),
    };
    let code = monitor::exec_in(&c, &opts).map_err(run_failure)?;
    exit_with(code)
}

/// `strata commit`.
pub fn commit(
    s: &Store,
    container: &str,
    name: Option<&str>,
    message: Option<&str>,
    author: Option<&str>,
) -> Result<(), Failure> {
    let c = find(s, container)?;
    let id = runner::changes::commit(s, &c, name, message, author).map_err(rf)?;
    println!("{id}");
    Ok(())
}

/// `strata diff`.
pub fn diff(s: &Store, container: &str) -> Result<(), Failure> {
    let c = find(s, container)?;
    let mut out = std::io::stdout().lock();
    for ch in runner::changes::diff(s, &c).map_err(rf)? {
        let _ = writeln!(out, "{} {}", ch.kind, ch.path);
    }
    Ok(())
}

/// `strata export [-o FILE] CONTAINER`.
pub fn export(s: &Store, output: Option<&std::path::Path>, container: &str) -> Result<(), Failure> {
    let c = find(s, container)?;
    match output {
        Some(p) => {
            let tmp = p.with_extension("strata-tmp");
            let f =
                std::fs::File::create(&tmp).map_err(|e| fail(format!("{}: {e}", tmp.display())))?;
            let w = runner::changes::export(s, &c, std::io::BufWriter::new(f)).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                rf(e)
            })?;
            w.into_inner()
                .map_err(|e| fail(format!("{}: {}", tmp.display(), e.error())))?;
            std::fs::rename(&tmp, p).map_err(|e| fail(format!("{}: {e}", p.display())))?;
        }
        None => {
            if std::io::stdout().is_terminal() {
                return Err(fail(
                    "cowardly refusing to save to a terminal. Use the -o flag or redirect",
                ));
            }
            let w =
                runner::changes::export(s, &c, std::io::BufWriter::new(std::io::stdout().lock()))
                    .map_err(rf)?;
            let _ = w.into_inner().map(|mut o| o.flush());
        }
    }
    Ok(())
}

/// `strata cp SRC DEST`, one of them `CONTAINER:PATH`.
pub fn cp(s: &Store, src: &str, dest: &str) -> Result<(), Failure> {
    let split = |x: &str| -> Option<(String, String)> {
        if x.starts_with('/') || x.starts_with('.') {
            return None;
        }
        let (c, p) = x.split_once(':')?;
        (!c.is_empty()).then(|| (c.to_string(), p.to_string()))
    };
    match (split(src), split(dest)) {
        (Some(_), Some(_)) => Err(fail("copying between containers is not supported")),
        (None, None) => Err(fail(
            "must specify at least one container source (CONTAINER:PATH)",
        )),
        (Some((c, p)), None) => {
            let c = find(s, &c)?;
            runner::changes::copy_out(s, &c, &p, dest).map_err(rf)
        }
        (None, Some((c, p))) => {
            if src == "-" {
                return Err(fail("copying from standard input is not supported"));
            }
            let c = find(s, &c)?;
            let p = if p.is_empty() { "/".to_string() } else { p };
            runner::changes::copy_in(s, &c, std::path::Path::new(src), &p).map_err(rf)
        }
    }
}

/// `inspect` of a container: docker's document, as far as strata has its fields.
pub fn inspect_doc(s: &Store, c: &Container) -> Result<serde_json::Value, Failure> {
    use crate::store::image::rfc3339;
    let never = "0001-01-01T00:00:00Z".to_string();
    let at = |t: Option<i64>| t.map(|t| rfc3339(t, 0)).unwrap_or_else(|| never.clone());
    let (running, pid, code) = match &c.status {
        Status::Created => (false, 0, 0),
        Status::Running { pid, .. } => (true, *pid, 0),
        Status::Exited { code, .. } => (false, 0, *code),
    };
    let argv = c.config.argv();
    let paths = Paths::new(s, c.id());
    let spec = runner::union_spec(s, c).map_err(|e| fail(e.to_string()))?;
    let join = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    let mounts: Vec<serde_json::Value> = c
        .config
        .volumes
        .iter()
        .map(|v| {
            json!({
                "Type": "bind",
                "Source": v.source.display().to_string(),
                "Destination": v.target,
                "Mode": if v.read_only { "ro" } else { "" },
                "RW": !v.read_only,
                "Propagation": "rprivate",
            })
        })
        .collect();
    let binds: Vec<String> = c
        .config
        .volumes
        .iter()
        .map(|v| {
            let ro = if v.read_only { ":ro" } else { "" };
            format!("{}:{}{ro}", v.source.display(), v.target)
        })
        .collect();
    Ok(json!({
        "Id": c.id(),
        "Created": rfc3339(c.row.created, 0),
        "Path": argv.first().cloned().unwrap_or_default(),
        "Args": argv.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": state_word(c),
            "Running": running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": pid,
            "ExitCode": code,
            "Error": "",
            "StartedAt": at(c.row.started),
            "FinishedAt": at(c.row.finished),
        },
        "Image": c.row.image_id.to_string(),
        "Name": format!("/{}", c.row.name),
        "Driver": "strata",
        "Platform": "linux",
        "HostConfig": {
            "Binds": binds,
            "NetworkMode": if c.config.network_none { "none" } else { "host" },
            "AutoRemove": c.config.auto_remove,
            "ReadonlyRootfs": c.config.read_only,
        },
        "GraphDriver": {
            "Name": "strata",
            "Data": {
                "LowerDir": join(&spec.lowers),
                "UpperDir": paths.upper().display().to_string(),
                "WorkDir": paths.work().display().to_string(),
                "MergedDir": paths.merged().display().to_string(),
            },
        },
        "Mounts": mounts,
        "Config": {
            "Hostname": c.config.hostname,
            "User": c.config.user,
            "Tty": c.config.tty,
            "OpenStdin": c.config.interactive,
            "Env": c.config.env,
            "Cmd": c.config.cmd,
            "Image": c.row.image_ref,
            "WorkingDir": c.config.workdir,
            "Entrypoint": if c.config.entrypoint.is_empty() {
                serde_json::Value::Null
            } else {
                json!(c.config.entrypoint)
            },
            "StopSignal": c.config.stop_signal,
        },
    }))
}
