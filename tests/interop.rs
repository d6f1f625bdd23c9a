//! Interoperability through the real `strata` binary: the busybox fixtures written by skopeo,
//! umoci and buildah load with the digests those tools recorded; what strata saves, skopeo reads
//! back with the same digests; a multi-layer image built here byte by byte extracts to exactly
//! what GNU tar lists; the image commands behave like docker's; broken layouts leave nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TempStore, busybox_images, fixture_digests, is_root, skopeo, skopeo_json, text};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------------------------
// Small helpers

fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!("sha256:{}", hex::encode(&d[..]))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The one document of `strata inspect NAME`.
fn inspect(st: &TempStore, name: &str) -> Value {
    let v: Value = serde_json::from_str(&st.ok(&["inspect", name])).expect("inspect JSON");
    let arr = v.as_array().expect("inspect prints an array");
    assert_eq!(arr.len(), 1, "{v}");
    arr[0].clone()
}

/// `REPOSITORY:TAG` of every row of `strata images`, sorted.
fn tags(st: &TempStore) -> Vec<String> {
    let mut v: Vec<String> = st
        .ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn dir_entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// After a failed or undone operation: no image, a clean fsck, nothing in layers/, tmp/ or
/// blobs/.
fn assert_store_empty(st: &TempStore, after: &str) {
    assert_eq!(st.ok(&["images", "-q"]), "", "images left after {after}");
    st.assert_fsck_clean();
    for d in ["layers", "tmp", "blobs/sha256", "trash"] {
        assert_eq!(
            dir_entries(&st.root().join(d)),
            Vec::<String>::new(),
            "{d}/ not empty after {after}"
        );
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. The fixtures load with the digests the tools recorded

const AMD64_TAR_SIZE: u64 = 2136576;
const ARM64_TAR_SIZE: u64 = 2000896;

/// The image of `busybox-multi` strata picks on this machine, and its layer tar size.
fn host_image() -> Option<(&'static str, u64)> {
    match std::env::consts::ARCH {
        "x86_64" => Some(("busybox", AMD64_TAR_SIZE)),
        "aarch64" => Some(("busybox-arm64", ARM64_TAR_SIZE)),
        _ => None,
    }
}

/// Checks `inspect NAME` against a digests.json image entry and, when given, the manifest the
/// name must point at.
fn check_inspect(st: &TempStore, name: &str, want: &Value, manifest: Option<&str>, size: u64) {
    let doc = inspect(st, name);
    assert_eq!(doc["Id"], want["config"], "{name}: Id is the config digest");
    let diff_ids: Vec<&Value> = want["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["diff_id"])
        .collect();
    let got: Vec<&Value> = doc["RootFS"]["Layers"].as_array().unwrap().iter().collect();
    assert_eq!(got, diff_ids, "{name}: RootFS.Layers are the diff_ids");
    assert_eq!(doc["RootFS"]["Type"], "layers");
    assert_eq!(
        doc["Size"],
        json!(size),
        "{name}: Size is the layer tar size"
    );
    assert_eq!(doc["Architecture"], want["architecture"]);
    assert_eq!(doc["Os"], want["os"]);
    assert_eq!(doc["Created"], "2023-11-14T22:13:20Z");
    assert_eq!(doc["Config"]["Cmd"], json!(["/bin/sh"]));
    assert_eq!(doc["Config"]["WorkingDir"], "/root");
    assert!(
        doc["RepoTags"]
            .as_array()
            .unwrap()
            .contains(&json!(name.to_string())),
        "{name}: RepoTags {}",
        doc["RepoTags"]
    );
    if let Some(m) = manifest {
        assert_eq!(doc["Descriptor"]["digest"], m, "{name}: Descriptor.digest");
        let repo = name.rsplit_once(':').unwrap().0;
        assert!(
            doc["RepoDigests"]
                .as_array()
                .unwrap()
                .contains(&json!(format!("{repo}@{m}"))),
            "{name}: RepoDigests {}",
            doc["RepoDigests"]
        );
    }
    // The layer is extracted where the overlay lower dirs are expected.
    for d in &diff_ids {
        let diff = st.root().join("layers").join(hex_of(s(d))).join("diff");
        assert!(diff.join("bin/busybox").is_file(), "{}", diff.display());
    }
}

#[test]
fn loads_every_fixture_format_with_the_recorded_digests() {
    let fx = busybox_images();
    let dg = fixture_digests();
    for variant in ["oci", "oci-zstd", "oci-uncompressed", "oci-zstd-chunked"] {
        let st = TempStore::new();
        let out = st.ok(&["load", "-q", "-i", fx.join(variant).to_str().unwrap()]);
        assert!(
            out.contains("Loaded image: busybox:latest") && out.contains("busybox-arm64:latest"),
            "{variant}: {out}"
        );
        let l = &dg["layouts"][variant];
        let mut want = vec!["busybox-arm64:latest".to_string(), "busybox:latest".into()];
        if variant == "oci" && host_image().is_some() {
            want.push("busybox-multi:latest".into());
            want.sort();
        }
        assert_eq!(tags(&st), want, "{variant}");
        check_inspect(
            &st,
            "busybox:latest",
            &l["busybox"],
            Some(s(&l["busybox"]["manifest"])),
            AMD64_TAR_SIZE,
        );
        check_inspect(
            &st,
            "busybox-arm64:latest",
            &l["busybox-arm64"],
            Some(s(&l["busybox-arm64"]["manifest"])),
            ARM64_TAR_SIZE,
        );
        if variant == "oci"
            && let Some((host, size)) = host_image()
        {
            // The index names the image of this machine's platform.
            check_inspect(
                &st,
                "busybox-multi:latest",
                &l[host],
                Some(s(&l[host]["manifest"])),
                size,
            );
        }
        // Two images, two layers, whatever the number of names.
        let mut ids: Vec<String> = st
            .ok(&["images", "-q", "--no-trunc"])
            .lines()
            .map(str::to_string)
            .collect();
        ids.sort();
        ids.dedup();
        let mut want_ids = vec![
            s(&l["busybox"]["config"]).to_string(),
            s(&l["busybox-arm64"]["config"]).to_string(),
        ];
        want_ids.sort();
        assert_eq!(ids, want_ids, "{variant}");
        assert_eq!(dir_entries(&st.root().join("layers")).len(), 2);
        // `images` shows the size as docker does.
        let row = st.ok(&["images", "--format", "{{.Size}}", "busybox:latest"]);
        assert_eq!(row, "2.14MB\n");
        let row = st.ok(&["images", "--format", "{{.Size}}", "busybox-arm64"]);
        assert_eq!(row, "2MB\n");
        st.assert_fsck_clean();
    }

    let da = &dg["docker-archive"]["busybox.tar"];
    let st = TempStore::new();
    let out = st.ok(&["load", "-i", fx.join("busybox.tar").to_str().unwrap()]);
    assert_eq!(out, "Loaded image: busybox:1.35\n");
    assert_eq!(tags(&st), vec!["busybox:1.35"]);
    let amd64 = &dg["layouts"]["oci"]["busybox"];
    assert_eq!(da["config"], amd64["config"]);
    check_inspect(&st, "busybox:1.35", amd64, None, AMD64_TAR_SIZE);
    // docker-archive has no manifest: strata writes an OCI one (that an OCI layout can carry).
    let doc = inspect(&st, "busybox:1.35");
    assert_eq!(doc["Descriptor"]["mediaType"], MANIFEST);
    st.assert_fsck_clean();

    let oa = &dg["oci-archive"]["busybox.oci.tar"];
    let st = TempStore::new();
    let out = st.ok(&["load", "-i", fx.join("busybox.oci.tar").to_str().unwrap()]);
    assert_eq!(out, "Loaded image: busybox:1.35\n");
    assert_eq!(tags(&st), vec!["busybox:1.35"]);
    check_inspect(
        &st,
        "busybox:1.35",
        amd64,
        Some(s(&oa["busybox:1.35"])),
        AMD64_TAR_SIZE,
    );
    st.assert_fsck_clean();

    // Everything into one store: the same two images and two layers, one blob per variant.
    let st = TempStore::new();
    for input in [
        "oci",
        "oci-zstd",
        "oci-uncompressed",
        "oci-zstd-chunked",
        "busybox.tar",
        "busybox.oci.tar",
    ] {
        st.ok(&["load", "-q", "-i", fx.join(input).to_str().unwrap()]);
    }
    let mut want = vec!["busybox-arm64:latest", "busybox:1.35", "busybox:latest"];
    if host_image().is_some() {
        want.insert(1, "busybox-multi:latest");
    }
    assert_eq!(tags(&st), want);
    assert_eq!(dir_entries(&st.root().join("layers")).len(), 2);
    // The tag moved with the last load (zstd:chunked), and keeps that manifest.
    let doc = inspect(&st, "busybox:latest");
    assert_eq!(
        doc["Descriptor"]["digest"],
        dg["layouts"]["oci-zstd-chunked"]["busybox"]["manifest"]
    );
    st.assert_fsck_clean();
}

// ---------------------------------------------------------------------------------------------
// 2. What strata saves, skopeo reads with the same digests; and strata loads it back

/// The saved layout's `index.json`: ref name → manifest digest.
fn saved_refs(dir: &Path) -> BTreeMap<String, String> {
    let idx: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(idx["schemaVersion"], 2);
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                s(&m["annotations"]["org.opencontainers.image.ref.name"]).to_string(),
                s(&m["digest"]).to_string(),
            )
        })
        .collect()
}

/// skopeo reads `transport_ref` as the image `want` (a digests.json image entry).
fn check_skopeo_oci(transport_ref: &str, want: &Value) {
    let raw = skopeo(&["inspect", "--raw", transport_ref]);
    assert_eq!(
        sha256(&raw),
        s(&want["manifest"]),
        "{transport_ref}: raw manifest"
    );
    let info = skopeo_json(&["inspect", transport_ref]);
    assert_eq!(info["Digest"], want["manifest"], "{transport_ref}: Digest");
    let blobs: Vec<&Value> = want["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(
        info["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        blobs,
        "{transport_ref}: Layers"
    );
    assert_eq!(info["Architecture"], want["architecture"]);
    let config = skopeo(&["inspect", "--config", "--raw", transport_ref]);
    assert_eq!(
        sha256(&config),
        s(&want["config"]),
        "{transport_ref}: config"
    );
}

/// Loads `input` into a fresh store and checks the image ids and tags it gets.
fn check_round_trip(input: &Path, want: &[(&str, &Value)]) {
    let st = TempStore::new();
    st.ok(&["load", "-q", "-i", input.to_str().unwrap()]);
    let mut want_tags: Vec<String> = want.iter().map(|(n, _)| n.to_string()).collect();
    want_tags.sort();
    assert_eq!(tags(&st), want_tags, "{}", input.display());
    for (name, img) in want {
        let doc = inspect(&st, name);
        assert_eq!(doc["Id"], img["config"], "{}: {name}", input.display());
    }
    st.assert_fsck_clean();
}

#[test]
fn skopeo_reads_what_strata_saves_from_each_layout() {
    let fx = busybox_images();
    let dg = fixture_digests();
    for variant in ["oci", "oci-zstd", "oci-uncompressed", "oci-zstd-chunked"] {
        let st = TempStore::new();
        st.ok(&["load", "-q", "-i", fx.join(variant).to_str().unwrap()]);
        let amd64 = &dg["layouts"][variant]["busybox"];
        let arm64 = &dg["layouts"][variant]["busybox-arm64"];
        let out = st.dir.path().join("out");
        fs::create_dir(&out).unwrap();

        // oci-dir
        let dir = out.join("layout");
        st.ok(&[
            "save",
            "--format",
            "oci-dir",
            "-o",
            dir.to_str().unwrap(),
            "busybox:latest",
            "busybox-arm64",
        ]);
        let refs = saved_refs(&dir);
        assert_eq!(
            refs,
            BTreeMap::from([
                (
                    "busybox:latest".to_string(),
                    s(&amd64["manifest"]).to_string()
                ),
                (
                    "busybox-arm64:latest".to_string(),
                    s(&arm64["manifest"]).to_string()
                ),
            ]),
            "{variant}: index.json"
        );
        assert_eq!(
            fs::read_to_string(dir.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        // exactly the blobs of the two images, byte for byte those of the source layout
        let mut want_blobs = BTreeSet::new();
        for img in [amd64, arm64] {
            want_blobs.insert(hex_of(s(&img["manifest"])).to_string());
            want_blobs.insert(hex_of(s(&img["config"])).to_string());
            for l in img["layers"].as_array().unwrap() {
                want_blobs.insert(hex_of(s(&l["digest"])).to_string());
            }
        }
        let got_blobs: BTreeSet<String> =
            dir_entries(&dir.join("blobs/sha256")).into_iter().collect();
        assert_eq!(got_blobs, want_blobs, "{variant}: saved blobs");
        for b in &want_blobs {
            assert_eq!(
                fs::read(dir.join("blobs/sha256").join(b)).unwrap(),
                fs::read(fx.join(variant).join("blobs/sha256").join(b)).unwrap(),
                "{variant}: blob {b}"
            );
        }
        let dir_s = dir.to_str().unwrap();
        check_skopeo_oci(&format!("oci:{dir_s}:busybox:latest"), amd64);
        check_skopeo_oci(&format!("oci:{dir_s}:busybox-arm64:latest"), arm64);

        // oci-archive
        let oa = out.join("busybox.oci.tar");
        st.ok(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            oa.to_str().unwrap(),
            "busybox:latest",
            "busybox-arm64:latest",
        ]);
        let oa_s = oa.to_str().unwrap();
        check_skopeo_oci(&format!("oci-archive:{oa_s}:busybox:latest"), amd64);
        check_skopeo_oci(&format!("oci-archive:{oa_s}:busybox-arm64:latest"), arm64);

        // docker-archive: layers are the uncompressed tars, named by diff_id
        let da = out.join("busybox.tar");
        st.ok(&[
            "save",
            "--format",
            "docker-archive",
            "-o",
            da.to_str().unwrap(),
            "busybox:latest",
            "busybox-arm64:latest",
        ]);
        let da_s = da.to_str().unwrap();
        for (name, img) in [("busybox:latest", amd64), ("busybox-arm64:latest", arm64)] {
            let r = format!("docker-archive:{da_s}:{name}");
            let info = skopeo_json(&["inspect", &r]);
            let diff_ids: Vec<&Value> = img["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| &l["diff_id"])
                .collect();
            assert_eq!(
                info["Layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>(),
                diff_ids,
                "{variant}: {r}: Layers"
            );
            assert_eq!(info["Architecture"], img["architecture"]);
            let config = skopeo(&["inspect", "--config", "--raw", &r]);
            assert_eq!(sha256(&config), s(&img["config"]), "{variant}: {r}: config");
        }

        // Round trips: every output loads into a fresh store as the same images.
        let want = [("busybox:latest", amd64), ("busybox-arm64:latest", arm64)];
        check_round_trip(&dir, &want);
        check_round_trip(&oa, &want);
        check_round_trip(&da, &want);

        // And skopeo copies strata's layout like any other.
        if variant == "oci" {
            let copy = out.join("copy");
            skopeo(&[
                "copy",
                "--quiet",
                &format!("oci:{dir_s}:busybox:latest"),
                &format!("oci:{}:copied", copy.to_str().unwrap()),
            ]);
            let refs = saved_refs(&copy);
            assert_eq!(
                refs.get("copied").map(String::as_str),
                Some(s(&amd64["manifest"]))
            );
            check_round_trip(&copy, &[("copied:latest", amd64)]);

            // The index is not kept: its name saves as the image of this machine's platform.
            if let Some((host, _)) = host_image() {
                let multi = out.join("multi.oci.tar");
                st.ok(&[
                    "save",
                    "--format",
                    "oci-archive",
                    "-o",
                    multi.to_str().unwrap(),
                    "busybox-multi",
                ]);
                check_skopeo_oci(
                    &format!(
                        "oci-archive:{}:busybox-multi:latest",
                        multi.to_str().unwrap()
                    ),
                    &dg["layouts"]["oci"][host],
                );
            }
        }
        st.assert_fsck_clean();
    }
}

/// Reads every regular member of a tar file: name → data.
fn tar_members(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut ar = tar::Archive::new(fs::File::open(path).unwrap());
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.insert(name, data);
    }
    out
}

#[test]
fn docker_and_oci_archives_round_trip() {
    let fx = busybox_images();
    let dg = fixture_digests();
    let amd64 = &dg["layouts"]["oci"]["busybox"];
    let diff_id = s(&amd64["layers"][0]["diff_id"]);

    // docker-archive in, docker-archive out
    let st = TempStore::new();
    st.ok(&["load", "-q", "-i", fx.join("busybox.tar").to_str().unwrap()]);
    let out = st.dir.path().join("saved.tar");
    st.ok(&["save", "-o", out.to_str().unwrap(), "busybox:1.35"]);
    let members = tar_members(&out);
    let manifest: Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    assert_eq!(
        manifest,
        json!([{
            "Config": format!("{}.json", hex_of(s(&amd64["config"]))),
            "RepoTags": ["busybox:1.35"],
            "Layers": [format!("{}.tar", hex_of(diff_id))],
        }])
    );
    assert_eq!(
        members[&format!("{}.tar", hex_of(diff_id))],
        tar_members(&fx.join("busybox.tar"))[&format!("{}.tar", hex_of(diff_id))],
        "the layer tar is the original one"
    );
    let r = format!("docker-archive:{}", out.to_str().unwrap());
    let info = skopeo_json(&["inspect", &r]);
    assert_eq!(info["Layers"], json!([diff_id]));
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(
        sha256(&skopeo(&["inspect", "--config", "--raw", &r])),
        s(&amd64["config"]),
        "config digest is the image id"
    );
    check_round_trip(&out, &[("busybox:1.35", amd64)]);

    // ... and as an OCI archive, with the manifest strata wrote for it
    let doc = inspect(&st, "busybox:1.35");
    let oa = st.dir.path().join("saved.oci.tar");
    st.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        oa.to_str().unwrap(),
        "busybox:1.35",
    ]);
    let r = format!("oci-archive:{}:busybox:1.35", oa.to_str().unwrap());
    let info = skopeo_json(&["inspect", &r]);
    assert_eq!(info["Digest"], doc["Descriptor"]["digest"]);
    assert_eq!(
        info["Layers"],
        json!([diff_id]),
        "uncompressed: blob = diff_id"
    );
    assert_eq!(
        sha256(&skopeo(&["inspect", "--config", "--raw", &r])),
        s(&amd64["config"])
    );
    check_round_trip(&oa, &[("busybox:1.35", amd64)]);
    st.assert_fsck_clean();

    // oci-archive in, oci-archive and docker-archive out
    let st = TempStore::new();
    st.ok(&[
        "load",
        "-q",
        "-i",
        fx.join("busybox.oci.tar").to_str().unwrap(),
    ]);
    let oa = st.dir.path().join("again.oci.tar");
    st.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        oa.to_str().unwrap(),
        "busybox:1.35",
    ]);
    let want = &dg["oci-archive"]["busybox.oci.tar"]["busybox:1.35"];
    assert_eq!(want, &amd64["manifest"]);
    check_skopeo_oci(
        &format!("oci-archive:{}:busybox:1.35", oa.to_str().unwrap()),
        amd64,
    );
    let da = st.dir.path().join("again.tar");
    st.ok(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        da.to_str().unwrap(),
        "busybox:1.35",
    ]);
    let r = format!("docker-archive:{}", da.to_str().unwrap());
    assert_eq!(skopeo_json(&["inspect", &r])["Layers"], json!([diff_id]));
    assert_eq!(
        sha256(&skopeo(&["inspect", "--config", "--raw", &r])),
        s(&amd64["config"])
    );
    // strata's docker-archive is the fixture's, but for the legacy files docker save adds
    let theirs = tar_members(&fx.join("busybox.tar"));
    for (name, data) in tar_members(&da) {
        if name != "manifest.json" {
            assert_eq!(Some(&data), theirs.get(&name), "{name}");
        }
    }
    check_round_trip(&oa, &[("busybox:1.35", amd64)]);
    check_round_trip(&da, &[("busybox:1.35", amd64)]);
    st.assert_fsck_clean();

    // A compressed archive, and one on standard input.
    let st = TempStore::new();
    let gz = st.dir.path().join("busybox.tar.gz");
    fs::write(&gz, gzip(&fs::read(fx.join("busybox.tar")).unwrap())).unwrap();
    assert_eq!(
        st.ok(&["load", "-i", gz.to_str().unwrap()]),
        "Loaded image: busybox:1.35\n"
    );
    st.ok(&["rmi", "busybox:1.35"]);
    let o = st
        .cmd()
        .arg("load")
        .stdin(fs::File::open(fx.join("busybox.oci.tar")).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, b"Loaded image: busybox:1.35\n");
    assert_eq!(
        inspect(&st, "busybox:1.35")["Descriptor"]["digest"],
        amd64["manifest"]
    );
    st.assert_fsck_clean();
    assert_eq!(dir_entries(&st.root().join("tmp")), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// 3. A multi-layer image built here, byte by byte

const T0: u64 = 1_700_000_000;

#[derive(Clone, Debug)]
enum Kind {
    Dir,
    File(&'static [u8]),
    Symlink(&'static str),
    Hardlink(&'static str),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
}

/// One tar entry, with exactly the header fields it gets.
#[derive(Clone, Debug)]
struct Ent {
    path: &'static str,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(&'static str, &'static str)>,
}

fn ent(path: &'static str, kind: Kind, mode: u32) -> Ent {
    Ent {
        path,
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: T0,
        xattrs: Vec::new(),
    }
}

impl Ent {
    fn owner(mut self, uid: u64, gid: u64) -> Ent {
        self.uid = uid;
        self.gid = gid;
        self
    }
    fn xattr(mut self, k: &'static str, v: &'static str) -> Ent {
        self.xattrs.push((k, v));
        self
    }
    fn mtime(mut self, t: u64) -> Ent {
        self.mtime = t;
        self
    }
}

/// A POSIX tar of `entries`: ustar headers, a PAX `x` header before each entry with xattrs.
fn build_tar(entries: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let keys: Vec<String> = e
                .xattrs
                .iter()
                .map(|(k, _)| format!("SCHILY.xattr.{k}"))
                .collect();
            b.append_pax_extensions(
                keys.iter()
                    .map(String::as_str)
                    .zip(e.xattrs.iter().map(|(_, v)| v.as_bytes())),
            )
            .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        let (ty, data): (tar::EntryType, &[u8]) = match &e.kind {
            Kind::Dir => (tar::EntryType::Directory, b""),
            Kind::File(d) => (tar::EntryType::Regular, d),
            Kind::Symlink(_) => (tar::EntryType::Symlink, b""),
            Kind::Hardlink(_) => (tar::EntryType::Link, b""),
            Kind::Fifo => (tar::EntryType::Fifo, b""),
            Kind::Char(..) => (tar::EntryType::Char, b""),
            Kind::Block(..) => (tar::EntryType::Block, b""),
        };
        h.set_entry_type(ty);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(data.len() as u64);
        match &e.kind {
            Kind::Symlink(t) | Kind::Hardlink(t) => h.set_link_name(t).unwrap(),
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
            }
            // GNU tar writes 0 into the device fields of every entry; the tar crate leaves
            // them NUL unless set (see `fifo_with_empty_device_fields`).
            Kind::Fifo => {
                h.set_device_major(0).unwrap();
                h.set_device_minor(0).unwrap();
            }
            _ => {}
        }
        b.append_data(&mut h, e.path, data).unwrap();
    }
    b.into_inner().unwrap()
}

const LONG_NAME: &str = "deep/a-directory-name-long-enough/that-the-whole-path-does-not-fit/in-the-hundred-bytes-of-a-ustar-name-field.txt";

/// The three layers of the test image.
fn layer_entries() -> [Vec<Ent>; 3] {
    use Kind::*;
    let l1 = vec![
        ent("./", Dir, 0o755),
        ent("bin/", Dir, 0o755),
        ent("bin/tool", File(b"#!/bin/sh\necho tool\n"), 0o4755),
        ent("bin/link", Hardlink("bin/tool"), 0o4755),
        ent("bin/sym", Symlink("tool"), 0o777),
        ent("dev/", Dir, 0o755),
        ent("dev/null", Char(1, 3), 0o666),
        ent("dir/", Dir, 0o755).xattr("user.dirattr", "d1"),
        ent("dir/a.txt", File(b"a\n"), 0o644),
        ent("dir/sub/", Dir, 0o750),
        ent("dir/sub/deep.txt", File(b"deep\n"), 0o640).mtime(1_600_000_000),
        ent("etc/", Dir, 0o755),
        ent("etc/owned", File(b"owned by 1000\n"), 0o600).owner(1000, 1000),
        ent("gone", File(b"removed by layer 2\n"), 0o644),
        ent("olddir/", Dir, 0o755),
        ent("olddir/x", File(b"x\n"), 0o644),
        ent("run/", Dir, 0o755),
        ent("run/fifo", Fifo, 0o644),
        ent("tmp/", Dir, 0o1777),
        ent("xfile", File(b"xattrs\n"), 0o644)
            .xattr("user.k", "v")
            .xattr("trusted.x", "tx"),
        ent("abs", Symlink("/etc/owned"), 0o777),
    ];
    let l2 = vec![
        ent("./", Dir, 0o755),
        ent(".wh.gone", File(b""), 0o644),
        ent(".wh.olddir", File(b""), 0o644),
        ent("dir/", Dir, 0o700),
        ent("dir/.wh..wh..opq", File(b""), 0o644),
        ent("dir/new.txt", File(b"new\n"), 0o644).owner(1000, 1000),
        ent("home/", Dir, 0o755),
        ent("home/user/", Dir, 0o700).owner(1000, 1000),
        ent("home/user/.profile", File(b"export A=1\n"), 0o644)
            .owner(1000, 1000)
            .xattr("user.k", "v2"),
        ent("home/user/hl", Hardlink("home/user/.profile"), 0o644).owner(1000, 1000),
        ent("home/user/up", Symlink("../../etc/owned"), 0o777).owner(1000, 1000),
    ];
    let l3 = vec![
        ent("deep/", Dir, 0o755),
        ent("deep/a-directory-name-long-enough/", Dir, 0o755),
        ent(
            "deep/a-directory-name-long-enough/that-the-whole-path-does-not-fit/",
            Dir,
            0o755,
        ),
        ent(LONG_NAME, File(b"long\n"), 0o644),
        ent("dev/", Dir, 0o755),
        ent("dev/sda", Block(8, 0), 0o660).owner(0, 6),
        ent("sbin/", Dir, 0o755),
        ent("sbin/sg", File(b"setgid\n"), 0o2755).owner(0, 1000),
        ent("lnk", Symlink("dir"), 0o777),
        ent("sticky/", Dir, 0o1755).mtime(1_500_000_000),
    ];
    [l1, l2, l3]
}

/// An OCI image layout written by hand.
struct Layout {
    dir: PathBuf,
    index: Vec<Value>,
}

/// A blob's descriptor.
fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
        Layout {
            dir,
            index: Vec::new(),
        }
    }

    fn blob(&self, data: &[u8]) -> String {
        let d = sha256(data);
        fs::write(self.blob_path(&d), data).unwrap();
        d
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex_of(digest))
    }

    /// A config naming `diff_ids`, with one history entry per layer and one empty one.
    fn config(diff_ids: &[String]) -> Vec<u8> {
        let mut history: Vec<Value> = (0..diff_ids.len())
            .map(|i| json!({"created": "2024-01-02T03:04:05Z", "created_by": format!("layer {}", i + 1)}))
            .collect();
        history.insert(
            1.min(history.len()),
            json!({"created": "2024-01-02T03:04:05Z", "created_by": "ENV A=1", "empty_layer": true}),
        );
        serde_json::to_vec(&json!({
            "created": "2024-01-02T03:04:05Z",
            "author": "strata interop test",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["A=1"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }))
        .unwrap()
    }

    /// Writes the blobs of an image (layers: blob bytes and media type) and adds its manifest
    /// to the index under `ref_name`. Returns the manifest digest.
    fn image(&mut self, config: &[u8], layers: &[(Vec<u8>, &str)], ref_name: &str) -> String {
        self.blob(config);
        let mut ldescs = Vec::new();
        for (data, mt) in layers {
            self.blob(data);
            ldescs.push(desc(mt, data));
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": desc(CONFIG, config),
            "layers": ldescs,
        }))
        .unwrap();
        let d = self.blob(&manifest);
        let mut entry = desc(MANIFEST, &manifest);
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": ref_name});
        self.index.push(entry);
        self.write_index();
        d
    }

    fn write_index(&self) {
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": self.index})).unwrap(),
        )
        .unwrap();
    }
}

