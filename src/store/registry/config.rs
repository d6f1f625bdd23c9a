//! The registries file: mirrors and insecure registries, in the spirit of docker's
//! `daemon.json`.
//!
//! Found at `$STRATA_REGISTRIES_CONF` if set, else `<store root>/registries.json`, else
//! `/etc/strata/registries.json`; no file means no mirrors and only the default insecure
//! registries. Format (every key optional):
//!
//! ```json
//! {
//!   "registry-mirrors": ["https://mirror.example.com"],
//!   "mirrors": {"quay.io": ["http://10.0.0.5:5000"], "127.0.0.1:5000": ["127.0.0.1:5001"]},
//!   "insecure-registries": ["myregistry:5000", "10.0.0.0/8"]
//! }
//! ```
//!
//! `registry-mirrors` mirror Docker Hub (`docker.io`), as docker's; `mirrors` maps any registry
//! to its mirrors. A pull tries the mirrors in order and the registry itself last; pushes never
//! use mirrors. A mirror is `host[:port]` or `http(s)://host[:port]` (no path). Insecure
//! registries (`host[:port]` or a CIDR range) are reached over HTTPS without certificate
//! verification, or plain HTTP when HTTPS fails; `127.0.0.0/8`, `::1` and `localhost` are
//! insecure by default, as in docker.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::store::error::{Error, Result};
use crate::store::reference::DEFAULT_DOMAIN;

/// The host that serves `docker.io`.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// The parsed registries file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RegistriesConfig {
    /// Mirrors of docker.io, tried in order.
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    /// Mirrors of any registry: registry host → mirrors, tried in order.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registries reached without TLS verification (or over plain HTTP): `host[:port]` or CIDR.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

/// One place to send requests for a registry's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` as in URLs.
    pub host: String,
    /// A scheme the configuration fixed (`http` or `https`), or `None` to probe.
    pub scheme: Option<String>,
    /// Whether this is a mirror (its failures fall back to the next endpoint).
    pub mirror: bool,
}

impl Endpoint {
    /// How the endpoint is shown in messages.
    pub fn display(&self) -> String {
        match &self.scheme {
            Some(s) => format!("{s}://{}", self.host),
            None => self.host.clone(),
        }
    }
}

/// Parses a mirror: `host[:port]` or `http(s)://host[:port][/]`.
pub fn parse_mirror(m: &str) -> std::result::Result<Endpoint, String> {
    let (scheme, rest) = match m.split_once("://") {
        Some((s, r)) if s == "http" || s == "https" => (Some(s.to_string()), r),
        Some((s, _)) => return Err(format!("mirror {m:?}: unsupported scheme {s:?}")),
        None => (None, m),
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty()
        || host.contains(['/', '?', '#', '@'])
        || host.chars().any(|c| c.is_whitespace())
    {
        return Err(format!(
            "mirror {m:?}: expected host[:port] or http(s)://host[:port], without path, query or user"
        ));
    }
    Ok(Endpoint {
        host: host.to_string(),
        scheme,
        mirror: true,
    })
}

impl RegistriesConfig {
    /// The file strata reads for a store at `root` (the first that exists), if any.
    pub fn path(root: &Path) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("STRATA_REGISTRIES_CONF").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        [
            root.join("registries.json"),
            PathBuf::from("/etc/strata/registries.json"),
        ]
        .into_iter()
        .find(|p| p.exists())
    }

    /// Loads the registries file for a store at `root` (defaults if there is none).
    pub fn load(root: &Path) -> Result<RegistriesConfig> {
        match Self::path(root) {
            None => Ok(RegistriesConfig::default()),
            Some(p) => Self::from_file(&p),
        }
    }

    /// Loads and checks one registries file.
    pub fn from_file(p: &Path) -> Result<RegistriesConfig> {
        let data = std::fs::read(p).map_err(|e| Error::io("read registries file", p, e))?;
        let c: RegistriesConfig = serde_json::from_slice(&data)
            .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        for m in c
            .registry_mirrors
            .iter()
            .chain(c.mirrors.values().flatten())
        {
            parse_mirror(m).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        }
        for i in &c.insecure_registries {
            if i.contains('/') && parse_cidr(i).is_none() {
                return Err(Error::Invalid(format!(
                    "{}: insecure-registries: {i:?} is neither host[:port] nor a CIDR range",
                    p.display()
                )));
            }
        }
        Ok(c)
    }

    /// The endpoints a pull from `domain` tries, in order: its mirrors, then the registry.
    pub fn pull_endpoints(&self, domain: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mut add = |m: &String| {
            if let Ok(e) = parse_mirror(m)
                && !out.contains(&e)
            {
                out.push(e);
            }
        };
        if domain == DEFAULT_DOMAIN {
            self.registry_mirrors.iter().for_each(&mut add);
        }
        if let Some(ms) = self.mirrors.get(domain) {
            ms.iter().for_each(&mut add);
        }
        out.push(source_endpoint(domain));
        out
    }

    /// Whether `host` (`host[:port]`) is an insecure registry.
    pub fn is_insecure(&self, host: &str) -> bool {
        let bare = host_without_port(host);
        if bare == "localhost" {
            return true;
        }
        let ip: Option<IpAddr> = bare.trim_matches(['[', ']']).parse().ok();
        if ip.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.insecure_registries.iter().any(|i| {
            if let Some((net, len)) = parse_cidr(i) {
                ip.is_some_and(|ip| cidr_contains(net, len, ip))
            } else {
                let i = i
                    .strip_prefix("http://")
                    .or_else(|| i.strip_prefix("https://"))
                    .unwrap_or(i);
                i == host || i == bare
            }
        })
    }
}

