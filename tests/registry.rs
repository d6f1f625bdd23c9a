//! Registries, for real: the Debian `docker-registry` (CNCF distribution 2.8) on 127.0.0.1,
//! started by `../shared/fixtures/start-registry.sh`, filled by skopeo; strata pulls what
//! skopeo pushed and pushes what skopeo reads back, with the same digests. Where a real
//! registry cannot misbehave on demand (bearer tokens, redirect loops, dropped connections,
//! oversized manifests, unknown media types), a small HTTP server in the test does, serving
//! the busybox fixture's real blobs.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TempStore, busybox_images, fixture_digests, shared_dir, skopeo, skopeo_json, text};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Real registries

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A registry started by the fixture script; stopped and its directory removed on drop.
struct Registry {
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start(htpasswd: Option<&Path>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("strata-registry-")
            .tempdir()
            .expect("tempdir");
        for _ in 0..5 {
            let port = free_port();
            let mut c = Command::new("bash");
            c.arg(shared_dir().join("fixtures/start-registry.sh"))
                .arg(port.to_string())
                .arg(dir.path().join("data"));
            if let Some(h) = htpasswd {
                c.arg(h);
            }
            let o = c.stdin(Stdio::null()).output().expect("start-registry.sh");
            if o.status.success() {
                return Registry { port, dir };
            }
            if !String::from_utf8_lossy(&o.stderr).contains("already in use") {
                panic!("start-registry.sh failed: {}", text(&o));
            }
        }
        panic!("no free port for a registry");
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn stop(&self) {
        let _ = Command::new("bash")
            .arg(shared_dir().join("fixtures/stop-registry.sh"))
            .arg(self.data())
            .stdin(Stdio::null())
            .output();
    }

    /// Requests in the access log that upload blob data or open uploads (POST, PATCH, PUT
    /// under `/blobs/`), by method.
    fn blob_writes(&self) -> Vec<String> {
        let log = fs::read_to_string(self.data().join("registry.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let req = l.split('"').nth(1)?;
                let mut parts = req.split(' ');
                let (m, p) = (parts.next()?, parts.next()?);
                (["POST", "PATCH", "PUT"].contains(&m) && p.contains("/blobs/"))
                    .then(|| format!("{m} {p}"))
            })
            .collect()
    }

    /// Access-log request lines (`METHOD PATH STATUS`).
    fn requests(&self) -> Vec<String> {
        let log = fs::read_to_string(self.data().join("registry.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let mut q = l.split('"');
                let req = q.nth(1)?;
                let status = q.next()?.split_whitespace().next()?;
                let mut parts = req.split(' ');
                Some(format!("{} {} {status}", parts.next()?, parts.next()?))
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `skopeo copy` from a fixture layout to the registry, keeping digests.
fn skopeo_push(src: &str, reg: &Registry, dest: &str, extra: &[&str]) {
    let d = format!("docker://{}/{dest}", reg.host());
    // Digests kept as in the layout, except where a format conversion is asked for.
    let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
    if !extra.contains(&"--format") {
        args.push("--preserve-digests");
    }
    args.extend_from_slice(extra);
    args.push(src);
    args.push(&d);
    skopeo(&args);
}

fn oci(layout: &str, name: &str) -> String {
    format!("oci:{}:{name}", busybox_images().join(layout).display())
}

fn skopeo_inspect(reg: &Registry, name: &str, extra: &[&str]) -> Value {
    let r = format!("docker://{}/{name}", reg.host());
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&r);
    skopeo_json(&args)
}

// ---------------------------------------------------------------------------------------------
// strata with isolated credentials and registries files

/// A store plus its own credentials file and registries file.
struct Env {
    st: TempStore,
}

impl Env {
    fn new() -> Env {
        let e = Env {
            st: TempStore::new(),
        };
        fs::write(e.conf(), "{}").unwrap();
        e
    }
    fn auth(&self) -> PathBuf {
        self.st.dir.path().join("auth/config.json")
    }
    fn conf(&self) -> PathBuf {
        self.st.dir.path().join("registries.json")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.st.cmd();
        c.env("REGISTRY_AUTH_FILE", self.auth())
            .env("STRATA_REGISTRIES_CONF", self.conf())
            .env("STRATA_REGISTRY_TIMEOUT", "10")
            .env_remove("DOCKER_CONFIG")
            .args(args);
        c
    }

    /// Loads the busybox docker-archive of the shared fixtures (`busybox:1.35`).
    fn load_busybox(&self) {
        self.ok(&[
            "load",
            "-i",
            busybox_images().join("busybox.tar").to_str().unwrap(),
        ]);
    }

    /// Runs the commands `runs` all at once and asserts that each succeeds.
    fn all_at_once(&self, runs: &[Vec<&str>]) {
        let children: Vec<_> = runs
            .iter()
            .map(|args| {
                self.cmd(args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", text(&o));
        }
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run strata")
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "strata {args:?}: {}", text(&o));
        String::from_utf8(o.stdout).unwrap()
    }
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "strata {args:?} should have failed: {}",
            text(&o)
        );
        String::from_utf8(o.stderr).unwrap()
    }
    fn inspect(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0].clone()
    }
    /// The store's blob and layer files.
    fn contents(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for d in ["blobs/sha256", "layers", "tmp"] {
            if let Ok(rd) = fs::read_dir(self.st.root().join(d)) {
                for e in rd.flatten() {
                    out.insert(format!("{d}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Containers, mounts and servers a test left (also when it failed).
        if self.st.root().exists() {
            common::containers::clean_up_store(&self.st.root());
        }
        for m in common::containers::mounts_under(self.st.dir.path()) {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn repo_digests(v: &Value) -> Vec<String> {
    v["RepoDigests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

fn digests() -> Value {
    fixture_digests()
}

fn fixture(layout: &str, name: &str, key: &str) -> String {
    digests()["layouts"][layout][name][key]
        .as_str()
        .unwrap_or_else(|| panic!("digests.json: {layout}/{name}/{key}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Pulls of what skopeo pushed

#[test]
fn pulls_single_and_multi_platform_images_skopeo_pushed() {
    let reg = Registry::start(None);
    let h = reg.host();
    skopeo_push(&oci("oci", "busybox"), &reg, "busybox:1.35", &[]);
    skopeo_push(
        &oci("oci", "busybox"),
        &reg,
        "busybox:1.35-v2s2",
        &["--format", "v2s2"],
    );
    skopeo_push(&oci("oci-zstd", "busybox"), &reg, "busybox:1.35-zstd", &[]);
    skopeo_push(
        &oci("oci", "busybox-multi"),
        &reg,
        "busybox:1.35-multi",
        &["--all"],
    );
    skopeo_push(
        &oci("oci", "busybox-multi"),
        &reg,
        "busybox:1.35-multi-v2s2",
        &["--all", "--format", "v2s2"],
    );
    let amd_config = fixture("oci", "busybox", "config");
    let arm_config = fixture("oci", "busybox-arm64", "config");
    let e = Env::new();

    // Single platform, OCI: the manifest digest skopeo reports becomes the RepoDigest, the
    // config digest the image id, the layers the same blobs.
    let out = e.ok(&["pull", &format!("{h}/busybox:1.35")]);
    let sk = skopeo_inspect(&reg, "busybox:1.35", &[]);
    let digest = sk["Digest"].as_str().unwrap();
    assert_eq!(digest, fixture("oci", "busybox", "manifest"));
    let want = format!(
        "1.35: Pulling from busybox\n{}: Pull complete\nDigest: {digest}\nStatus: Downloaded newer image for {h}/busybox:1.35\n{h}/busybox:1.35\n",
        &sk["Layers"][0].as_str().unwrap()[7..19]
    );
    assert_eq!(out, want);
    let v = e.inspect(&format!("{h}/busybox:1.35"));
    assert_eq!(v["Id"], amd_config.as_str());
    assert!(repo_digests(&v).contains(&format!("{h}/busybox@{digest}")));
    assert_eq!(v["Descriptor"]["digest"], digest);
    let raw: Value = serde_json::from_slice(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{h}/busybox:1.35"),
    ]))
    .unwrap();
    assert_eq!(raw["layers"][0]["digest"], sk["Layers"][0]);
    assert!(e.contents().contains(&format!(
        "blobs/sha256/{}",
        &sk["Layers"][0].as_str().unwrap()[7..]
    )));
    // By digest too, and the image listed with its digest.
    e.ok(&["pull", &format!("{h}/busybox@{digest}")]);
    let images = e.ok(&["images", "--digests", "--no-trunc"]);
    assert!(images.contains(digest), "{images}");
    assert!(images.contains(&amd_config), "{images}");
    // Again: nothing to download.
    let out = e.ok(&["pull", &format!("{h}/busybox:1.35")]);
    assert!(out.contains(": Already exists\n"), "{out}");
    assert!(
        out.contains(&format!("Status: Image is up to date for {h}/busybox:1.35")),
        "{out}"
    );
    assert_eq!(
        e.ok(&["pull", "-q", &format!("{h}/busybox:1.35")]),
        format!("{h}/busybox:1.35\n")
    );

    // Docker schema 2 and zstd: same config, the manifests skopeo wrote.
    for tag in ["1.35-v2s2", "1.35-zstd"] {
        e.ok(&["pull", &format!("{h}/busybox:{tag}")]);
        let sk = skopeo_inspect(&reg, &format!("busybox:{tag}"), &[]);
        let v = e.inspect(&format!("{h}/busybox:{tag}"));
        assert_eq!(v["Id"], amd_config.as_str(), "{tag}");
        assert_eq!(v["Descriptor"]["digest"], sk["Digest"], "{tag}");
        assert!(
            repo_digests(&v).contains(&format!("{h}/busybox@{}", sk["Digest"].as_str().unwrap())),
            "{tag}"
        );
    }
    let v = e.inspect(&format!("{h}/busybox:1.35-v2s2"));
    assert_eq!(
        v["Descriptor"]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    // Multi-platform (OCI index, Docker manifest list): the host's platform, the index digest
    // as RepoDigest (what skopeo reports as Digest), and --platform for the other.
    for tag in ["1.35-multi", "1.35-multi-v2s2"] {
        let out = e.ok(&["pull", &format!("{h}/busybox:{tag}")]);
        let sk = skopeo_inspect(&reg, &format!("busybox:{tag}"), &[]);
        let index = sk["Digest"].as_str().unwrap();
        assert!(out.contains(&format!("Digest: {index}\n")), "{out}");
        let v = e.inspect(&format!("{h}/busybox:{tag}"));
        assert_eq!(v["Id"], amd_config.as_str(), "{tag}");
        assert!(
            repo_digests(&v).contains(&format!("{h}/busybox@{index}")),
            "{tag}"
        );
        // The index digest names the image too.
        let by_index = e.inspect(&format!("{h}/busybox@{index}"));
        assert_eq!(by_index["Id"], amd_config.as_str());
        // And `images --digests` lists it for the tag (a row per digest of the repository, as
        // docker; it showed only the platform manifest's).
        let images = e.ok(&["images", "--digests", "--no-trunc"]);
        assert!(
            images.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == tag && f[2] == index
            }),
            "{tag} {index}:\n{images}"
        );
    }
    assert_eq!(
        digests()["layouts"]["oci"]["busybox-multi"]["index"],
        skopeo_inspect(&reg, "busybox:1.35-multi", &[])["Digest"]
    );
    let e2 = Env::new();
    e2.ok(&[
        "pull",
        "--platform",
        "linux/arm64",
        &format!("{h}/busybox:1.35-multi"),
    ]);
    let v = e2.inspect(&format!("{h}/busybox:1.35-multi"));
    assert_eq!(v["Id"], arm_config.as_str());
    assert_eq!(v["Architecture"], "arm64");
    assert_eq!(
        v["Descriptor"]["digest"],
        fixture("oci", "busybox-arm64", "manifest").as_str()
    );
    let err = e2.fails(&[
        "pull",
        "--platform",
        "linux/s390x",
        &format!("{h}/busybox:1.35-multi"),
    ]);
    assert!(
        err.contains("no matching manifest for linux/s390x"),
        "{err}"
    );
    // A tag the registry lacks.
    let err = e2.fails(&["pull", &format!("{h}/busybox:nosuch")]);
    assert!(err.contains("not found"), "{err}");
    e.st.assert_fsck_clean();
    e2.st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------------------------
// Pushes read back by skopeo

/// A small rootfs tarball for `strata import`.
fn rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hello"), "hello from strata\n").unwrap();
    fs::write(root.join("data.bin"), vec![7u8; 300_000]).unwrap();
    let tar = dir.join("rootfs.tar");
    let o = Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mtime=@1700000000",
            "-cf",
        ])
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .output()
        .unwrap();
    assert!(o.status.success(), "tar: {}", text(&o));
    tar
}

#[test]
fn pushes_imported_images_that_skopeo_reads_back_and_a_second_push_uploads_nothing() {
    let reg = Registry::start(None);
    let h = reg.host();
    let e = Env::new();
    let tar = rootfs_tar(e.st.dir.path());
    e.ok(&["import", tar.to_str().unwrap(), "imported:1"]);
    let v = e.inspect("imported:1");
    let manifest = v["Descriptor"]["digest"].as_str().unwrap().to_string();
    let out = e.ok(&["push", "imported:1", &format!("{h}/strata/imported:v1")]);
    assert!(
        out.starts_with(&format!(
            "The push refers to repository [{h}/strata/imported]\n"
        )),
        "{out}"
    );
    assert_eq!(out.matches(": Pushed\n").count(), 2, "{out}");
    assert!(
        out.ends_with(&format!(
            "v1: digest: {manifest} size: {}\n",
            v["Descriptor"]["size"]
        )),
        "{out}"
    );
    let sk = skopeo_inspect(&reg, "strata/imported:v1", &[]);
    assert_eq!(sk["Digest"], manifest.as_str());
    assert_eq!(
        sk["Layers"][0], v["RootFS"]["Layers"][0],
        "the layer blob is the tarball itself"
    );
    let config = skopeo_inspect(&reg, "strata/imported:v1", &["--config"]);
    let local_config: Value = serde_json::from_slice(
        &fs::read(
            e.st.root()
                .join("blobs/sha256")
                .join(&v["Id"].as_str().unwrap()[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config, local_config);
    // skopeo copy reads every blob back and checks it.
    let out_dir = e.st.dir.path().join("copied");
    skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{h}/strata/imported:v1"),
        &format!("oci:{}:x", out_dir.display()),
    ]);
    let layout_index: Value =
        serde_json::from_slice(&fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(layout_index["manifests"][0]["digest"], manifest.as_str());
    // Pushed: recorded as a repo digest.
    assert!(
        repo_digests(&e.inspect("imported:1")).contains(&format!("{h}/strata/imported@{manifest}"))
    );

    // A second push uploads no blob (HEAD finds them).
    let before = reg.blob_writes().len();
    assert!(before >= 4, "{:?}", reg.blob_writes());
    let out = e.ok(&["push", "imported:1", &format!("{h}/strata/imported:v1")]);
    assert_eq!(out.matches(": Layer already exists\n").count(), 2, "{out}");
    assert_eq!(reg.blob_writes().len(), before, "{:?}", reg.blob_writes());
    assert_eq!(
        e.ok(&[
            "push",
            "-q",
            "imported:1",
            &format!("{h}/strata/imported:v1")
        ]),
        format!("{h}/strata/imported:v1\n")
    );

    // Another repository of the same registry: mounted, not uploaded.
    let out = e.ok(&["push", "imported:1", &format!("{h}/other/copy:v2")]);
    assert_eq!(
        out.matches(": Mounted from strata/imported\n").count(),
        2,
        "{out}"
    );
    let writes = reg.blob_writes();
    assert_eq!(writes.len(), before + 2, "{writes:?}");
    assert!(
        writes[before..].iter().all(|w| w.contains("mount=")),
        "{writes:?}"
    );
    assert_eq!(
        skopeo_inspect(&reg, "other/copy:v2", &[])["Digest"],
        manifest.as_str()
    );

    // A loaded docker-archive (uncompressed layer): the digests skopeo recorded.
    e.load_busybox();
    e.ok(&["push", "busybox:1.35", &format!("{h}/loaded/busybox:1.35")]);
    let sk = skopeo_inspect(&reg, "loaded/busybox:1.35", &[]);
    assert_eq!(
        sk["Layers"][0],
        digests()["layouts"]["oci"]["busybox"]["layers"][0]["diff_id"]
    );
    assert_eq!(
        skopeo_inspect(&reg, "loaded/busybox:1.35", &["--config"])["rootfs"],
        serde_json::from_slice::<Value>(
            &fs::read(
                e.st.root()
                    .join("blobs/sha256")
                    .join(&fixture("oci", "busybox", "config")[7..])
            )
            .unwrap()
        )
        .unwrap()["rootfs"]
    );
    // Pulled back into an empty store: the same image.
    let e2 = Env::new();
    e2.ok(&["pull", &format!("{h}/strata/imported:v1")]);
    assert_eq!(
        e2.inspect(&format!("{h}/strata/imported:v1"))["Id"],
        v["Id"]
    );
    let err = e.fails(&["push", &v["Id"].as_str().unwrap()[7..19]]);
    assert!(err.contains("name a destination"), "{err}");
    e.st.assert_fsck_clean();
    e2.st.assert_fsck_clean();
}

#[test]
fn large_blobs_go_in_chunks() {
    let reg = Registry::start(None);
    let h = reg.host();
    let e = Env::new();
    e.load_busybox();
    // The layer is 2,136,576 bytes: 9 chunks of 256 KiB.
    let o = e
        .cmd(&["push", "busybox:1.35", &format!("{h}/chunked/busybox:1")])
        .env("STRATA_PUSH_CHUNK_SIZE", "262144")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let patches = reg
        .blob_writes()
        .iter()
        .filter(|w| w.starts_with("PATCH"))
        .count();
    assert_eq!(patches, 9, "{:?}", reg.blob_writes());
    // skopeo copy verifies every byte of it.
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{h}/chunked/busybox:1"),
        &format!("dir:{}", e.st.dir.path().join("d").display()),
    ]);
    let diff_id = digests()["layouts"]["oci"]["busybox"]["layers"][0]["diff_id"]
        .as_str()
        .unwrap()
        .to_string();
    let data = fs::read(e.st.dir.path().join("d").join(&diff_id[7..])).unwrap();
    assert_eq!(data.len(), 2_136_576);
}

// ---------------------------------------------------------------------------------------------
// Logins

#[test]
fn htpasswd_registry_accepts_login_then_push_and_pull_and_refuses_wrong_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let ht = dir.path().join("htpasswd");
    let o = Command::new("htpasswd")
        .args(["-c", "-B", "-b"])
        .arg(&ht)
        .args(["alice", "s3cret pass"])
        .output()
        .expect("htpasswd (apache2-utils)");
    assert!(o.status.success(), "{}", text(&o));
    let reg = Registry::start(Some(&ht));
    let h = reg.host();
    let e = Env::new();
    e.load_busybox();
    let dest = format!("{h}/private/busybox:1");

    // Without credentials: refused, and told to log in.
    let err = e.fails(&["push", "busybox:1.35", &dest]);
    assert!(
        err.contains("unauthorized") && err.contains(&format!("strata login {h}")),
        "{err}"
    );
    // Wrong password: refused, nothing stored.
    let login = |user: &str, pass: &str| {
        let mut c = e.cmd(&["login", "-u", user, "--password-stdin", &h]);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{pass}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = login("alice", "wrong");
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("incorrect username or password"), "{err}");
    assert!(!e.auth().exists());
    let o = login("mallory", "s3cret pass");
    assert!(!o.status.success(), "{}", text(&o));

    // Right password: stored 0600 in docker's format, other keys kept.
    fs::create_dir_all(e.auth().parent().unwrap()).unwrap();
    fs::write(e.auth(), r#"{"auths":{},"detachKeys":"ctrl-x"}"#).unwrap();
    let o = login("alice", "s3cret pass");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Login Succeeded\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(e.auth()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let file: Value = serde_json::from_slice(&fs::read(e.auth()).unwrap()).unwrap();
    assert_eq!(file["detachKeys"], "ctrl-x");
    assert_eq!(file["auths"][&h]["auth"], "YWxpY2U6czNjcmV0IHBhc3M="); // alice:s3cret pass

    // Push and pull with them; skopeo reads it with the same credentials.
    e.ok(&["push", "busybox:1.35", &dest]);
    let sk = skopeo_json(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:s3cret pass",
        &format!("docker://{dest}"),
    ]);
    let e2 = Env::new();
    fs::create_dir_all(e2.auth().parent().unwrap()).unwrap();
    fs::copy(e.auth(), e2.auth()).unwrap();
    let out = e2.ok(&["pull", &dest]);
    assert!(
        out.contains(&format!("Digest: {}", sk["Digest"].as_str().unwrap())),
        "{out}"
    );
    assert_eq!(
        e2.inspect(&dest)["Id"],
        fixture("oci", "busybox", "config").as_str()
    );

    // Logged out: refused again.
    assert_eq!(
        e2.ok(&["logout", &h]),
        format!("Removing login credentials for {h}\n")
    );
    assert_eq!(e2.ok(&["logout", &h]), format!("Not logged in to {h}\n"));
    let err = e2.fails(&["pull", &dest]);
    assert!(err.contains("authentication required"), "{err}");
    e2.st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------------------------
// Mirrors

#[test]
fn mirrors_are_tried_in_order_and_fall_back_to_the_source() {
    let source = Registry::start(None);
    let empty_mirror = Registry::start(None);
    let full_mirror = Registry::start(None);
    skopeo_push(&oci("oci", "busybox"), &source, "library/busybox:1.35", &[]);
    skopeo_push(
        &oci("oci", "busybox"),
        &full_mirror,
        "library/busybox:1.35",
        &[],
    );
    let down = free_port();
    let name = format!("{}/library/busybox:1.35", source.host());

    // A mirror that is down, then one that lacks the image: the source serves it.
    let e = Env::new();
    fs::write(
        e.conf(),
        format!(
            r#"{{"mirrors": {{"{}": ["127.0.0.1:{down}", "http://{}"]}}}}"#,
            source.host(),
            empty_mirror.host()
        ),
    )
    .unwrap();
    let out = e.ok(&["pull", &name]);
    assert!(out.contains(": Pull complete"), "{out}");
    assert!(
        empty_mirror
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /v2/library/busybox/manifests/1.35 404")),
        "the mirror was not asked: {:?}",
        empty_mirror.requests()
    );
    assert!(source.requests().iter().any(|r| r.contains("/blobs/")));
    let v = e.inspect(&name);
    assert!(repo_digests(&v).contains(&format!(
        "{}/library/busybox@{}",
        source.host(),
        fixture("oci", "busybox", "manifest")
    )));

    // A mirror that has it serves it, even with the source down (mirrors come first).
    let e2 = Env::new();
    fs::write(
        e2.conf(),
        format!(
            r#"{{"mirrors": {{"127.0.0.1:{down}": ["127.0.0.1:{}"]}}}}"#,
            full_mirror.host().rsplit(':').next().unwrap()
        ),
    )
    .unwrap();
    e2.ok(&["pull", &format!("127.0.0.1:{down}/library/busybox:1.35")]);
    assert_eq!(
        e2.inspect(&format!("127.0.0.1:{down}/library/busybox:1.35"))["Id"],
        fixture("oci", "busybox", "config").as_str()
    );
    // No mirror and the registry down: a clear error, quickly.
    let e3 = Env::new();
    let start = std::time::Instant::now();
    let err = e3.fails(&["pull", &format!("127.0.0.1:{down}/library/busybox:1.35")]);
    assert!(err.contains("cannot reach the registry"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(e3.contents().is_empty(), "{:?}", e3.contents());
    // docker.io mirrors (registry-mirrors) are validated when the file is read.
    fs::write(e3.conf(), r#"{"registry-mirrors": ["ftp://nope"]}"#).unwrap();
    let err = e3.fails(&["pull", "busybox"]);
    assert!(err.contains("unsupported scheme"), "{err}");
    e.st.assert_fsck_clean();
    e2.st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------------------------
// Corruption in the registry's storage, concurrent pulls

#[test]
fn a_blob_corrupted_in_the_registry_fails_the_pull_naming_it_and_leaves_the_store_unchanged() {
    let reg = Registry::start(None);
    skopeo_push(&oci("oci", "busybox"), &reg, "busybox:1.35", &[]);
    let layer = digests()["layouts"]["oci"]["busybox"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = &layer[7..];
    let data = reg
        .data()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    fs::write(&data, &bytes).unwrap();

    let e = Env::new();
    // Something already in the store, which must stay as it is.
    e.load_busybox();
    let before = e.contents();
    let err = e.fails(&["pull", &format!("{}/busybox:1.35", reg.host())]);
    assert!(
        err.contains(&layer),
        "the error does not name {layer}: {err}"
    );
    assert_eq!(e.contents(), before);
    e.st.assert_fsck_clean();
    let images = e.ok(&["images", "-q"]);
    assert_eq!(images.lines().count(), 1, "{images}");
}

#[test]
fn four_pulls_at_once_store_each_blob_once() {
    let reg = Registry::start(None);
    skopeo_push(&oci("oci", "busybox"), &reg, "busybox:1.35", &[]);
    let e = Env::new();
    let name = format!("{}/busybox:1.35", reg.host());
    e.all_at_once(&vec![vec!["pull", "-q", &name]; 4]);
    let want: BTreeSet<String> = [
        format!(
            "blobs/sha256/{}",
            &fixture("oci", "busybox", "manifest")[7..]
        ),
        format!("blobs/sha256/{}", &fixture("oci", "busybox", "config")[7..]),
        format!(
            "blobs/sha256/{}",
            &digests()["layouts"]["oci"]["busybox"]["layers"][0]["digest"]
                .as_str()
                .unwrap()[7..]
        ),
    ]
    .into_iter()
    .collect();
    // Blobs only: the layer waits for its first use.
    assert_eq!(e.contents(), want);
    e.st.assert_fsck_clean();
    assert_eq!(e.ok(&["images", "-q"]).lines().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Layers fetched at pull, extracted on first use

/// The layer directories of a store.
fn layer_dirs(e: &Env) -> Vec<String> {
    e.contents()
        .into_iter()
        .filter(|c| c.starts_with("layers/"))
        .collect()
}

/// What `strata info` says of pending layers.
fn pending_layers(e: &Env) -> u64 {
    let v: Value = serde_json::from_str(&e.ok(&["info", "-f", "json"])).unwrap();
    v["LayersPending"].as_u64().unwrap()
}

#[test]
fn a_pulled_image_is_extracted_on_first_use() {
    let reg = Registry::start(None);
    let h = reg.host();
    skopeo_push(&oci("oci", "busybox"), &reg, "busybox:1.35", &[]);
    let name = format!("{h}/busybox:1.35");
    let manifest = fixture("oci", "busybox", "manifest");
    let config = fixture("oci", "busybox", "config");
    let layer = &digests()["layouts"]["oci"]["busybox"]["layers"][0];
    let diff_id = layer["diff_id"].as_str().unwrap().to_string();
    let blob = layer["digest"].as_str().unwrap().to_string();
    // The fixture's layer tar is 2,136,576 bytes (see large_blobs_go_in_chunks); the gzip
    // trailer gives it before any extraction.
    const TAR_SIZE: u64 = 2_136_576;

    // The pull stores blobs only; images, inspect and fsck know the image all the same.
    let e = Env::new();
    e.ok(&["pull", "-q", &name]);
    assert_eq!(layer_dirs(&e), Vec::<String>::new());
    assert!(
        e.contents()
            .contains(&format!("blobs/sha256/{}", &blob[7..]))
    );
    assert_eq!(pending_layers(&e), 1);
    let v = e.inspect(&name);
    assert_eq!(v["Id"], config.as_str());
    assert_eq!(v["RootFS"]["Layers"][0], diff_id.as_str());
    assert_eq!(v["Descriptor"]["digest"], manifest.as_str());
    assert!(repo_digests(&v).contains(&format!("{h}/busybox@{manifest}")));
    assert_eq!(v["Size"], TAR_SIZE);
    let images = e.ok(&["images", "--digests", "--no-trunc"]);
    assert!(
        images.contains(&config) && images.contains(&manifest) && images.contains("2.14MB"),
        "{images}"
    );
    let df = e.ok(&["system", "df"]);
    assert!(df.contains("1 of the layers pending"), "{df}");
    e.st.assert_fsck_clean();

    // The first mount extracts it; the size stays the same, now measured.
    let mnt = e.st.dir.path().join("mnt");
    let out = e.ok(&["mount", &name, mnt.to_str().unwrap()]);
    assert_eq!(out.trim(), mnt.to_str().unwrap());
    assert!(
        fs::read_to_string(mnt.join("etc/passwd"))
            .unwrap()
            .starts_with("root:")
    );
    e.ok(&["umount", mnt.to_str().unwrap()]);
    assert_eq!(layer_dirs(&e), [format!("layers/{}", &diff_id[7..])]);
    assert_eq!(pending_layers(&e), 0);
    assert_eq!(e.inspect(&name)["Size"], TAR_SIZE);
    e.st.assert_fsck_clean();

    // run: the first one extracts (a fresh store), the second does not.
    let e2 = Env::new();
    e2.ok(&["pull", "-q", &name]);
    let run = |e: &Env| {
        let o = e.run(&[
            "--log-level",
            "info",
            "run",
            "--rm",
            &name,
            "cat",
            "/etc/motd",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(!String::from_utf8_lossy(&o.stdout).is_empty());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run(&e2);
    assert!(
        err.contains(&format!("extracting layer {diff_id}")),
        "{err}"
    );
    let tree = e2
        .st
        .root()
        .join("layers")
        .join(&diff_id[7..])
        .join("tree.bin");
    let extracted = fs::metadata(&tree).unwrap().modified().unwrap();
    let err = run(&e2);
    assert!(!err.contains("extracting layer"), "{err}");
    assert_eq!(fs::metadata(&tree).unwrap().modified().unwrap(), extracted);
    e2.ok(&["run", "--rm", &name, "true"]);
    e2.st.assert_fsck_clean();

    // Two mounts at once of a freshly pulled image: both extract, one directory stays.
    let e3 = Env::new();
    e3.ok(&["pull", "-q", &name]);
    let dirs: Vec<PathBuf> = (0..2)
        .map(|i| e3.st.dir.path().join(format!("mnt{i}")))
        .collect();
    let runs: Vec<Vec<&str>> = dirs
        .iter()
        .map(|d| vec!["mount", &name, d.to_str().unwrap()])
        .collect();
    e3.all_at_once(&runs);
    for d in &dirs {
        assert!(fs::read_to_string(d.join("etc/motd")).is_ok());
        e3.ok(&["umount", d.to_str().unwrap()]);
    }
    assert_eq!(layer_dirs(&e3), [format!("layers/{}", &diff_id[7..])]);
    e3.ok(&["system", "prune", "-f"]); // the loser's copy, if it went to the trash
    e3.st.assert_fsck_clean();

    // A pulled image never used: pushed byte for byte without extracting; rmi leaves nothing.
    let e4 = Env::new();
    e4.ok(&["pull", "-q", &name]);
    let out = e4.ok(&["push", &name, &format!("{h}/copy/busybox:1")]);
    assert!(
        out.ends_with(&format!("1: digest: {manifest} size: 349\n")),
        "{out}"
    );
    assert_eq!(
        skopeo_inspect(&reg, "copy/busybox:1", &[])["Digest"],
        manifest.as_str()
    );
    assert_eq!(layer_dirs(&e4), Vec::<String>::new());
    let skopeo_dir = e4.st.dir.path().join("copied");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{h}/copy/busybox:1"),
        &format!("dir:{}", skopeo_dir.display()),
    ]);
    assert_eq!(
        fs::read(skopeo_dir.join(&blob[7..])).unwrap(),
        fs::read(busybox_images().join("oci/blobs/sha256").join(&blob[7..])).unwrap()
    );
    e4.ok(&["rmi", &name]);
    assert_eq!(e4.contents(), BTreeSet::new());
    e4.st.assert_fsck_clean();

    // docker-archive save of a pending layer: measured and checked, still not extracted.
    let e5 = Env::new();
    e5.ok(&["pull", "-q", &name]);
    let saved = e5.st.dir.path().join("saved.tar");
    e5.ok(&["save", "-o", saved.to_str().unwrap(), &name]);
    assert_eq!(layer_dirs(&e5), Vec::<String>::new());
    let e6 = Env::new();
    e6.ok(&["load", "-i", saved.to_str().unwrap()]);
    assert_eq!(e6.inspect(&name)["Id"], config.as_str());
    // A load that brings the layer pulled before extracts it from its own stream.
    e5.ok(&["load", "-i", saved.to_str().unwrap()]);
    assert_eq!(layer_dirs(&e5), [format!("layers/{}", &diff_id[7..])]);
    assert_eq!(pending_layers(&e5), 0);
    e5.st.assert_fsck_clean();

    // --extract: docker's behaviour.
    let e7 = Env::new();
    e7.ok(&["pull", "-q", "--extract", &name]);
    assert_eq!(layer_dirs(&e7), [format!("layers/{}", &diff_id[7..])]);
    assert_eq!(pending_layers(&e7), 0);
    e7.st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------------------------
// A registry written here, for what the real one will not do on demand

/// One request as the fake registry saw it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Req, &mut TcpStream) + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1 (one request per connection); stopped on drop.
struct Fake {
    port: u16,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Req>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn read_request(s: &mut TcpStream) -> Option<Req> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        if buf.is_empty() && byte[0] == 0x16 {
            return None; // a TLS ClientHello: this server speaks plain HTTP only
        }
        buf.push(byte[0]);
        if buf.len() > 65536 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Req {
        method,
        path,
        headers,
    })
}

fn respond(s: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8], head: bool) {
    let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        has_len |= k.eq_ignore_ascii_case("content-length");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let _ = s.write_all(out.as_bytes());
    if !head {
        let _ = s.write_all(body);
    }
    let _ = s.flush();
}

impl Fake {
    fn start(handler: Arc<Handler>) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let (h, log3) = (handler.clone(), log2.clone());
                std::thread::spawn(move || {
                    if let Some(req) = read_request(&mut s) {
                        log3.lock().unwrap().push(req.clone());
                        h(&req, &mut s);
                    }
                });
            }
        });
        Fake {
            port,
            stop,
            log,
            thread: Some(thread),
        }
    }
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The busybox fixture's manifest, config and layer, served as a registry would.
struct Image {
    manifest: Vec<u8>,
    manifest_digest: String,
    config_digest: String,
    layer_digest: String,
    blobs: std::collections::HashMap<String, Vec<u8>>,
}

fn busybox_image() -> Image {
    let dir = busybox_images().join("oci/blobs/sha256");
    let md = fixture("oci", "busybox", "manifest");
    let manifest = fs::read(dir.join(&md[7..])).unwrap();
    let config_digest = fixture("oci", "busybox", "config");
    let layer_digest = digests()["layouts"]["oci"]["busybox"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut blobs = std::collections::HashMap::new();
    for d in [&config_digest, &layer_digest] {
        blobs.insert(d.clone(), fs::read(dir.join(&d[7..])).unwrap());
    }
    Image {
        manifest,
        manifest_digest: md,
        config_digest,
        layer_digest,
        blobs,
    }
}

/// Serves `/v2/`, the manifest (any tag) and the blobs; `None` for other paths.
fn serve(img: &Image, req: &Req, s: &mut TcpStream) -> bool {
    let head = req.method == "HEAD";
    if req.path == "/v2/" {
        respond(s, 200, &[], b"{}", head);
        return true;
    }
    if req.path.contains("/manifests/") {
        respond(
            s,
            200,
            &[
                (
                    "Content-Type",
                    "application/vnd.oci.image.manifest.v1+json".into(),
                ),
                ("Docker-Content-Digest", img.manifest_digest.clone()),
            ],
            &img.manifest,
            head,
        );
        return true;
    }
    if let Some(d) = req.path.split("/blobs/").nth(1)
        && let Some(b) = img.blobs.get(d)
    {
        respond(s, 200, &[], b, head);
        return true;
    }
    false
}

fn not_found(s: &mut TcpStream) {
    respond(
        s,
        404,
        &[("Content-Type", "application/json".into())],
        br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
        false,
    );
}

#[test]
fn bearer_token_flow_with_credentials_and_redirected_blobs() {
    let img = Arc::new(busybox_image());
    // The blob store a registry redirects to, on another host: no registry credentials may
    // reach it.
    let i = img.clone();
    let storage = Fake::start(Arc::new(move |req, s| {
        assert!(
            req.header("authorization").is_none(),
            "credentials leaked to storage"
        );
        match req
            .path
            .strip_prefix("/storage/")
            .and_then(|d| i.blobs.get(d))
        {
            Some(b) => respond(s, 200, &[], b, false),
            None => not_found(s),
        }
    }));
    let storage_host = storage.host();
    let token_calls = Arc::new(AtomicUsize::new(0));
    let port_cell = Arc::new(Mutex::new(0u16));
    let (img2, calls2, port2) = (img.clone(), token_calls.clone(), port_cell.clone());
    let handler: Arc<Handler> = Arc::new(move |req, s| {
        let port = *port2.lock().unwrap();
        let challenge = format!(
            r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry",scope="repository:bear/busybox:pull""#
        );
        if req.path.starts_with("/token?") {
            calls2.fetch_add(1, Ordering::SeqCst);
            // alice:pw
            if req.header("authorization") != Some("Basic YWxpY2U6cHc=")
                || !req.path.contains("service=fake-registry")
                || !req
                    .path
                    .contains("scope=repository%3Abear%2Fbusybox%3Apull")
            {
                respond(
                    s,
                    401,
                    &[],
                    br#"{"details":"incorrect username or password"}"#,
                    false,
                );
                return;
            }
            respond(
                s,
                200,
                &[],
                br#"{"token":"tok-123","expires_in":300}"#,
                false,
            );
            return;
        }
        if req.header("authorization") != Some("Bearer tok-123") {
            respond(
                s,
                401,
                &[("WWW-Authenticate", challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                false,
            );
            return;
        }
        if let Some(d) = req.path.split("/blobs/").nth(1) {
            respond(
                s,
                307,
                &[("Location", format!("http://{storage_host}/storage/{d}"))],
                b"",
                false,
            );
            return;
        }
        if !serve(&img2, req, s) {
            not_found(s);
        }
    });
    let fake = Fake::start(handler);
    *port_cell.lock().unwrap() = fake.port;
    let name = format!("{}/bear/busybox:1", fake.host());

    let e = Env::new();
    let err = e.fails(&["pull", &name]);
    assert!(err.contains("unauthorized"), "{err}");
    fs::create_dir_all(e.auth().parent().unwrap()).unwrap();
    fs::write(
        e.auth(),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6cHc="}}}}}}"#,
            fake.host()
        ),
    )
    .unwrap();
    let out = e.ok(&["pull", &name]);
    assert!(
        out.contains(&format!("Digest: {}", img.manifest_digest)),
        "{out}"
    );
    assert_eq!(e.inspect(&name)["Id"], img.config_digest.as_str());
    // One token for the scope, reused by every request of the pull.
    let reqs = fake.requests();
    let token_reqs = reqs.iter().filter(|r| r.path.starts_with("/token")).count();
    assert!(token_reqs <= 2, "{token_reqs} token requests");
    assert!(
        storage
            .requests()
            .iter()
            .any(|r| r.path == format!("/storage/{}", img.layer_digest))
    );
    e.st.assert_fsck_clean();

    // login checks the credentials against the token server.
    let mut c = e.cmd(&["login", "-u", "alice", "--password-stdin", &fake.host()]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"nope\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("incorrect username or password"),
        "{}",
        text(&o)
    );
}

/// A pull from a fake registry that must fail, leaving the store as it was.
fn pull_fails(fake: &Fake, want: &[&str]) -> String {
    let e = Env::new();
    e.load_busybox();
    let before = e.contents();
    let err = e.fails(&["pull", &format!("{}/hostile/busybox:1", fake.host())]);
    for w in want {
        assert!(err.contains(w), "the error lacks {w:?}: {err}");
    }
    assert_eq!(e.contents(), before, "the store changed");
    e.st.assert_fsck_clean();
    err
}

#[test]
fn hostile_registries_get_clear_errors_and_leave_nothing() {
    let img = Arc::new(busybox_image());

    // A layer whose bytes do not match its digest.
    let i = img.clone();
    let fake = Fake::start(Arc::new(move |req, s| {
        if req.path.ends_with(&i.layer_digest) {
            let mut b = i.blobs[&i.layer_digest].clone();
            let n = b.len();
            b[n - 100] ^= 0xff;
            respond(s, 200, &[], &b, false);
        } else if !serve(&i, req, s) {
            not_found(s);
        }
    }));
    pull_fails(&fake, &[&img.layer_digest, "digest mismatch"]);
    drop(fake);

    // A manifest over the limit (announced, and not announced).
    for announced in [true, false] {
        let fake = Fake::start(Arc::new(move |req, s| {
            if req.path.contains("/manifests/") {
                let big = vec![b' '; 5 << 20];
                if announced {
                    respond(
                        s,
                        200,
                        &[(
                            "Content-Type",
                            "application/vnd.oci.image.manifest.v1+json".into(),
                        )],
                        &big,
                        false,
                    );
                } else {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n");
                    let _ = s.write_all(&big);
                }
            } else if req.path == "/v2/" {
                respond(s, 200, &[], b"{}", false);
            } else {
                not_found(s);
            }
        }));
        pull_fails(&fake, &["limit for manifests"]);
    }

    // A redirect loop on a blob.
    let i = img.clone();
    let fake = Fake::start(Arc::new(move |req, s| {
        if req.path.starts_with("/loop/a") {
            respond(s, 302, &[("Location", "/loop/b".into())], b"", false);
        } else if req.path.starts_with("/loop/b") {
            respond(s, 302, &[("Location", "/loop/a".into())], b"", false);
        } else if req.path.ends_with(&i.layer_digest) {
            respond(s, 307, &[("Location", "/loop/a".into())], b"", false);
        } else if !serve(&i, req, s) {
            not_found(s);
        }
    }));
    pull_fails(&fake, &["redirect loop"]);
    drop(fake);

    // An unknown manifest media type.
    let fake = Fake::start(Arc::new(move |req, s| {
        if req.path.contains("/manifests/") {
            respond(
                s,
                200,
                &[(
                    "Content-Type",
                    "application/vnd.example.thing.v1+json".into(),
                )],
                br#"{"schemaVersion":2,"mediaType":"application/vnd.example.thing.v1+json"}"#,
                false,
            );
        } else if req.path == "/v2/" {
            respond(s, 200, &[], b"{}", false);
        } else {
            not_found(s);
        }
    }));
    pull_fails(
        &fake,
        &[
            "unsupported manifest media type",
            "application/vnd.example.thing.v1+json",
        ],
    );
    drop(fake);

    // The connection dropped midway, every time: the pull gives up after a few resumes.
    let i = img.clone();
    let fake = Fake::start(Arc::new(move |req, s| {
        if req.path.ends_with(&i.layer_digest) {
            let b = &i.blobs[&i.layer_digest];
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            );
            let _ = s.write_all(&b[..b.len() / 3]);
            let _ = s.shutdown(std::net::Shutdown::Both);
        } else if !serve(&i, req, s) {
            not_found(s);
        }
    }));
    pull_fails(&fake, &[&img.layer_digest, "connection lost"]);
    drop(fake);
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A one-layer image (`layer`: a gzip tar) whose config names `diff_id`, as a fake registry
/// serves it.
fn image_of(layer: Vec<u8>, diff_id: &str) -> Image {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let (config_digest, layer_digest) = (sha256(&config), sha256(&layer));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let mut blobs = std::collections::HashMap::new();
    blobs.insert(config_digest.clone(), config);
    blobs.insert(layer_digest.clone(), layer);
    Image {
        manifest_digest: sha256(&manifest),
        manifest,
        config_digest,
        layer_digest,
        blobs,
    }
}

/// A fake registry serving `img` for any name.
fn serving(img: Image) -> Fake {
    let img = Arc::new(img);
    Fake::start(Arc::new(move |req, s| {
        if !serve(&img, req, s) {
            not_found(s);
        }
    }))
}

/// Diff_ids are checked when a layer is extracted, not at pull (the pull stores blobs, each
/// verified against the manifest's digest): a config that lies about one pulls, then its first
/// mount or run fails naming the layer and both digests, leaves no directory, and the store
/// keeps working for everything else.
#[test]
fn a_config_that_lies_about_a_diff_id_fails_at_first_use_and_leaves_nothing() {
    let good = busybox_image();
    let real = digests()["layouts"]["oci"]["busybox"]["layers"][0]["diff_id"]
        .as_str()
        .unwrap()
        .to_string();
    let claimed = sha256(b"not the busybox layer");
    let liar = image_of(good.blobs[&good.layer_digest].clone(), &claimed);
    let blob = liar.layer_digest.clone();
    let fake = serving(liar);
    let e = Env::new();
    e.load_busybox();
    let before = e.contents();
    let name = format!("{}/liar/busybox:1", fake.host());
    e.ok(&["pull", "-q", &name]);
    assert_eq!(e.inspect(&name)["RootFS"]["Layers"][0], claimed.as_str());

    let mnt = e.st.dir.path().join("mnt");
    let err = e.fails(&["mount", &name, mnt.to_str().unwrap()]);
    for d in [&claimed, &real, &blob] {
        assert!(err.contains(d.as_str()), "the error lacks {d}: {err}");
    }
    assert!(err.contains("digest mismatch"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    eprintln!("{err}");
    let o = e.run(&["run", "--rm", &name, "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&claimed));
    assert_eq!(e.ok(&["ps", "-aq"]), "", "a container was left");
    // Nothing of it extracted or left in tmp/; the row stays pending, which fsck reports.
    let layers: Vec<String> = e
        .contents()
        .into_iter()
        .filter(|c| c.starts_with("layers/") || c.starts_with("tmp/"))
        .collect();
    assert_eq!(layers, [format!("layers/{}", &real[7..])]);
    let o = e.run(&["fsck"]);
    assert!(!o.status.success());
    let problems =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    let named: Vec<&str> = problems.lines().filter(|l| l.contains(&claimed)).collect();
    assert_eq!(named.len(), 1, "{problems}");
    assert!(named[0].contains(&real), "{problems}");
    // Everything else still works; without the liar the store is clean and as before.
    e.ok(&["run", "--rm", "busybox:1.35", "true"]);
    e.ok(&["rmi", &name]);
    assert_eq!(e.contents(), before);
    e.st.assert_fsck_clean();
}

/// A hostile tar in a pulled layer is refused when the layer is extracted, as `import` and
/// `load` refuse it: nothing written outside the layer, nothing left in the store.
#[test]
fn a_hostile_pulled_layer_is_refused_at_extraction() {
    let e = Env::new();
    let outside = e.st.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    // A symlink out of the layer, then a file written through it.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    b.append_link(&mut h, "escape", &outside).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(6);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "escape/pwned", &b"pwned\n"[..])
        .unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let img = image_of(gz.finish().unwrap(), &sha256(&tar));
    let blob = img.layer_digest.clone();
    let fake = serving(img);
    let name = format!("{}/hostile/layer:1", fake.host());
    e.ok(&["pull", "-q", &name]);
    let before = e.contents();
    let err = e.fails(&[
        "mount",
        &name,
        e.st.dir.path().join("mnt").to_str().unwrap(),
    ]);
    assert!(
        err.contains(&format!("(blob {blob}): entry \"escape/pwned\"")),
        "{err}"
    );
    assert!(err.contains("refusing to write through it"), "{err}");
    eprintln!("{err}");
    assert!(!outside.join("pwned").exists());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(e.contents(), before, "the store changed");
    e.ok(&["rmi", &name]);
    assert_eq!(e.contents(), BTreeSet::new());
    e.st.assert_fsck_clean();
}

#[test]
fn a_dropped_blob_download_resumes_with_range() {
    let img = Arc::new(busybox_image());
    let i = img.clone();
    let first = Arc::new(AtomicBool::new(true));
    let fake = Fake::start(Arc::new(move |req, s| {
        if req.path.ends_with(&i.layer_digest) {
            let b = &i.blobs[&i.layer_digest];
            if first.swap(false, Ordering::SeqCst) {
                let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n", b.len()).as_bytes());
                let _ = s.write_all(&b[..b.len() / 2]);
                let _ = s.shutdown(std::net::Shutdown::Both);
                return;
            }
            let from: usize = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            respond(
                s,
                206,
                &[(
                    "Content-Range",
                    format!("bytes {from}-{}/{}", b.len() - 1, b.len()),
                )],
                &b[from..],
                false,
            );
        } else if !serve(&i, req, s) {
            not_found(s);
        }
    }));
    let e = Env::new();
    let name = format!("{}/resume/busybox:1", fake.host());
    e.ok(&["pull", &name]);
    let ranges: Vec<String> = fake
        .requests()
        .iter()
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect();
    let half = img.blobs[&img.layer_digest].len() / 2;
    assert_eq!(ranges, [format!("bytes={half}-")]);
    assert_eq!(e.inspect(&name)["Id"], img.config_digest.as_str());
    e.st.assert_fsck_clean();
}
