//! A strata server killed with SIGKILL in the middle of a copy-up: no half-copied file is ever
//! visible, `strata umount` clears the stale mount, and a new mount of the same upper shows all
//! data that was fsynced before the kill.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mounts::{StrataMount, have_fuse};

const BIG: usize = 256 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
        .collect()
}

fn work_leftovers(work: &Path) -> Vec<String> {
    fs::read_dir(work)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("#strata"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_server_leaves_no_half_copy_and_keeps_fsynced_data() {
    if !common::is_root() || !have_fuse() {
        panic!("this test needs root and /dev/fuse");
    }
    let t = tempfile::Builder::new()
        .prefix("strata-crash-")
        .tempdir()
        .unwrap();
    let (lower, upper, work, mnt) = (
        t.path().join("lower"),
        t.path().join("upper"),
        t.path().join("work"),
        t.path().join("mnt"),
    );
    for d in [&lower, &upper, &work, &mnt] {
        fs::create_dir(d).unwrap();
    }
    let big = pattern(BIG);
    fs::write(lower.join("big"), &big).unwrap();

    let mut m = StrataMount::new(&[&lower], &upper, &work, &mnt);
    // Data fsynced before the crash.
    let kept = b"written and fsynced before the kill\n";
    let mut f = fs::File::create(mnt.join("kept")).unwrap();
    f.write_all(kept).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // A copy-up of the big lower file (an append opens it for writing), killed midway.
    let target = mnt.join("big");
    let writer = std::thread::spawn(move || {
        fs::OpenOptions::new()
            .append(true)
            .open(&target)
            .and_then(|mut f| f.write_all(b"appended"))
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while work_leftovers(&work).is_empty() && Instant::now() < deadline && !writer.is_finished() {
        std::thread::sleep(Duration::from_micros(200));
    }
    eprintln!("killed while the work dir held {:?}", work_leftovers(&work));
    m.kill9();
    let _ = writer.join();

    // The stale mount is cleared by strata umount.
    let o = std::process::Command::new(common::strata_bin())
        .arg("umount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "strata umount: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(fs::metadata(&mnt).is_ok(), "the mount point is still stale");

    // The upper never holds a half-copied file, whatever moment the kill hit.
    if let Ok(data) = fs::read(upper.join("big")) {
        assert!(
            data.len() >= BIG && data[..BIG] == big[..],
            "upper/big is a partial copy ({} bytes)",
            data.len()
        );
    }
    // A new server on the same upper: fsynced data is there, the big file is whole, and the
    // work directory's leftovers are gone.
    let m2 = StrataMount::new(&[&lower], &upper, &work, &mnt);
    assert_eq!(fs::read(mnt.join("kept")).unwrap(), kept);
    let seen = fs::read(mnt.join("big")).unwrap();
    assert!(
        seen.len() >= BIG && seen[..BIG] == big[..],
        "big is damaged after the crash"
    );
    assert!(
        work_leftovers(&work).is_empty(),
        "work dir leftovers: {:?}",
        work_leftovers(&work)
    );
    drop(m2);
    assert_eq!(
        fs::read(lower.join("big")).unwrap(),
        big,
        "the lower layer was written"
    );
}