/// The registry's own endpoint (`docker.io` is served by `registry-1.docker.io`).
pub fn source_endpoint(domain: &str) -> Endpoint {
    let host = if domain == DEFAULT_DOMAIN {
        DOCKER_HUB_HOST
    } else {
        domain
    };
    Endpoint {
        host: host.to_string(),
        scheme: None,
        mirror: false,
    }
}

/// `host` of `host:port` (IPv6 in brackets kept as is).
pub fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        return match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => h,
    }
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v) => (u32::from(v) as u128, 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    let ((n, w1), (i, w2)) = (bits(net), bits(ip));
    if w1 != w2 {
        return false;
    }
    let shift = w1 - len as u32;
    if shift >= 128 {
        return true;
    }
    (n >> shift) == (i >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_in_order_then_source() {
        let c: RegistriesConfig = serde_json::from_str(
            r#"{"registry-mirrors":["https://m1.example","m2.example:5000/"],
                "mirrors":{"127.0.0.1:5000":["http://127.0.0.1:5001"]}}"#,
        )
        .unwrap();
        let hosts: Vec<String> = c
            .pull_endpoints("docker.io")
            .iter()
            .map(|e| e.display())
            .collect();
        assert_eq!(
            hosts,
            [
                "https://m1.example",
                "m2.example:5000",
                "registry-1.docker.io"
            ]
        );
        let e = c.pull_endpoints("127.0.0.1:5000");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].scheme.as_deref(), Some("http"));
        assert!(e[0].mirror && !e[1].mirror);
        assert_eq!(c.pull_endpoints("quay.io").len(), 1);
        assert!(parse_mirror("https://m/path").is_err());
        assert!(parse_mirror("ftp://m").is_err());
        assert!(serde_json::from_str::<RegistriesConfig>(r#"{"registry-mirror":[]}"#).is_err());
    }

    #[test]
    fn insecure_defaults_and_ranges() {
        let c: RegistriesConfig = serde_json::from_str(
            r#"{"insecure-registries":["10.0.0.0/8","myreg:5000","plain.example"]}"#,
        )
        .unwrap();
        for h in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:5000",
            "[::1]:5000",
            "10.9.8.7:443",
            "myreg:5000",
            "plain.example:1234",
        ] {
            assert!(c.is_insecure(h), "{h}");
        }
        for h in [
            "myreg:5001",
            "11.0.0.1",
            "docker.io",
            "registry-1.docker.io",
        ] {
            assert!(!c.is_insecure(h), "{h}");
        }
    }
}
