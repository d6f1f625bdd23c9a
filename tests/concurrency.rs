//! Concurrency and crash safety of the store, driven through the real `strata` binary: many
//! processes importing, tagging and removing at once; `kill -9` of an import at several moments
//! followed by `system prune`; `system prune` while an import runs; two imports of one tarball.
//!
//! The tests of this file run one at a time (they take a lock): they measure and race processes,
//! and a second heavy test on the same two cores would only blur the moments they aim at.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::TempStore;
use sha2::Digest as _;

/// How long any single strata command may take before the test calls it hung.
const CMD_TIMEOUT: Duration = Duration::from_secs(120);

/// Serializes the tests of this binary (see the module comment).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- tarballs

/// What a generated rootfs tarball holds: `dirs` directories of `files_per_dir` files of about
/// `file_size` bytes each, plus one file of `big` bytes (if not 0). Same spec, same bytes.
#[derive(Clone, Copy)]
struct TarSpec {
    seed: u64,
    dirs: usize,
    files_per_dir: usize,
    file_size: usize,
    big: usize,
}

impl TarSpec {
    /// A few hundred small files and one 5 MB file.
    fn small(seed: u64) -> TarSpec {
        TarSpec {
            seed,
            dirs: 10,
            files_per_dir: 30,
            file_size: 2048,
            big: 5 << 20,
        }
    }

    /// Many files, `mib` MiB in all.
    fn large(seed: u64, mib: usize) -> TarSpec {
        TarSpec {
            seed,
            dirs: 50,
            files_per_dir: mib * 16 / 50,
            file_size: 64 << 10,
            big: 0,
        }
    }
}

/// One MiB of pseudo-random bytes (xorshift64*) from `seed`.
fn pool(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(1 << 20);
    while v.len() < 1 << 20 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v
}

/// `len` bytes of content for file number `n`: a window of the pool stamped with `n`, so that
/// every file differs.
fn content(pool: &[u8], n: u64, len: usize) -> Vec<u8> {
    let span = pool.len() - len.min(pool.len());
    let off = if span == 0 {
        0
    } else {
        (n as usize).wrapping_mul(7919) % span
    };
    let mut v = pool[off..off + len.min(pool.len())].to_vec();
    v.resize(len, 0x5a);
    let stamp = n.to_le_bytes();
    let k = stamp.len().min(v.len());
    v[..k].copy_from_slice(&stamp[..k]);
    v
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// Writes the tarball `spec` describes to `path`.
fn make_tarball(path: &Path, spec: TarSpec) {
    let pool = pool(spec.seed);
    let f = File::create(path).expect("create tarball");
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
    let mut n = spec.seed.wrapping_mul(1_000_003);
    for d in 0..spec.dirs {
        let dir = format!("d{d:03}");
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            &dir,
            std::io::empty(),
        )
        .expect("append directory");
        for i in 0..spec.files_per_dir {
            n += 1;
            let len = spec.file_size - (i % 7) * 97;
            let data = content(&pool, n, len);
            b.append_data(
                &mut header(tar::EntryType::Regular, 0o644, len as u64),
                format!("{dir}/f{i:04}"),
                data.as_slice(),
            )
            .expect("append file");
        }
    }
    if spec.big > 0 {
        let mut data = Vec::with_capacity(spec.big);
        while data.len() < spec.big {
            n += 1;
            let len = (spec.big - data.len()).min(pool.len() / 2);
            data.extend_from_slice(&content(&pool, n, len));
        }
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, spec.big as u64),
            "big.bin",
            data.as_slice(),
        )
        .expect("append big file");
    }
    b.into_inner()
        .expect("finish tarball")
        .flush()
        .expect("flush tarball");
}

/// The sha256 (hex) of a file: for an uncompressed tarball, both the layer blob's digest and
/// its diff_id.
fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).expect("open");
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

// ---- processes

/// The output of one strata command.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    timed_out: bool,
}

