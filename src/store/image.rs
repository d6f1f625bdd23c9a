//! Image manifests, indexes and configs (OCI and Docker schema 2), parsed with the `oci-spec`
//! types and checked for what the store relies on: valid digests, one diff_id per layer, known
//! media types. Blobs are always kept as received; this module only reads them, or writes new
//! ones for images strata creates itself.

use std::collections::BTreeMap;

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde_json::json;

use super::digest::Digest;
use super::error::{Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Annotation with the reference name of a manifest in an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation with the full image name (containerd, docker ≥ 25).
pub const IMAGE_NAME: &str = "io.containerd.image.name";

/// A content descriptor, validated.
#[derive(Debug, Clone)]
pub struct Desc {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
    /// (os, architecture, variant), for index entries.
    pub platform: Option<(String, String, Option<String>)>,
}

/// A parsed image manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub config: Desc,
    pub layers: Vec<Desc>,
}

/// Whether a blob is an image index / manifest list rather than a manifest.
pub fn is_index(media_type: Option<&str>, data: &[u8]) -> bool {
    match media_type {
        Some(OCI_INDEX) | Some(DOCKER_LIST) => true,
        Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
        _ => serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| v.get("manifests").map(|m| m.is_array()))
            .unwrap_or(false),
    }
}

fn desc(d: &oci_spec::image::Descriptor, what: &str) -> Result<Desc> {
    let digest: Digest = d
        .digest()
        .to_string()
        .parse()
        .map_err(|e| Error::BadInput(format!("{what}: {e}")))?;
    Ok(Desc {
        media_type: d.media_type().to_string(),
        digest,
        size: d.size(),
        annotations: d
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        platform: d.platform().as_ref().map(|p| {
            (
                p.os().to_string(),
                p.architecture().to_string(),
                p.variant().clone(),
            )
        }),
    })
}

/// Parses an image manifest (OCI or Docker schema 2).
pub fn parse_manifest(data: &[u8], what: &str) -> Result<Manifest> {
    let v: serde_json::Value = serde_json::from_slice(data)
        .map_err(|e| Error::BadInput(format!("{what}: manifest is not JSON: {e}")))?;
    if v.get("schemaVersion").and_then(|s| s.as_i64()) != Some(2) {
        return Err(Error::BadInput(format!(
            "{what}: unsupported manifest (schemaVersion is not 2)"
        )));
    }
    let m = ImageManifest::from_reader(data)
        .map_err(|e| Error::BadInput(format!("{what}: malformed image manifest: {e}")))?;
    let media_type = v
        .get("mediaType")
        .and_then(|s| s.as_str())
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(Error::BadInput(format!(
            "{what}: unsupported manifest media type {media_type:?}"
        )));
    }
    let config = desc(m.config(), &format!("{what}: config descriptor"))?;
    let layers = m
        .layers()
        .iter()
        .enumerate()
        .map(|(i, l)| desc(l, &format!("{what}: layer {i}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Manifest {
        media_type,
        config,
        layers,
    })
}

/// Parses an image index or manifest list; returns its entries.
pub fn parse_index(data: &[u8], what: &str) -> Result<Vec<Desc>> {
    let idx = ImageIndex::from_reader(data)
        .map_err(|e| Error::BadInput(format!("{what}: malformed image index: {e}")))?;
    idx.manifests()
        .iter()
        .enumerate()
        .map(|(i, d)| desc(d, &format!("{what}: entry {i}")))
        .collect()
}

/// A parsed image config with what the store needs from it.
#[derive(Debug, Clone)]
pub struct Config {
    pub raw: serde_json::Value,
    pub diff_ids: Vec<Digest>,
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
}

