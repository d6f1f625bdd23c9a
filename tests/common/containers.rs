//! Helpers of the runner tests: a store with the default busybox image (built from Debian's
//! busybox-static by `scripts/default-image.sh`, as `scripts/setup.sh` does), strata commands
//! with a time limit, and a guard that removes every container of the store, unmounts what is
//! left under it and kills what still runs from it, also when a test fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{TempStore, strata_bin};

/// How long one strata command may take before the test calls it hung.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// The default image's tarball, built once per test binary.
pub fn default_image_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-default-image");
        std::fs::create_dir_all(&dir).expect("mkdir target/test-default-image");
        // The script writes atomically (a temporary file renamed): binaries may share it.
        let out = dir.join("busybox.tar");
        let o = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/default-image.sh"))
            .arg(&out)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/default-image.sh");
        assert!(
            o.status.success(),
            "default-image.sh failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

/// Runs a command with a time limit (killed and reported after it); `input` goes to its stdin.
pub fn output_with_timeout(mut cmd: Command, input: Option<&[u8]>, limit: Duration) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if d2.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        true
    });
    let out = child.wait_with_output().expect("wait");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let killed = watchdog.join().unwrap_or(false);
    assert!(!killed, "{cmd:?} did not finish within {limit:?}");
    out
}

/// A store with `busybox:latest`, cleaned of its containers when dropped.
pub struct Containers {
    pub store: TempStore,
}

impl Containers {
    /// A new store with the default image imported as `busybox:latest` (as setup.sh does).
    pub fn new() -> Containers {
        let c = Containers {
            store: TempStore::new(),
        };
        c.ok(&[
            "import",
            "-c",
            r#"CMD ["/bin/sh"]"#,
            "-c",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            default_image_tar().to_str().expect("utf-8 path"),
            "busybox:latest",
        ]);
        c
    }

    /// The store root.
    pub fn root(&self) -> PathBuf {
        self.store.root()
    }

    /// A `strata --root ROOT` command.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(strata_bin());
        c.arg("--root").arg(self.root());
        c
    }

    /// Runs strata (time-limited), with `input` on its standard input.
    pub fn run_in(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut c = self.cmd();
        c.args(args);
        output_with_timeout(c, input, CMD_TIMEOUT)
    }

    /// Runs strata (time-limited).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(args, None)
    }

    /// Runs strata, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The exit code, stdout and stderr of a strata command.
    pub fn status(&self, args: &[&str]) -> (i32, String, String) {
        let o = self.run(args);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// The containers' directory of the store.
    pub fn containers_dir(&self) -> PathBuf {
        self.root().join("containers")
    }

    /// Mount points under the store.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(&self.root())
    }

    /// Processes whose command line names the store (monitors and FUSE servers).
    pub fn processes(&self) -> Vec<i32> {
        processes_naming(&self.root())
    }

    /// Waits (up to 10 s) until no process names the store; returns the ones left.
    pub fn wait_no_processes(&self) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let p = self.processes();
            if p.is_empty() || Instant::now() > deadline {
                return p;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Mount points under `root`.
pub fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect()
}

/// Processes whose command line names `root` (monitors and FUSE servers of a store).
pub fn processes_naming(root: &Path) -> Vec<i32> {
    let root = root.display().to_string();
    let mut out = Vec::new();
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(&root) {
            out.push(pid);
        }
    }
    out
}

/// Removes every container of the store at `root`, kills what still runs from it and
/// unmounts what is left under it (for the guards' `Drop`, also when a test fails).
pub fn clean_up_store(root: &Path) {
    let mut ps = Command::new(strata_bin());
    ps.arg("--root").arg(root).args(["ps", "-aq", "--no-trunc"]);
    let o = output_with_timeout(ps, None, CMD_TIMEOUT);
    for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        let mut rm = Command::new(strata_bin());
        rm.arg("--root").arg(root).args(["rm", "-f", id]);
        let _ = output_with_timeout(rm, None, CMD_TIMEOUT);
    }
    for pid in processes_naming(root) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut mounts = mounts_under(root);
    mounts.reverse();
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        clean_up_store(&self.root());
    }
}