/// The test image: its layer tars, their diff_ids, and a layout with `multi:v1` (the three
/// layers: gzip, zstd, gzip) and `base:v1` (the first layer only).
struct TestImage {
    tars: [Vec<u8>; 3],
    diff_ids: Vec<String>,
    multi_id: String,
    base_id: String,
    layout: Layout,
}

fn test_image(dir: &Path) -> TestImage {
    let tars = layer_entries().map(|l| build_tar(&l));
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let mut layout = Layout::new(dir.to_path_buf());
    let config = Layout::config(&diff_ids);
    layout.image(
        &config,
        &[
            (gzip(&tars[0]), GZ),
            (zstd(&tars[1]), ZST),
            (gzip(&tars[2]), GZ),
        ],
        "multi:v1",
    );
    let base_config = Layout::config(&diff_ids[..1]);
    layout.image(&base_config, &[(gzip(&tars[0]), GZ)], "base:v1");
    TestImage {
        diff_ids,
        multi_id: sha256(&config),
        base_id: sha256(&base_config),
        tars,
        layout,
    }
}

/// One line of `tar --numeric-owner -tvf`.
#[derive(Debug)]
struct Listed {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    /// The size, or `major,minor` of a device.
    size: String,
    /// `YYYY-MM-DD HH:MM` (UTC).
    when: String,
    name: String,
    link: Option<String>,
}