/// Parses and checks an image config.
pub fn parse_config(data: &[u8], what: &str) -> Result<Config> {
    let raw: serde_json::Value = serde_json::from_slice(data)
        .map_err(|e| Error::BadInput(format!("{what}: image config is not JSON: {e}")))?;
    let c = ImageConfiguration::from_reader(data)
        .map_err(|e| Error::BadInput(format!("{what}: malformed image config: {e}")))?;
    if c.rootfs().typ() != "layers" {
        return Err(Error::BadInput(format!(
            "{what}: rootfs type {:?} is not \"layers\"",
            c.rootfs().typ()
        )));
    }
    let diff_ids = c
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| {
            d.parse::<Digest>()
                .map_err(|e| Error::BadInput(format!("{what}: diff_id: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Config {
        diff_ids,
        created: c.created().clone(),
        architecture: c.architecture().to_string(),
        os: c.os().to_string(),
        raw,
    })
}

/// The (os, architecture) of this machine in OCI terms.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}

/// The entry of an index for this machine's platform (or `want`), if any.
pub fn pick_platform<'a>(entries: &[Desc], want: Option<(&'a str, &'a str)>) -> Option<usize> {
    let (os, arch): (&str, &str) = match want {
        Some(w) => w,
        None => host_platform(),
    };
    pick_platform_variant(entries, os, arch, None)
}

/// The entry of an index for `os`/`arch` and, if given, `variant` (`arm64` without a variant
/// is `v8`). Without a variant, an entry without one is preferred, then the first match.
pub fn pick_platform_variant(
    entries: &[Desc],
    os: &str,
    arch: &str,
    variant: Option<&str>,
) -> Option<usize> {
    let norm = |v: Option<&str>| -> Option<String> {
        match (arch, v) {
            ("arm64", None) => Some("v8".into()),
            (_, v) => v.map(str::to_string),
        }
    };
    let matches: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.platform
                .as_ref()
                .is_some_and(|(o, a, _)| o == os && a == arch)
        })
        .map(|(i, _)| i)
        .collect();
    let variant_of = |i: usize| entries[i].platform.as_ref().and_then(|(_, _, v)| v.clone());
    match variant {
        Some(v) => matches
            .into_iter()
            .find(|&i| norm(variant_of(i).as_deref()) == norm(Some(v))),
        None => matches
            .iter()
            .copied()
            .find(|&i| norm(variant_of(i).as_deref()) == norm(None))
            .or_else(|| matches.first().copied()),
    }
}

/// The bytes of a manifest for a config and layers that strata made or synthesized.
/// `docker` chooses Docker schema 2 media types (as skopeo writes for docker-archive images).
pub fn make_manifest(
    config: (&Digest, u64),
    layers: &[(String, Digest, u64)],
    docker: bool,
) -> Vec<u8> {
    let (mt, cmt) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    } else {
        (OCI_MANIFEST, OCI_CONFIG)
    };
    let layers: Vec<_> = layers
        .iter()
        .map(|(m, d, s)| json!({"mediaType": m, "digest": d.to_string(), "size": s}))
        .collect();
    let v = json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": cmt, "digest": config.0.to_string(), "size": config.1},
        "layers": layers,
    });
    serde_json::to_vec(&v).expect("JSON values serialize")
}

/// The current time in RFC 3339 (UTC, nanoseconds), as image configs record it.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// Formats unix time as RFC 3339 UTC, the fraction without trailing zeros as Go's
/// `RFC3339Nano` writes it (docker, skopeo and the registry re-serialize configs that way, so a
/// 9-digit fraction ending in 0 would not survive a round trip through them unchanged).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    if nanos == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        let frac = format!("{nanos:09}");
        let frac = frac.trim_end_matches('0');
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac}Z")
    }
}

/// Unix seconds → (year, month, day, hour, minute, second), UTC.
pub fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Parses an RFC 3339 time into unix seconds (fractions and offsets handled).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(|c| c.is_ascii_digit()).count();
        rest = &r[n..];
    }
    let offset = match rest {
        "Z" | "z" | "" => 0,
        o if o.len() == 6 => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o.get(1..3)?.parse::<i64>().ok()? * 3600
                + o.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // days-from-civil
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_roundtrip() {
        assert_eq!(rfc3339(1700000000, 0), "2023-11-14T22:13:20Z");
        // As Go's RFC3339Nano: no trailing zeros in the fraction (a registry test failed one
        // time in ten on a config created at a nanosecond count ending in 0).
        assert_eq!(
            rfc3339(1700000000, 989_827_010),
            "2023-11-14T22:13:20.98982701Z"
        );
        assert_eq!(rfc3339(1700000000, 500_000_000), "2023-11-14T22:13:20.5Z");
        assert_eq!(
            rfc3339(1700000000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1700000000));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.123+01:00"),
            Some(1700000000)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    }

    #[test]
    fn rejects_bad_config() {
        assert!(parse_config(b"not json", "x").is_err());
        assert!(parse_config(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:zz"]}}"#, "x").is_err());
        let ok =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert!(parse_config(ok, "x").unwrap().diff_ids.is_empty());
    }
}