impl Run {
    fn ok(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    fn describe(&self) -> String {
        format!(
            "strata {:?}: {}{} after {:?}\nstdout: {}\nstderr: {}",
            self.args,
            self.status,
            if self.timed_out { " (timed out)" } else { "" },
            self.elapsed,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Something in stderr that no command may ever print, whatever it was asked.
    fn forbidden(&self) -> Option<&'static str> {
        let e = self.stderr.to_ascii_lowercase();
        [
            "database is locked",
            "database table is locked",
            "database is busy",
            "sqlite",
            "index: ",
            "panicked",
            "disk i/o error",
            "malformed",
            "could not end lease",
        ]
        .into_iter()
        .find(|p| e.contains(p))
    }
}

/// A running strata command; killed (and reaped) if dropped before it finished, so that a
/// failing test leaves no process behind.
struct Pending {
    child: Option<Child>,
    out: File,
    err: File,
    args: Vec<String>,
    start: Instant,
}

fn spawn(s: &TempStore, args: &[&str]) -> Pending {
    spawn_env(s, args, &[])
}

/// [`spawn`] with variables added to the environment.
fn spawn_env(s: &TempStore, args: &[&str], env: &[(&str, &str)]) -> Pending {
    let out = tempfile::tempfile().expect("stdout file");
    let err = tempfile::tempfile().expect("stderr file");
    let start = Instant::now();
    let child = s
        .cmd()
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::from(out.try_clone().expect("dup")))
        .stderr(Stdio::from(err.try_clone().expect("dup")))
        .spawn()
        .expect("spawn strata");
    Pending {
        child: Some(child),
        out,
        err,
        args: args.iter().map(|a| a.to_string()).collect(),
        start,
    }
}

impl Pending {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("not finished")
    }

    /// Whether the process has exited (it is not reaped by this).
    fn exited(&mut self) -> bool {
        self.child().try_wait().expect("try_wait").is_some()
    }

    /// Sends SIGKILL (`kill -9`).
    fn kill9(&mut self) {
        self.child().kill().expect("kill -9");
    }