/// `rwsr-xr-x` → 0o4755.
fn mode_bits(perm: &str) -> u32 {
    let c: Vec<char> = perm.chars().collect();
    assert_eq!(c.len(), 9, "{perm}");
    let mut m = 0;
    for (i, who) in c.chunks(3).enumerate() {
        let shift = 6 - 3 * i as u32;
        if who[0] == 'r' {
            m |= 4 << shift;
        }
        if who[1] == 'w' {
            m |= 2 << shift;
        }
        match who[2] {
            'x' => m |= 1 << shift,
            '-' => {}
            's' | 't' => m |= (1 << shift) | (0o4000 >> i),
            'S' | 'T' => m |= 0o4000 >> i,
            other => panic!("mode {perm}: {other}"),
        }
    }
    m
}

fn tar_listing(tarfile: &Path) -> Vec<Listed> {
    let o = Command::new("tar")
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .args(["--numeric-owner", "-tvf"])
        .arg(tarfile)
        .output()
        .expect("run GNU tar");
    assert!(o.status.success(), "tar -tvf: {}", text(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (uid, gid) = f[1].split_once('/').expect("uid/gid");
            let mut rest = f[5..].iter();
            let name = rest.next().expect("name").to_string();
            let tail: Vec<&str> = rest.copied().collect();
            let link = match tail.as_slice() {
                [] => None,
                ["->", t] => Some(t.to_string()),
                ["link", "to", t] => Some(t.to_string()),
                other => panic!("unexpected tar -tv line {line:?} ({other:?})"),
            };
            Listed {
                kind: f[0].chars().next().unwrap(),
                mode: mode_bits(&f[0][1..]),
                uid: uid.parse().unwrap(),
                gid: gid.parse().unwrap(),
                size: f[2].to_string(),
                when: format!("{} {}", f[3], f[4]),
                name,
                link,
            }
        })
        .collect()
}

