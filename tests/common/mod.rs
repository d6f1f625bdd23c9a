//! Shared helpers of the integration tests: a temporary store driven through the real `strata`
//! binary, and the busybox images that the shared fixture script builds with skopeo and umoci.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The `strata` binary under test.
pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

/// A store in a temporary directory, removed when dropped.
pub struct TempStore {
    pub dir: tempfile::TempDir,
}

impl TempStore {
    pub fn new() -> TempStore {
        TempStore {
            dir: tempfile::Builder::new()
                .prefix("strata-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// The store root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A `strata --root ROOT` command.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(strata_bin());
        c.arg("--root").arg(self.root());
        c.stdin(Stdio::null());
        c
    }

    /// Runs strata with `args` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run strata")
    }

    /// Runs strata and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8 output")
    }

    /// Runs strata and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "strata {args:?} succeeded but should have failed:\nstdout: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).expect("utf-8 output")
    }

    /// Asserts `strata fsck` finds no problem.
    pub fn assert_fsck_clean(&self) {
        let o = self.run(&["fsck"]);
        assert!(
            o.status.success(),
            "fsck found problems:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The shared folder (`../shared` beside the repository, or `STRATA_SHARED`).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("STRATA_SHARED") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// The busybox images built by `shared/fixtures/make-busybox-images.sh` (built once, then
/// reused: the script's own lock and stamp make this cheap and safe across test binaries).
pub fn busybox_images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = match std::env::var_os("STRATA_FIXTURES_OUT") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/busybox-images"),
        };
        let script = shared_dir().join("fixtures/make-busybox-images.sh");
        let o = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .stdin(Stdio::null())
            .output()
            .expect("run make-busybox-images.sh");
        assert!(
            o.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

/// The digests the fixture script recorded (`digests.json`).
pub fn fixture_digests() -> serde_json::Value {
    let p = busybox_images().join("digests.json");
    serde_json::from_slice(&std::fs::read(&p).expect("read digests.json"))
        .expect("parse digests.json")
}

/// Whether the tests run as root (most store tests need it for owners and device nodes).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command's status and output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs skopeo (asserting success) without a signature policy and, where possible, with an
/// empty private blob-info cache (so the machine-wide cache is neither read nor written), as
/// the fixture script does.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    static PRIVATE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let private = *PRIVATE.get_or_init(|| {
        Path::new("/var/lib/containers/cache").is_dir()
            && Command::new("unshare")
                .args(["-m", "--propagation", "private", "true"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    });
    let mut c = if private {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o size=16m,mode=0700 strata-test-bic /var/lib/containers/cache \
                 && exec skopeo --insecure-policy \"$@\"",
            )
            .arg("skopeo");
        c
    } else {
        let mut c = Command::new("skopeo");
        c.arg("--insecure-policy");
        c
    };
    let o = c
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo");
    assert!(o.status.success(), "skopeo {args:?} failed: {}", text(&o));
    o.stdout
}

/// Runs skopeo and parses what it prints.
pub fn skopeo_json(args: &[&str]) -> Value {
    serde_json::from_slice(&skopeo(args)).expect("skopeo prints JSON")
}

pub mod containers;
pub mod mounts;
