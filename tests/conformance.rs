//! Conformance and integrity suites (`scripts/conformance.sh`), one test per part: pjdfstest on
//! strata against kernel overlayfs, fsx on a new and a copied-up file, and a Debian rootfs
//! workload whose result kernel overlayfs must read back the same. They need root: without it
//! they fail (they never pass silently). The parts run one at a time (they time things, and
//! share the machine's two cores); the script's full logs are in target/conformance/.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// One part at a time, whatever --test-threads says.
static SERIAL: Mutex<()> = Mutex::new(());

fn run_part(part: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "conformance {part}: needs root (kernel overlayfs and FUSE mounts, chroot, user \
         switching); run `cargo test --release --test conformance` as root"
    );
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/conformance.sh");
    let start = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(part)
        .env("STRATA_BIN", env!("CARGO_BIN_EXE_strata"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    println!(
        "---- scripts/conformance.sh {part}: {} in {:.0} s\n{}",
        out.status,
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout)
    );
    if !out.stderr.is_empty() {
        println!("---- stderr\n{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        out.status.success(),
        "scripts/conformance.sh {part} failed ({}); its output is above, full logs in \
         target/conformance/{part}/",
        out.status
    );
}

#[test]
fn pjdfstest_strata_vs_kernel_overlayfs() {
    run_part("pjdfstest");
}

#[test]
fn fsx_new_and_copied_up_files() {
    run_part("fsx");
}

#[test]
fn workload_debian_rootfs_reads_back_on_kernel_overlayfs() {
    run_part("workload");
}