/// `YYYY-MM-DD HH:MM` of a unix time, in UTC.
fn utc_minute(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Every xattr below `dir` (`getfattr -R`, symlinks not followed): relative path → name → value.
fn xattrs_below(dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let o = Command::new("getfattr")
        .args([
            "-R",
            "-P",
            "-h",
            "-d",
            "-m",
            "-",
            "-e",
            "text",
            "--absolute-names",
        ])
        .arg(dir)
        .output()
        .expect("getfattr (Debian package attr) is needed: apt-get install attr");
    assert!(o.status.success(), "getfattr: {}", text(&o));
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut cur = String::new();
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        if let Some(p) = line.strip_prefix("# file: ") {
            let p = Path::new(p);
            cur = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        } else if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("security.") {
                continue;
            }
            let v = v.trim_matches('"').to_string();
            out.entry(cur.clone()).or_default().insert(k.to_string(), v);
        }
    }
    out
}

/// Every path below `dir`, relative ("" for `dir` itself).
fn walk(dir: &Path) -> BTreeSet<String> {
    fn go(base: &Path, p: &Path, out: &mut BTreeSet<String>) {
        out.insert(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        if fs::symlink_metadata(p).unwrap().is_dir() {
            for e in fs::read_dir(p).unwrap() {
                go(base, &e.unwrap().path(), out);
            }
        }
    }
    let mut out = BTreeSet::new();
    go(dir, dir, &mut out);
    out
}

fn clean_name(n: &str) -> String {
    let n = n.trim_end_matches('/');
    let n = n.strip_prefix("./").unwrap_or(n);
    if n == "." {
        String::new()
    } else {
        n.to_string()
    }
}

/// Checks that `diff` holds exactly what GNU tar lists of `tarfile`, in overlayfs form, with the
/// xattrs of `entries`.
fn check_layer(diff: &Path, tarfile: &Path, entries: &[Ent]) {
    let listing = tar_listing(tarfile);
    assert_eq!(listing.len(), entries.len(), "{listing:#?}");
    // The layer root is there even when the archive has no `./` entry.
    let mut accounted = BTreeSet::from([String::new()]);
    let mut want_xattrs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for l in &listing {
        let name = clean_name(&l.name);
        let (parent, base) = match name.rsplit_once('/') {
            Some((p, b)) => (p.to_string(), b.to_string()),
            None => (String::new(), name.clone()),
        };
        let join = |b: &str| {
            if parent.is_empty() {
                b.to_string()
            } else {
                format!("{parent}/{b}")
            }
        };
        if base == ".wh..wh..opq" {
            assert!(
                fs::symlink_metadata(diff.join(&name)).is_err(),
                "{name}: the marker itself must not be extracted"
            );
            assert!(diff.join(&parent).is_dir(), "{parent}: opaque dir");
            want_xattrs
                .entry(parent.clone())
                .or_default()
                .insert("trusted.overlay.opaque".into(), "y".into());
            continue;
        }
        if let Some(target) = base.strip_prefix(".wh.") {
            assert!(
                fs::symlink_metadata(diff.join(&name)).is_err(),
                "{name}: the whiteout file itself must not be extracted"
            );
            let t = join(target);
            let m = fs::symlink_metadata(diff.join(&t))
                .unwrap_or_else(|e| panic!("whiteout {t} missing: {e}"));
            assert!(
                m.file_type().is_char_device(),
                "{t}: whiteout is a char device"
            );
            assert_eq!(m.rdev(), 0, "{t}: whiteout is 0/0");
            accounted.insert(t);
            continue;
        }
        let p = diff.join(&name);
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ft = m.file_type();
        match l.kind {
            '-' => {
                assert!(ft.is_file(), "{name}: regular file");
                assert_eq!(m.size().to_string(), l.size, "{name}: size");
            }
            'd' => assert!(ft.is_dir(), "{name}: directory"),
            'l' => {
                assert!(ft.is_symlink(), "{name}: symlink");
                assert_eq!(
                    fs::read_link(&p).unwrap().to_str(),
                    l.link.as_deref(),
                    "{name}: symlink target"
                );
            }
            'h' => {
                let target = clean_name(l.link.as_deref().unwrap());
                let t = fs::symlink_metadata(diff.join(&target)).unwrap();
                assert!(ft.is_file(), "{name}: hard link to a file");
                assert_eq!(
                    (m.dev(), m.ino()),
                    (t.dev(), t.ino()),
                    "{name}: same inode as {target}"
                );
                assert!(m.nlink() >= 2, "{name}: nlink");
            }
            'p' => assert!(ft.is_fifo(), "{name}: fifo"),
            'c' | 'b' => {
                assert!(
                    if l.kind == 'c' {
                        ft.is_char_device()
                    } else {
                        ft.is_block_device()
                    },
                    "{name}: device type"
                );
                let (ma, mi) = l.size.split_once(',').expect("major,minor");
                let rdev = m.rdev();
                assert_eq!(
                    (libc::major(rdev), libc::minor(rdev)),
                    (ma.parse().unwrap(), mi.parse().unwrap()),
                    "{name}: device numbers"
                );
            }
            other => panic!("{name}: unexpected type {other}"),
        }
        assert_eq!(
            m.mode() & 0o7777,
            l.mode,
            "{name}: mode {:o} vs {:o}",
            m.mode() & 0o7777,
            l.mode
        );
        assert_eq!((m.uid(), m.gid()), (l.uid, l.gid), "{name}: owner");
        assert_eq!(utc_minute(m.mtime()), l.when, "{name}: mtime");
        accounted.insert(name);
    }
    // Nothing more than the archive holds.
    assert_eq!(walk(diff), accounted, "{}", diff.display());
    // The xattrs of the archive (also seen through hard links), and the opaque markers.
    for e in entries {
        for (k, v) in &e.xattrs {
            let name = clean_name(e.path);
            want_xattrs
                .entry(name)
                .or_default()
                .insert(k.to_string(), v.to_string());
        }
    }
    for e in entries {
        if let Kind::Hardlink(t) = e.kind
            && let Some(x) = want_xattrs.get(&clean_name(t)).cloned()
        {
            want_xattrs.insert(clean_name(e.path), x);
        }
    }
    assert_eq!(xattrs_below(diff), want_xattrs, "{}", diff.display());
}

#[test]
fn multi_layer_image_extracts_exactly_what_tar_lists() {
    if !is_root() {
        eprintln!("skipped: needs root (owners, device nodes, trusted.* xattrs)");
        return;
    }
    let st = TempStore::new();
    let img = test_image(&st.dir.path().join("layout"));
    let out = st.ok(&["load", "-i", img.layout.dir.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: multi:v1\nLoaded image: base:v1\n");
    assert_eq!(tags(&st), vec!["base:v1", "multi:v1"]);

    let doc = inspect(&st, "multi:v1");
    assert_eq!(doc["Id"], img.multi_id);
    assert_eq!(doc["RootFS"]["Layers"], json!(img.diff_ids));
    let total: usize = img.tars.iter().map(Vec::len).sum();
    assert_eq!(doc["Size"], json!(total));
    assert_eq!(inspect(&st, "base:v1")["Id"], img.base_id);
    assert_eq!(
        dir_entries(&st.root().join("layers")),
        img.diff_ids
            .iter()
            .map(|d| hex_of(d).to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );

    let entries = layer_entries();
    for (i, d) in img.diff_ids.iter().enumerate() {
        let tarfile = st.dir.path().join(format!("layer{}.tar", i + 1));
        fs::write(&tarfile, &img.tars[i]).unwrap();
        let diff = st.root().join("layers").join(hex_of(d)).join("diff");
        check_layer(&diff, &tarfile, &entries[i]);
    }
    // GNU tar reads the long name back from the header strata read it from.
    assert!(
        st.root()
            .join("layers")
            .join(hex_of(&img.diff_ids[2]))
            .join("diff")
            .join(LONG_NAME)
            .is_file()
    );
    st.assert_fsck_clean();

    // Saved again, the layout holds the very blobs written here.
    let saved = st.dir.path().join("saved");
    st.ok(&[
        "save",
        "--format",
        "oci-dir",
        "-o",
        saved.to_str().unwrap(),
        "multi:v1",
    ]);
    let src: BTreeSet<String> = dir_entries(&img.layout.dir.join("blobs/sha256"))
        .into_iter()
        .collect();
    for b in dir_entries(&saved.join("blobs/sha256")) {
        assert!(src.contains(&b), "{b} is not a blob of the source layout");
        assert_eq!(
            fs::read(saved.join("blobs/sha256").join(&b)).unwrap(),
            fs::read(img.layout.dir.join("blobs/sha256").join(&b)).unwrap()
        );
    }
    let info = skopeo_json(&[
        "inspect",
        &format!("oci:{}:multi:v1", saved.to_str().unwrap()),
    ]);
    assert_eq!(info["Layers"].as_array().unwrap().len(), 3);
    // A docker-archive of it carries the original layer tars.
    let da = st.dir.path().join("multi.tar");
    st.ok(&["save", "-o", da.to_str().unwrap(), "multi:v1"]);
    let members = tar_members(&da);
    for (i, d) in img.diff_ids.iter().enumerate() {
        assert_eq!(members[&format!("{}.tar", hex_of(d))], img.tars[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Image commands, as docker has them

/// The keys of a row of `docker images --format '{{json .}}'`.
const DOCKER_IMAGE_KEYS: [&str; 11] = [
    "Containers",
    "CreatedAt",
    "CreatedSince",
    "Digest",
    "ID",
    "Repository",
    "SharedSize",
    "Size",
    "Tag",
    "UniqueSize",
    "VirtualSize",
];

/// go-units `HumanSizeWithPrecision(n, 3)` for sizes below 1 MB: `%.3g` kB.
fn docker_size(n: u64) -> String {
    assert!((1000..1_000_000).contains(&n), "{n}");
    let k = n as f64 / 1000.0;
    let v = if k >= 100.0 {
        format!("{k:.0}")
    } else if k >= 10.0 {
        format!("{k:.1}")
    } else {
        format!("{k:.2}")
    };
    let v = if v.contains('.') {
        v.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        v
    };
    format!("{v}kB")
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn image_commands_behave_like_docker() {
    if !is_root() {
        eprintln!("skipped: the test image holds device nodes (needs root)");
        return;
    }
    let st = TempStore::new();
    let img = test_image(&st.dir.path().join("layout"));
    st.ok(&["load", "-q", "-i", img.layout.dir.to_str().unwrap()]);
    let multi_short = &hex_of(&img.multi_id)[..12];
    let base_short = &hex_of(&img.base_id)[..12];
    let layer_dir = |i: usize| st.root().join("layers").join(hex_of(&img.diff_ids[i]));
    let multi_manifest = s(&inspect(&st, "multi:v1")["Descriptor"]["digest"]).to_string();

    // tag
    assert_eq!(st.ok(&["tag", "multi:v1", "multi:v2"]), "");
    assert_eq!(tags(&st), vec!["base:v1", "multi:v1", "multi:v2"]);
    assert_eq!(inspect(&st, "multi:v2")["Id"], img.multi_id);
    assert_eq!(
        inspect(&st, "multi:v1")["RepoTags"],
        json!(["multi:v1", "multi:v2"])
    );

    // images -q: one id per row, as docker
    assert_eq!(
        sorted_lines(&st.ok(&["images", "-q"])),
        sorted_lines(&format!("{base_short}\n{multi_short}\n{multi_short}\n"))
    );
    assert_eq!(st.ok(&["images", "-q", "base"]), format!("{base_short}\n"));
    assert_eq!(
        st.ok(&["images", "-q", "--no-trunc", "multi:v2"]),
        format!("{}\n", img.multi_id)
    );

    // images --format '{{json .}}': one object per line, docker's keys
    let lines = st.ok(&["images", "--format", "{{json .}}"]);
    let rows: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(rows.len(), 3, "{lines}");
    for r in &rows {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, DOCKER_IMAGE_KEYS, "{r}");
        assert_eq!(r["CreatedAt"], "2024-01-02 03:04:05 +0000 UTC");
        assert!(s(&r["CreatedSince"]).ends_with(" ago"), "{r}");
    }
    let v2 = rows
        .iter()
        .find(|r| r["Tag"] == "v2")
        .expect("multi:v2 row");
    assert_eq!(v2["Repository"], "multi");
    assert_eq!(v2["ID"], multi_short);
    assert_eq!(v2["Digest"], multi_manifest);
    let total: usize = img.tars.iter().map(Vec::len).sum();
    assert_eq!(v2["Size"], docker_size(total as u64));
    // images --format json: the same objects, as one array
    let arr: Value = serde_json::from_str(&st.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(arr, Value::Array(rows.clone()));
    // the default table
    let table = st.ok(&["images"]);
    let header: Vec<&str> = table.lines().next().unwrap().split("   ").collect();
    assert_eq!(
        header
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>(),
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    );
    assert_eq!(table.lines().count(), 4);

    // history: newest first, the empty layer with size 0, the id on the top row only
    let h = st.ok(&[
        "history",
        "--no-trunc",
        "-H",
        "false",
        "--format",
        "{{.ID}}|{{.CreatedBy}}|{{.Size}}",
        "multi:v1",
    ]);
    assert_eq!(
        h,
        format!(
            "{}|layer 3|{}\n<missing>|layer 2|{}\n<missing>|ENV A=1|0\n<missing>|layer 1|{}\n",
            img.multi_id,
            img.tars[2].len(),
            img.tars[1].len(),
            img.tars[0].len()
        )
    );
    let h = st.ok(&["history", "multi:v1"]);
    let h: Vec<&str> = h.lines().collect();
    assert_eq!(h.len(), 5, "{h:?}");
    assert!(
        h[0].starts_with("IMAGE") && h[0].contains("CREATED BY"),
        "{h:?}"
    );
    assert!(h[1].starts_with(multi_short), "{h:?}");
    assert!(h[2..].iter().all(|l| l.starts_with("<missing>")), "{h:?}");
    assert_eq!(
        st.ok(&["history", "-q", "base:v1"]),
        format!("{base_short}\n<missing>\n")
    );

    // system df
    let blobs = dir_entries(&img.layout.dir.join("blobs/sha256")).len();
    assert_eq!(
        st.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]),
        format!("Images 2\nContainers 0\nLayers 3\nBlobs {blobs}\n")
    );
    let df = st.ok(&["system", "df"]);
    assert!(df.starts_with("TYPE"), "{df}");
    assert!(df.contains("RECLAIMABLE"), "{df}");

    // info and version
    let info = st.ok(&["info"]);
    assert!(info.contains("FUSE"), "{info}");
    assert!(info.contains("Passthrough"), "{info}");
    let info: Value = serde_json::from_str(&st.ok(&["info", "--format", "json"])).unwrap();
    assert!(
        info["Fuse"].is_boolean() && info["Passthrough"].is_boolean(),
        "{info}"
    );
    assert_eq!(
        (info["Images"].as_u64(), info["Layers"].as_u64()),
        (Some(2), Some(3))
    );
    let version = st.ok(&["version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let version: Value = serde_json::from_str(&st.ok(&["version", "--format", "json"])).unwrap();
    assert_eq!(version["Version"], env!("CARGO_PKG_VERSION"));

    // missing images
    let o = st.run(&["inspect", "nothere"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("No such image: nothere"),
        "{}",
        text(&o)
    );
    let o = st.run(&["rmi", "nothere:v9"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such image"));

    // invalid tags are refused, and nothing changes
    let before = st.ok(&["images", "--format", "json", "--no-trunc"]);
    for bad in [
        "Bad:Tag",
        "x:$(reboot)",
        "a//b",
        "multi:",
        "multi:-x",
        ":v1",
        "multi:v1 x",
        "../x",
    ] {
        let o = st.run(&["tag", "multi:v1", bad]);
        assert_eq!(o.status.code(), Some(1), "tag {bad:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("invalid reference format") && err.contains(&format!("{bad:?}")),
            "tag {bad:?}: {err}"
        );
    }
    let o = st.run(&["tag", "nothere", "x:1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(st.ok(&["images", "--format", "json", "--no-trunc"]), before);

    // rmi of one of two tags only untags
    assert_eq!(st.ok(&["rmi", "multi:v2"]), "Untagged: multi:v2\n");
    assert_eq!(tags(&st), vec!["base:v1", "multi:v1"]);
    assert!((0..3).all(|i| layer_dir(i).join("diff").is_dir()));
    // rmi of the last tag deletes the image; the layer base:v1 shares stays
    assert_eq!(
        st.ok(&["rmi", "multi:v1"]),
        format!("Untagged: multi:v1\nDeleted: {}\n", img.multi_id)
    );
    assert_eq!(tags(&st), vec!["base:v1"]);
    assert!(layer_dir(0).join("diff/bin/tool").is_file());
    assert!(!layer_dir(1).exists() && !layer_dir(2).exists());
    assert!(
        !st.root()
            .join("blobs/sha256")
            .join(hex_of(&img.multi_id))
            .exists()
    );
    assert!(
        !st.root()
            .join("blobs/sha256")
            .join(hex_of(&multi_manifest))
            .exists()
    );
    st.assert_fsck_clean();

    // rmi by id of an image with two names needs -f
    st.ok(&["tag", "base:v1", "other/base:v2"]);
    let o = st.run(&["rmi", base_short]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("must be forced"),
        "{}",
        text(&o)
    );
    assert_eq!(tags(&st), vec!["base:v1", "other/base:v2"]);
    assert_eq!(
        sorted_lines(&st.ok(&["rmi", "-f", base_short])),
        sorted_lines(&format!(
            "Untagged: base:v1\nUntagged: other/base:v2\nDeleted: {}\n",
            img.base_id
        ))
    );
    assert_store_empty(&st, "rmi -f");
    let df = st.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert_eq!(df, "Images 0\nContainers 0\nLayers 0\nBlobs 0\n");
}

// ---------------------------------------------------------------------------------------------
// 5. Broken layouts are refused, naming what is wrong, and leave nothing behind

/// Two small layers any user can extract.
fn plain_tars() -> [Vec<u8>; 2] {
    use Kind::*;
    [
        build_tar(&[ent("a/", Dir, 0o755), ent("a/1.txt", File(b"one\n"), 0o644)]),
        build_tar(&[
            ent("b/", Dir, 0o755),
            ent("b/2.txt", File(&[b'x'; 3000]), 0o644),
            ent("a/.wh.1.txt", File(b""), 0o644),
        ]),
    ]
}

/// `load -i input` fails with exit status 1 and one line naming each of `want`, and leaves the
/// store empty.
fn assert_load_fails(st: &TempStore, input: &Path, what: &str, want: &[&str]) {
    let o = st.run(&["load", "-i", input.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for w in want {
        assert!(
            err.contains(w),
            "{what}: the error does not name {w:?}: {err}"
        );
    }
    assert_eq!(err.lines().count(), 1, "{what}: {err}");
    assert_eq!(o.stdout, b"", "{what}");
    assert_store_empty(st, what);
}

/// A docker-archive (`docker save` format) of one image.
fn docker_archive(path: &Path, config: &[u8], layers: &[&[u8]], tag: &str) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("config.json", config);
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("{i}/layer.tar"))
        .collect();
    for (n, l) in names.iter().zip(layers) {
        add(n, l);
    }
    let manifest =
        json!([{"Config": "config.json", "RepoTags": [tag], "Layers": names}]).to_string();
    add("manifest.json", manifest.as_bytes());
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// Flips one byte of a blob file.
fn corrupt(path: &Path, offset: usize) {
    let mut data = fs::read(path).unwrap();
    data[offset] ^= 0x55;
    fs::write(path, data).unwrap();
}

#[test]
fn broken_layouts_are_refused_and_leave_nothing() {
    let st = TempStore::new();
    let tars = plain_tars();
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let gz: Vec<Vec<u8>> = tars.iter().map(|t| gzip(t)).collect();
    let gz_digests: Vec<String> = gz.iter().map(|b| sha256(b)).collect();
    let layers = |second: (Vec<u8>, &'static str)| vec![(gz[0].clone(), GZ), second];
    let mut n = 0;
    let mut check = |what: &str, build: &dyn Fn(&mut Layout), want: &[&str]| {
        n += 1;
        let mut layout = Layout::new(st.dir.path().join(format!("bad{n}")));
        build(&mut layout);
        assert_load_fails(&st, &layout.dir, what, want);
        let _ = fs::remove_dir_all(&layout.dir);
    };

    // The control: the same layout, unbroken, loads (and is removed again).
    let good = |l: &mut Layout| {
        l.image(
            &Layout::config(&diff_ids),
            &layers((gz[1].clone(), GZ)),
            "ok:1",
        );
    };
    let mut layout = Layout::new(st.dir.path().join("good"));
    good(&mut layout);
    st.ok(&["load", "-q", "-i", layout.dir.to_str().unwrap()]);
    st.ok(&["rmi", "ok:1"]);
    assert_store_empty(&st, "rmi of the control image");

    check(
        "a layer blob with one byte changed in its gzip header",
        &|l| {
            good(l);
            // the OS byte: still decompresses to the same tar, but the blob digest differs
            corrupt(&l.blob_path(&gz_digests[1]), 9);
        },
        &[&gz_digests[1], "digest mismatch"],
    );
    check(
        "a layer blob with one byte changed in its compressed data",
        &|l| {
            good(l);
            corrupt(&l.blob_path(&gz_digests[1]), gz[1].len() / 2);
        },
        &[&gz_digests[1]],
    );
    check(
        "an uncompressed layer blob with one byte changed",
        &|l| {
            l.image(
                &Layout::config(&diff_ids),
                &layers((tars[1].clone(), "application/vnd.oci.image.layer.v1.tar")),
                "bad:1",
            );
            corrupt(&l.blob_path(&diff_ids[1]), 1024 + 100);
        },
        &[&diff_ids[1]],
    );
    let wrong = sha256(b"not the layer");
    check(
        "a config whose diff_id does not match the layer",
        &|l| {
            let config = Layout::config(&[diff_ids[0].clone(), wrong.clone()]);
            l.image(&config, &layers((gz[1].clone(), GZ)), "bad:1");
        },
        &["diff_id", &wrong, &diff_ids[1]],
    );
    check(
        "a config that is not JSON",
        &|l| {
            l.image(b"this is {not JSON", &layers((gz[1].clone(), GZ)), "bad:1");
        },
        &["config", "not JSON"],
    );
    check(
        "a config that is JSON but no image config",
        &|l| {
            l.image(br#"{"rootfs": 42}"#, &layers((gz[1].clone(), GZ)), "bad:1");
        },
        &["config"],
    );
    check(
        "a config with fewer diff_ids than the manifest has layers",
        &|l| {
            l.image(
                &Layout::config(&diff_ids[..1]),
                &layers((gz[1].clone(), GZ)),
                "bad:1",
            );
        },
        &["2 layers", "1 diff_ids"],
    );
    let missing = sha256(b"no such manifest");
    check(
        "an index.json entry naming a missing blob",
        &|l| {
            l.index
                .push(json!({"mediaType": MANIFEST, "digest": missing, "size": 16,
                "annotations": {"org.opencontainers.image.ref.name": "bad:1"}}));
            l.write_index();
        },
        &[hex_of(&missing)],
    );
    check(
        "a manifest naming a missing layer blob",
        &|l| {
            good(l);
            fs::remove_file(l.blob_path(&gz_digests[1])).unwrap();
        },
        &[hex_of(&gz_digests[1])],
    );
    let config = Layout::config(&diff_ids);
    let config_digest = sha256(&config);
    check(
        "a manifest naming a missing config blob",
        &|l| {
            l.image(&config, &layers((gz[1].clone(), GZ)), "bad:1");
            fs::remove_file(l.blob_path(&config_digest)).unwrap();
        },
        &[hex_of(&config_digest)],
    );
    check(
        "an index.json entry whose size is wrong",
        &|l| {
            good(l);
            l.index[0]["size"] = json!(l.index[0]["size"].as_u64().unwrap() + 1);
            l.write_index();
        },
        &["size"],
    );
    check(
        "a layer blob that is gzip where the media type says zstd",
        &|l| {
            l.image(
                &Layout::config(&diff_ids),
                &layers((gz[1].clone(), ZST)),
                "bad:1",
            );
        },
        &[&gz_digests[1], "Zstd"],
    );
    check(
        "an index.json that is not JSON",
        &|l| {
            good(l);
            fs::write(l.dir.join("index.json"), b"{").unwrap();
        },
        &["index.json"],
    );

    // docker-archives: the control, then a wrong diff_id for the second layer
    let da = st.dir.path().join("bad.tar");
    docker_archive(&da, &config, &[&tars[0], &tars[1]], "ok:1");
    assert_eq!(
        st.ok(&["load", "-i", da.to_str().unwrap()]),
        "Loaded image: ok:1\n"
    );
    st.ok(&["rmi", "ok:1"]);
    assert_store_empty(&st, "rmi of the docker-archive control image");
    let bad_config = Layout::config(&[diff_ids[0].clone(), wrong.clone()]);
    docker_archive(&da, &bad_config, &[&tars[0], &tars[1]], "bad:1");
    assert_load_fails(
        &st,
        &da,
        "a docker-archive whose config has a wrong diff_id",
        &["1/layer.tar", "diff_id", &wrong],
    );
    docker_archive(&da, &config, &[&tars[0]], "bad:1");
    assert_load_fails(
        &st,
        &da,
        "a docker-archive with a layer missing",
        &["1 layers", "2 diff_ids"],
    );
}

/// Regression: the tar crate leaves the device fields of a fifo NUL unless they are set; GNU
/// tar lists and extracts such an archive (it only reads device numbers of devices), and so
/// must strata (it used to refuse it with "bad device field").
#[test]
fn fifo_with_empty_device_fields() {
    let st = TempStore::new();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Fifo);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(T0);
    h.set_size(0);
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "fifo", &b""[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let mut layout = Layout::new(st.dir.path().join("layout"));
    layout.image(
        &Layout::config(&[sha256(&tar)]),
        &[(gzip(&tar), GZ)],
        "fifo:1",
    );
    st.ok(&["load", "-q", "-i", layout.dir.to_str().unwrap()]);
    let diff = st
        .root()
        .join("layers")
        .join(hex_of(&sha256(&tar)))
        .join("diff");
    assert!(
        fs::symlink_metadata(diff.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}