    /// Waits for the process (killing it after `timeout`) and collects its output.
    fn finish(mut self, timeout: Duration) -> Run {
        let mut child = self.child.take().expect("finished once");
        let mut timed_out = false;
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if self.start.elapsed() > timeout {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let elapsed = self.start.elapsed();
        let read = |f: &mut File| {
            let mut s = String::new();
            f.rewind().expect("rewind");
            f.read_to_string(&mut s).expect("read output");
            s
        };
        Run {
            args: std::mem::take(&mut self.args),
            status,
            stdout: read(&mut self.out),
            stderr: read(&mut self.err),
            elapsed,
            timed_out,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(s: &TempStore, args: &[&str]) -> Run {
    spawn(s, args).finish(CMD_TIMEOUT)
}

/// Runs a command that must succeed and print nothing alarming; returns its stdout.
fn must(s: &TempStore, args: &[&str]) -> String {
    let r = run(s, args);
    assert!(r.ok(), "{}", r.describe());
    assert!(r.forbidden().is_none(), "{}", r.describe());
    r.stdout
}

// ---- the store's directories

fn names_in(p: &Path) -> Vec<String> {
    match fs::read_dir(p) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| {
                    e.expect("read dir")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            v.sort();
            v
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", p.display()),
    }
}

/// Bytes in the regular files directly inside `p` (the ingests in `tmp/`).
fn top_file_bytes(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn sub(s: &TempStore, d: &str) -> PathBuf {
    s.root().join(d)
}

/// Asserts tmp/ and trash/ are empty, and layers/ and blobs/sha256/ hold `layers` and `blobs`
/// entries.
fn assert_dirs(s: &TempStore, layers: usize, blobs: usize, when: &str) {
    for d in ["tmp", "trash"] {
        let left = names_in(&sub(s, d));
        assert!(left.is_empty(), "{when}: {d}/ is not empty: {left:?}");
    }
    let l = names_in(&sub(s, "layers"));
    assert_eq!(l.len(), layers, "{when}: layers/ holds {l:?}");
    let b = names_in(&sub(s, "blobs/sha256"));
    assert_eq!(b.len(), blobs, "{when}: blobs/sha256/ holds {b:?}");
}

/// Image ids (`images -q --no-trunc`), deduplicated.
fn image_ids(s: &TempStore) -> BTreeSet<String> {
    must(s, &["images", "-q", "--no-trunc"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Inspects `names` (all must resolve) and returns the set of blob and layer hexes they use:
/// (blobs, layers). Imports are uncompressed, so a layer's blob digest is its diff_id.
fn inspect_usage(s: &TempStore, names: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut blobs, mut layers) = (BTreeSet::new(), BTreeSet::new());
    if names.is_empty() {
        return (blobs, layers);
    }
    let mut args = vec!["inspect"];
    args.extend(names.iter().map(String::as_str));
    let out = must(s, &args);
    let docs: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    let hex = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .expect("a sha256 digest")
            .to_string()
    };
    for d in docs.as_array().expect("an array") {
        blobs.insert(hex(&d["Id"]));
        blobs.insert(hex(&d["Descriptor"]["digest"]));
        for l in d["RootFS"]["Layers"].as_array().expect("layers") {
            blobs.insert(hex(l));
            layers.insert(hex(l));
        }
    }
    (blobs, layers)
}

/// Checks that every tag and every image can be inspected, and that blobs/ and layers/ hold
/// exactly what the images use: nothing lost, nothing leaked.
fn assert_consistent(s: &TempStore, when: &str) {
    let tags: Vec<String> = must(s, &["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .filter(|l| *l != "<none>:<none>")
        .map(str::to_string)
        .collect();
    inspect_usage(s, &tags);
    let ids: Vec<String> = image_ids(s).into_iter().collect();
    let (blobs, layers) = inspect_usage(s, &ids);
    let on_disk_layers: BTreeSet<String> = names_in(&sub(s, "layers")).into_iter().collect();
    let on_disk_blobs: BTreeSet<String> = names_in(&sub(s, "blobs/sha256")).into_iter().collect();
    assert_eq!(
        on_disk_layers, layers,
        "{when}: layers/ vs the images' layers"
    );
    assert_eq!(on_disk_blobs, blobs, "{when}: blobs/ vs the images' blobs");
}

/// Waits until `cond` holds or the process exits; returns whether `cond` held.
fn poll_until(p: &mut Pending, what: &str, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + CMD_TIMEOUT;
    loop {
        if cond() {
            return true;
        }
        if p.exited() {
            return false;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(300));
    }
}

// ---- 1. many processes at once

/// What a worker's step may do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Imports and tags of the worker's own names, and removing its own alias (nobody else
    /// touches it and its image keeps two tags meanwhile): must succeed.
    Success,
    /// Removing what other workers use: may find it gone, or refuse with a conflict.
    MayBeGone,
}

struct Step {
    worker: usize,
    expect: Expect,
    run: Run,
}

#[allow(clippy::too_many_arguments)]
fn worker(
    s: &TempStore,
    i: usize,
    iterations: usize,
    tars: &[PathBuf],
    own_tar: &Path,
    start: &Barrier,
    published: &Mutex<Vec<(usize, String)>>,
    steps: &Mutex<Vec<Step>>,
) {
    let record = |expect: Expect, r: Run| {
        steps.lock().unwrap().push(Step {
            worker: i,
            expect,
            run: r,
        });
    };
    for k in 0..iterations {
        let tar = match (i + k) % 3 {
            0 => tars[0].as_path(),
            1 => tars[1].as_path(),
            _ => own_tar,
        };
        let tar = tar.to_str().expect("utf-8 path");
        let img = format!("w{i}/img:{k}");
        let alias = format!("w{i}/alias:{k}");
        let p = spawn(s, &["import", tar, &img]);
        if k == 0 {
            // Every worker's first strata process is started before any is waited for.
            start.wait();
        }
        let r = p.finish(CMD_TIMEOUT);
        let id = r.stdout.trim().to_string();
        let imported = r.ok();
        record(Expect::Success, r);
        if !imported {
            continue;
        }
        record(Expect::Success, run(s, &["tag", &img, &alias]));
        // Only now (two tags) may others try to remove it by id: without -f, a conflict.
        published.lock().unwrap().push((i, id));
        let shared = format!("shared:s{}", (i + k) % 3);
        record(Expect::Success, run(s, &["tag", &img, &shared]));
        let other_shared = format!("shared:s{}", (i + k + 1) % 3);
        let mut rmi = vec!["rmi"];
        if i % 2 == 0 {
            rmi.push("-f");
        }
        rmi.push(&other_shared);
        record(Expect::MayBeGone, run(s, &rmi));
        let victim = {
            let p = published.lock().unwrap();
            let others: Vec<&String> = p
                .iter()
                .filter(|(w, _)| *w != i)
                .map(|(_, id)| id)
                .collect();
            (!others.is_empty()).then(|| others[(i * 5 + k * 3) % others.len()].clone())
        };
        if let Some(v) = victim {
            record(Expect::MayBeGone, run(s, &["rmi", &v]));
        }
        record(Expect::Success, run(s, &["rmi", &alias]));
        if k % 2 == 1 {
            // Its last own tag: by now another worker may have removed the image by id.
            record(Expect::MayBeGone, run(s, &["rmi", &img]));
        }
        if i % 4 == 0 {
            record(Expect::Success, run(s, &["system", "prune", "-f"]));
        }
    }
}

#[test]
fn many_processes_import_tag_and_remove_at_once() {
    let _serial = serial();
    let t0 = Instant::now();
    let s = TempStore::new();
    const WORKERS: usize = 8;
    const ITERATIONS: usize = 5;
    let tar = |name: &str, seed: u64| {
        let p = s.dir.path().join(name);
        make_tarball(&p, TarSpec::small(seed));
        p
    };
    let shared = vec![tar("shared0.tar", 1), tar("shared1.tar", 2)];
    let own: Vec<PathBuf> = (0..WORKERS)
        .map(|i| tar(&format!("own{i}.tar"), 100 + i as u64))
        .collect();
    let made = t0.elapsed();

    // The store does not exist yet: the first processes also race to create it.
    let start = Barrier::new(WORKERS);
    let published = Mutex::new(Vec::new());
    let steps = Mutex::new(Vec::new());
    let t1 = Instant::now();
    std::thread::scope(|sc| {
        for (i, own_tar) in own.iter().enumerate() {
            let (s, shared, start, published, steps) = (&s, &shared, &start, &published, &steps);
            sc.spawn(move || worker(s, i, ITERATIONS, shared, own_tar, start, published, steps));
        }
    });
    let ran = t1.elapsed();

    let steps = steps.into_inner().unwrap();
    let mut problems = Vec::new();
    let (mut gone, mut conflicts) = (0, 0);
    for st in &steps {
        let r = &st.run;
        if let Some(p) = r.forbidden() {
            problems.push(format!(
                "worker {}: {p:?} in stderr: {}",
                st.worker,
                r.describe()
            ));
            continue;
        }
        if r.ok() {
            continue;
        }
        let acceptable = st.expect == Expect::MayBeGone
            && !r.timed_out
            && r.status.code() == Some(1)
            && r.stderr.lines().all(|l| {
                if l.contains("No such image") {
                    gone += 1;
                    true
                } else if l.contains("conflict") {
                    conflicts += 1;
                    true
                } else {
                    false
                }
            });
        if !acceptable {
            problems.push(format!("worker {}: {}", st.worker, r.describe()));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} steps went wrong:\n{}",
        problems.len(),
        steps.len(),
        problems.join("\n\n")
    );
    let imports = steps.iter().filter(|st| st.run.args[0] == "import").count();
    assert_eq!(imports, WORKERS * ITERATIONS);

    s.assert_fsck_clean();
    assert_consistent(&s, "after the workers");
    must(&s, &["system", "prune", "-f"]);
    s.assert_fsck_clean();
    assert_consistent(&s, "after prune");
    let layers = names_in(&sub(&s, "layers")).len();
    assert!(
        layers <= 2 + WORKERS,
        "{layers} layers for {} tarballs",
        2 + WORKERS
    );
    eprintln!(
        "many_processes: {} steps ({imports} imports, {gone} already gone, {conflicts} conflicts), \
         {} images and {layers} layers left; tarballs {made:?}, workers {ran:?}, total {:?}",
        steps.len(),
        image_ids(&s).len(),
        t0.elapsed()
    );
}

// ---- 2. kill -9 during an import

/// When to kill an import, once `tmp/` has content.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// This long after `tmp/` has content.
    Delay(Duration),
    /// Once the blob ingest in `tmp/` holds this many bytes (extraction in full swing).
    Ingested(u64),
    /// Once the layer blob is in `blobs/` (extracted; the layer is being synced, indexed and
    /// committed).
    BlobStored,
    /// Once the layer is in `layers/` (only the config, manifest and image rows are left).
    LayerStored,
}

enum Outcome {
    /// Killed by SIGKILL after this long.
    Killed(Duration),
    /// The import finished (successfully) before the kill.
    Finished,
}

/// Starts `import tar name` and kills it with SIGKILL at `moment`.
fn kill_import_at(s: &TempStore, tar: &Path, name: &str, moment: Moment) -> Outcome {
    let tmp = sub(s, "tmp");
    let mut p = spawn(s, &["import", tar.to_str().expect("utf-8"), name]);
    let reached = poll_until(&mut p, "tmp/ content", || !names_in(&tmp).is_empty())
        && match moment {
            Moment::Delay(d) => {
                std::thread::sleep(d);
                true
            }
            Moment::Ingested(n) => {
                poll_until(&mut p, "ingest progress", || top_file_bytes(&tmp) >= n)
            }
            Moment::BlobStored => poll_until(&mut p, "the layer blob", || {
                !names_in(&sub(s, "blobs/sha256")).is_empty()
            }),
            Moment::LayerStored => poll_until(&mut p, "the layer", || {
                !names_in(&sub(s, "layers")).is_empty()
            }),
        };
    let at = p.start.elapsed();
    if reached {
        p.kill9();
    }
    let r = p.finish(CMD_TIMEOUT);
    if r.status.signal() == Some(libc::SIGKILL) {
        Outcome::Killed(at)
    } else {
        assert!(r.ok(), "the import failed on its own: {}", r.describe());
        Outcome::Finished
    }
}

/// After a killed import: `fsck` may complain but must work, no image is listed, and after
/// `system prune` the store is clean and holds `layers` layers and `blobs` blobs.
fn check_after_kill(s: &TempStore, images: usize, layers: usize, blobs: usize, when: &str) -> bool {
    let f = run(s, &["fsck"]);
    assert!(
        matches!(f.status.code(), Some(0 | 1)) && f.forbidden().is_none(),
        "{when}: fsck: {}",
        f.describe()
    );
    let n = image_ids(s).len();
    assert_eq!(n, images, "{when}: images listed after the kill");
    must(s, &["system", "prune", "-f"]);
    s.assert_fsck_clean();
    assert_dirs(s, layers, blobs, &format!("{when}, after prune"));
    assert_consistent(s, when);
    !f.ok()
}

/// Phases of a full import of `tar`: (tmp/ has content, blob stored, layer stored, done).
fn measure_import(s: &TempStore, tar: &Path) -> [Duration; 4] {
    let mut p = spawn(s, &["import", tar.to_str().expect("utf-8"), "baseline:1"]);
    let mut at = [Duration::ZERO; 3];
    let dirs = [sub(s, "tmp"), sub(s, "blobs/sha256"), sub(s, "layers")];
    for (k, d) in dirs.iter().enumerate() {
        poll_until(&mut p, "a phase", || !names_in(d).is_empty());
        at[k] = p.start.elapsed();
    }
    let r = p.finish(CMD_TIMEOUT);
    assert!(r.ok(), "{}", r.describe());
    [at[0], at[1], at[2], r.elapsed]
}

/// Kills an import of `tar` (into an empty store) at `m`; when the import was faster than the
/// kill, removes its image and tries again. Returns when it was killed, and the attempt.
fn kill_import_retrying(s: &TempStore, tar: &Path, m: Moment) -> (Duration, usize) {
    for attempt in 1..=5 {
        let name = format!("crash:{attempt}");
        match kill_import_at(s, tar, &name, m) {
            Outcome::Killed(at) => return (at, attempt),
            Outcome::Finished => {
                must(s, &["rmi", &name]);
                must(s, &["system", "prune", "-f"]);
                assert_dirs(s, 0, 0, "after an import that was too fast to kill");
            }
        }
    }
    panic!("the import always finished before the kill at {m:?}");
}

#[test]
fn kill_9_during_import_then_prune_leaves_a_clean_empty_store() {
    let _serial = serial();
    let t0 = Instant::now();
    let s = TempStore::new();
    let tar = s.dir.path().join("big.tar");
    make_tarball(&tar, TarSpec::large(7, 200));
    let size = fs::metadata(&tar).unwrap().len();
    let made = t0.elapsed();

    let phases = measure_import(&s, &tar);
    must(&s, &["rmi", "baseline:1"]);
    assert_dirs(&s, 0, 0, "after removing the baseline image");
    s.assert_fsck_clean();

    let mut report = vec![format!(
        "kill_9: tarball {} MB in {made:?}; a full import: tmp {:?}, blob {:?}, layer {:?}, done {:?}",
        size >> 20,
        phases[0],
        phases[1],
        phases[2],
        phases[3]
    )];
    let moments = [
        Moment::Delay(Duration::from_millis(50)),
        Moment::Ingested(size / 2),
        Moment::BlobStored,
        Moment::LayerStored,
    ];
    for m in moments {
        let (at, attempts) = kill_import_retrying(&s, &tar, m);
        let dirty = check_after_kill(&s, 0, 0, 0, &format!("kill at {m:?}"));
        report.push(format!(
            "  killed at {m:?} after {at:?} (attempt {attempts}); fsck before prune: {}",
            if dirty { "problems" } else { "clean" }
        ));
    }

    // Killed, then the same tarball imported again straight away, with no prune in between.
    for m in [Moment::Ingested(size / 3), Moment::BlobStored] {
        let (at, _) = kill_import_retrying(&s, &tar, m);
        let again = run(&s, &["import", tar.to_str().unwrap(), "again:1"]);
        assert!(
            again.ok(),
            "re-import after a kill at {m:?}: {}",
            again.describe()
        );
        assert!(again.forbidden().is_none(), "{}", again.describe());
        let dirty = check_after_kill(&s, 1, 1, 3, &format!("re-import after a kill at {m:?}"));
        must(&s, &["inspect", "again:1"]);
        report.push(format!(
            "  killed at {m:?} after {at:?}, re-imported in {:?}; fsck before prune: {}",
            again.elapsed,
            if dirty { "problems" } else { "clean" }
        ));
        must(&s, &["rmi", "again:1"]);
        assert_dirs(&s, 0, 0, "after removing the re-imported image");
    }
    s.assert_fsck_clean();
    report.push(format!("  total {:?}", t0.elapsed()));
    eprintln!("{}", report.join("\n"));
}

// ---- 3. prune while an import runs

/// Whether nobody holds the index's write lock (a `BEGIN IMMEDIATE` that does not wait).
fn write_lock_free(s: &TempStore) -> bool {
    let c = rusqlite::Connection::open(s.root().join("index.db")).expect("open the index");
    c.busy_timeout(Duration::ZERO).expect("no busy wait");
    match c.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => {
            c.execute_batch("ROLLBACK").expect("rollback");
            true
        }
        Err(_) => false,
    }
}

/// The state letter of a process (`R`, `S`, `T`, `Z`…), from /proc.
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn signal(p: &mut Pending, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(p.child().id() as i32);
    nix::sys::signal::kill(pid, sig).expect("signal the import");
}

/// Stops the process (SIGSTOP) at a point where it holds no write transaction, so that other
/// processes can write meanwhile. False if it exited first.
fn pause_outside_write(s: &TempStore, p: &mut Pending) -> bool {
    use nix::sys::signal::Signal;
    let pid = p.child().id();
    for _ in 0..1000 {
        signal(p, Signal::SIGSTOP);
        loop {
            match proc_state(pid) {
                Some('T') | Some('t') => break,
                Some('Z') | None => return false,
                _ => std::thread::sleep(Duration::from_micros(100)),
            }
        }
        if write_lock_free(s) {
            return true;
        }
        signal(p, Signal::SIGCONT);
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the import always held the write lock");
}

#[test]
fn prune_during_an_import_does_not_break_it() {
    let _serial = serial();
    let t0 = Instant::now();
    let s = TempStore::new();
    let tar = s.dir.path().join("big.tar");
    make_tarball(&tar, TarSpec::large(11, 200));
    let t = tar.to_str().unwrap();
    // Something for prune to remove meanwhile: a dangling image and a killed import's leftovers.
    let small = s.dir.path().join("small.tar");
    make_tarball(&small, TarSpec::small(12));
    must(&s, &["import", small.to_str().unwrap()]);
    assert!(matches!(
        kill_import_at(
            &s,
            &tar,
            "killed:1",
            Moment::Delay(Duration::from_millis(30))
        ),
        Outcome::Killed(_)
    ));
    let mut report = Vec::new();

    // Prunes one after the other for as long as an import runs.
    let mut p = spawn(&s, &["import", t, "long:1"]);
    let mut during = 0;
    let mut prunes = Vec::new();
    while !p.exited() {
        let r = run(&s, &["system", "prune", "-f"]);
        assert!(r.ok() && r.forbidden().is_none(), "{}", r.describe());
        if !p.exited() {
            during += 1;
        }
        prunes.push(r.elapsed);
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = p.finish(CMD_TIMEOUT);
    assert!(r.ok(), "the import under prune failed: {}", r.describe());
    assert!(r.forbidden().is_none(), "{}", r.describe());
    assert!(during >= 3, "only {during} prunes ran during the import");
    assert_eq!(image_ids(&s), BTreeSet::from([r.stdout.trim().to_string()]));
    s.assert_fsck_clean();
    assert_dirs(&s, 1, 3, "after the import");
    report.push(format!(
        "prune_during_import: {during} prunes (each {:?}..{:?}) during an import of {:?}",
        prunes.iter().min().unwrap(),
        prunes.iter().max().unwrap(),
        r.elapsed
    ));

    // Prunes while the import is stopped at its most exposed moments: extracting; layer blob
    // stored but no layer yet; layer stored but no image yet. Only its lease protects them.
    for m in [
        Moment::Delay(Duration::from_millis(50)),
        Moment::BlobStored,
        Moment::LayerStored,
    ] {
        // The tarball's layer and blob are in the store already: remove them so that this
        // import stores them again.
        for id in image_ids(&s) {
            must(&s, &["rmi", "-f", &id]);
        }
        assert_dirs(&s, 0, 0, "before a pinned import");
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts <= 5, "the import always finished before {m:?}");
            let name = format!("pinned:{attempts}");
            // Between the layer and the image there is too little time to catch by polling
            // (five attempts in a row missed it in CI): there the import stops itself.
            let stops_itself = matches!(m, Moment::LayerStored);
            let env: &[(&str, &str)] = if stops_itself {
                &[(
                    strata::store::pause::PAUSE_AT_ENV,
                    strata::store::pause::IMPORT_LAYER_STORED,
                )]
            } else {
                &[]
            };
            let mut p = spawn_env(&s, &["import", t, &name], env);
            let cond = |s: &TempStore| match m {
                Moment::Delay(_) | Moment::Ingested(_) => !names_in(&sub(s, "tmp")).is_empty(),
                Moment::BlobStored => !names_in(&sub(s, "blobs/sha256")).is_empty(),
                Moment::LayerStored => !names_in(&sub(s, "layers")).is_empty(),
            };
            if stops_itself {
                let pid = p.child().id();
                let stopped = poll_until(&mut p, "the import to stop itself", || {
                    matches!(proc_state(pid), Some('T') | Some('t'))
                });
                assert!(stopped, "the import did not stop at its pause point");
                assert!(cond(&s), "the import stopped before storing its layer");
                assert!(write_lock_free(&s), "the import paused inside a write");
            }
            let reached = stops_itself || poll_until(&mut p, "the moment", || cond(&s));
            if let Moment::Delay(d) = m {
                std::thread::sleep(d);
            }
            if !reached || (!stops_itself && !pause_outside_write(&s, &mut p)) {
                let r = p.finish(CMD_TIMEOUT);
                assert!(r.ok(), "{}", r.describe());
                must(&s, &["rmi", &name]);
                continue;
            }
            let at = p.start.elapsed();
            let before = ["tmp", "layers", "blobs/sha256"].map(|d| names_in(&sub(&s, d)));
            for _ in 0..3 {
                let r = run(&s, &["system", "prune", "-f"]);
                assert!(r.ok() && r.forbidden().is_none(), "{}", r.describe());
            }
            let after = ["tmp", "layers", "blobs/sha256"].map(|d| names_in(&sub(&s, d)));
            assert_eq!(before, after, "prune removed what a live import holds");
            signal(&mut p, nix::sys::signal::Signal::SIGCONT);
            let r = p.finish(CMD_TIMEOUT);
            assert!(
                r.ok(),
                "the import stopped at {m:?} failed: {}",
                r.describe()
            );
            assert!(r.forbidden().is_none(), "{}", r.describe());
            assert_eq!(image_ids(&s), BTreeSet::from([r.stdout.trim().to_string()]));
            s.assert_fsck_clean();
            assert_dirs(&s, 1, 3, &format!("after the import stopped at {m:?}"));
            assert_consistent(&s, "after a pinned import");
            report.push(format!(
                "  3 prunes while the import was stopped at {m:?} (after {at:?}, attempt {attempts})"
            ));
            break;
        }
    }
    must(&s, &["system", "prune", "-f"]);
    s.assert_fsck_clean();
    assert_dirs(&s, 1, 3, "after a last prune");
    report.push(format!("  total {:?}", t0.elapsed()));
    eprintln!("{}", report.join("\n"));
}

// ---- 4. two imports of one tarball at once

#[test]
fn two_concurrent_imports_of_one_tarball_store_the_layer_once() {
    let _serial = serial();
    let t0 = Instant::now();
    let s = TempStore::new();
    let tar = s.dir.path().join("same.tar");
    make_tarball(&tar, TarSpec::large(21, 64));
    let hex = sha256_file(&tar);
    let t = tar.to_str().unwrap();
    // Once on a fresh store (both also create it), once more on the existing one.
    let mut times = Vec::new();
    for round in 0..2 {
        let (a, b) = (format!("same:a{round}"), format!("same:b{round}"));
        let pa = spawn(&s, &["import", t, &a]);
        let pb = spawn(&s, &["import", t, &b]);
        let (ra, rb) = (pa.finish(CMD_TIMEOUT), pb.finish(CMD_TIMEOUT));
        for r in [&ra, &rb] {
            assert!(r.ok() && r.forbidden().is_none(), "{}", r.describe());
        }
        times.push((ra.elapsed, rb.elapsed));
        assert_eq!(names_in(&sub(&s, "layers")), vec![hex.clone()]);
        assert!(sub(&s, "blobs/sha256").join(&hex).is_file());
        // One layer blob, and a config and a manifest per image.
        let images = 2 * (round + 1);
        assert_eq!(image_ids(&s).len(), images);
        assert_dirs(&s, 1, 1 + 2 * images, "after the imports");
        s.assert_fsck_clean();
        assert_consistent(&s, "after the imports");
    }
    let out = must(&s, &["system", "prune", "-f"]);
    assert!(
        out.contains("Total reclaimed space: 0B"),
        "prune found garbage: {out}"
    );
    s.assert_fsck_clean();
    eprintln!(
        "two_concurrent_imports: 64 MB tarball, import times {times:?}; total {:?}",
        t0.elapsed()
    );
}

// ---- names resolved before the write transaction

/// `tag` resolves its source, then takes the write lock; an `rmi -f` in between removes the
/// image. The tag must then fail with "No such image", not with an SQLite foreign key error.
#[test]
fn tag_racing_rmi_of_its_source_fails_cleanly() {
    let _serial = serial();
    let s = TempStore::new();
    let tar = s.dir.path().join("tiny.tar");
    make_tarball(
        &tar,
        TarSpec {
            seed: 41,
            dirs: 2,
            files_per_dir: 5,
            file_size: 512,
            big: 0,
        },
    );
    const N: usize = 24;
    let ids: Vec<String> = (0..N)
        .map(|k| {
            must(&s, &["import", tar.to_str().unwrap(), &format!("src:{k}")])
                .trim()
                .to_string()
        })
        .collect();
    let (mut tagged, mut gone, mut meanwhile) = (0, 0, 0);
    for (k, id) in ids.iter().enumerate() {
        let rmi = spawn(&s, &["rmi", "-f", id]);
        let tag = spawn(&s, &["tag", &format!("src:{k}"), &format!("copy:{k}")]);
        let (rmi, tag) = (rmi.finish(CMD_TIMEOUT), tag.finish(CMD_TIMEOUT));
        assert!(rmi.ok() && rmi.forbidden().is_none(), "{}", rmi.describe());
        assert!(tag.forbidden().is_none(), "{}", tag.describe());
        if tag.ok() {
            tagged += 1;
        } else {
            assert!(tag.stderr.contains("No such image"), "{}", tag.describe());
            gone += 1;
            meanwhile += usize::from(tag.stderr.contains("removed meanwhile"));
        }
    }
    // Whatever the order, the image is gone with all its names.
    assert!(image_ids(&s).is_empty());
    s.assert_fsck_clean();
    assert_dirs(&s, 0, 0, "after the races");
    eprintln!(
        "tag_racing_rmi: {tagged} tagged first, {gone} found the image gone \
         ({meanwhile} of them after resolving it)"
    );
}

/// Regression: `rmi NAME` resolved NAME, then took the write lock; if another process moved
/// the tag to another image in between, it deleted the image the tag left (with its other
/// tags). NAME is now resolved under the lock.
#[test]
fn rmi_of_a_tag_moved_meanwhile_never_deletes_the_image_it_left() {
    let _serial = serial();
    let s = TempStore::new();
    let tar = s.dir.path().join("small.tar");
    make_tarball(&tar, TarSpec::small(31));
    let t = tar.to_str().unwrap();
    must(&s, &["import", t, "keep:x"]);
    must(&s, &["import", t, "keep:y"]);
    let lost = std::thread::scope(|sc| {
        for m in 0..2 {
            let s = &s;
            sc.spawn(move || {
                for k in 0..40 {
                    let src = if (k + m) % 2 == 0 { "keep:x" } else { "keep:y" };
                    let r = run(s, &["tag", src, "flip:t"]);
                    assert!(
                        r.ok() || r.stderr.contains("No such image"),
                        "{}",
                        r.describe()
                    );
                }
            });
        }
        let removers: Vec<_> = (0..2)
            .map(|_| {
                let s = &s;
                sc.spawn(move || {
                    for _ in 0..40 {
                        let r = run(s, &["rmi", "flip:t"]);
                        assert!(
                            r.ok() || r.stderr.contains("No such image"),
                            "{}",
                            r.describe()
                        );
                        for keep in ["keep:x", "keep:y"] {
                            let r = run(s, &["inspect", "-f", "{{.Id}}", keep]);
                            if !r.ok() {
                                return Some(keep);
                            }
                        }
                    }
                    None
                })
            })
            .collect();
        removers.into_iter().find_map(|h| h.join().unwrap())
    });
    assert!(
        lost.is_none(),
        "rmi flip:t deleted the image of {lost:?}, which it had left"
    );
    s.assert_fsck_clean();
}

/// `load` of an image that an `rmi` removes at the same moment: the load finds the layer in the
/// store, the rmi sweeps it before the load leases it. The load must then store the layer again.
#[test]
fn load_racing_rmi_of_the_same_image_succeeds() {
    let _serial = serial();
    let s = TempStore::new();
    let tar = s.dir.path().join("small.tar");
    make_tarball(&tar, TarSpec::small(51));
    must(&s, &["import", tar.to_str().unwrap(), "img:1"]);
    let archive = s.dir.path().join("img.tar");
    must(&s, &["save", "-o", archive.to_str().unwrap(), "img:1"]);
    let mut failed = Vec::new();
    for _ in 0..20 {
        let load = spawn(&s, &["load", "-i", archive.to_str().unwrap()]);
        let rmi = spawn(&s, &["rmi", "-f", "img:1"]);
        let (load, rmi) = (load.finish(CMD_TIMEOUT), rmi.finish(CMD_TIMEOUT));
        assert!(
            rmi.forbidden().is_none() && (rmi.ok() || rmi.stderr.contains("No such image")),
            "{}",
            rmi.describe()
        );
        if !load.ok() || load.forbidden().is_some() {
            failed.push(load.describe());
        }
        s.assert_fsck_clean();
        if image_ids(&s).is_empty() {
            must(&s, &["load", "-i", archive.to_str().unwrap()]);
        }
    }
    assert!(
        failed.is_empty(),
        "{} loads failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
