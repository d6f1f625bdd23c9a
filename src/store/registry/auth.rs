//! Credentials and authentication challenges.
//!
//! Credentials live in docker's `config.json` format, so logins made by docker, podman or
//! skopeo work and the other way round: `{"auths": {"host:port": {"auth": "<base64 of
//! user:password>"}}}`; Docker Hub's key is `https://index.docker.io/v1/`. The file is, in
//! order: `$REGISTRY_AUTH_FILE` (podman's variable), `$DOCKER_CONFIG/config.json`, or
//! `$HOME/.docker/config.json`. It is written with mode 0600 through a temporary file, fsync
//! and rename, and every other key in it is kept. Credential helpers (`credsStore`,
//! `credHelpers`) are not run.
//!
//! A registry asks for credentials with `WWW-Authenticate`: `Basic realm=...` (send them with
//! every request) or `Bearer realm=...,service=...,scope=...` (trade them, or nothing, for a
//! token at the realm).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::store::blobs::fsync_dir;
use crate::store::error::{Error, IoContext, Result};
use crate::store::reference::DEFAULT_DOMAIN;

/// The key docker uses for Docker Hub credentials.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// The credentials file (docker `config.json`).
#[derive(Debug, Clone)]
pub struct AuthFile {
    path: PathBuf,
    doc: Map<String, Value>,
}

/// The normalized registry a key of `auths` names: scheme and path dropped; Docker Hub's
/// names all become `docker.io`.
fn normalize(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DEFAULT_DOMAIN.to_string(),
        other => other.to_string(),
    }
}

impl AuthFile {
    /// Where credentials are read and written (see the module docs).
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(d).join("config.json");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".docker/config.json")
    }

    /// Reads the file at `path` (a missing file has no credentials).
    pub fn load(path: &Path) -> Result<AuthFile> {
        let doc = match fs::read(path) {
            Ok(data) if data.iter().all(|b| b.is_ascii_whitespace()) => Map::new(),
            Ok(data) => match serde_json::from_slice::<Value>(&data) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "{}: not a JSON object",
                        path.display()
                    )));
                }
                Err(e) => return Err(Error::Invalid(format!("{}: {e}", path.display()))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(Error::io("read credentials", path, e)),
        };
        Ok(AuthFile {
            path: path.to_path_buf(),
            doc,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn auths(&self) -> Option<&Map<String, Value>> {
        self.doc.get("auths").and_then(Value::as_object)
    }

    /// The key of `registry` in `auths`, if it has one.
    fn key_of(&self, registry: &str) -> Option<String> {
        let want = normalize(registry);
        let auths = self.auths()?;
        // An exact key first, then any spelling of the same registry.
        if auths.contains_key(registry) {
            return Some(registry.to_string());
        }
        auths.keys().find(|k| normalize(k) == want).cloned()
    }

    /// The credentials stored for `registry` (`host[:port]`, `docker.io` for Docker Hub).
    pub fn get(&self, registry: &str) -> Option<Credentials> {
        let key = self.key_of(registry)?;
        let entry = self.auths()?.get(&key)?;
        if let Some(a) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            let raw = B64.decode(a.trim()).ok()?;
            let s = String::from_utf8(raw).ok()?;
            let (u, p) = s.split_once(':')?;
            return Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            });
        }
        let u = entry.get("username").and_then(Value::as_str)?;
        let p = entry.get("password").and_then(Value::as_str)?;
        Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })
    }

    /// Stores credentials for `registry` (replacing any spelling of it already there).
    pub fn set(&mut self, registry: &str, c: &Credentials) {
        let key = match self.key_of(registry) {
            Some(k) => k,
            None if normalize(registry) == DEFAULT_DOMAIN => DOCKER_HUB_KEY.to_string(),
            None => registry.to_string(),
        };
        let auths = self
            .doc
            .entry("auths")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        let auths = match auths {
            Some(a) => a,
            None => {
                self.doc.insert("auths".into(), json!({}));
                self.doc
                    .get_mut("auths")
                    .and_then(Value::as_object_mut)
                    .expect("just inserted")
            }
        };
        let mut entry = match auths.remove(&key) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        entry.remove("username");
        entry.remove("password");
        entry.insert(
            "auth".into(),
            json!(B64.encode(format!("{}:{}", c.username, c.password))),
        );
        auths.insert(key, Value::Object(entry));
    }

    /// Removes the credentials of `registry`; whether there were any.
    pub fn remove(&mut self, registry: &str) -> bool {
        let Some(key) = self.key_of(registry) else {
            return false;
        };
        self.doc
            .get_mut("auths")
            .and_then(Value::as_object_mut)
            .and_then(|a| a.remove(&key))
            .is_some()
    }

    /// Writes the file: mode 0600, temporary file, fsync, rename (a crash leaves the old file
    /// or the new one, never a torn one).
    pub fn save(&self) -> Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .ctx("create credentials directory", &dir)?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.json".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut data = serde_json::to_vec_pretty(&Value::Object(self.doc.clone()))
            .expect("JSON values serialize");
        data.push(b'\n');
        let res = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .ctx("create credentials file", &tmp)?;
            f.write_all(&data).ctx("write credentials file", &tmp)?;
            f.sync_all().ctx("fsync credentials file", &tmp)?;
            fs::rename(&tmp, &self.path).ctx("replace credentials file", &self.path)?;
            fsync_dir(&dir)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP basic authentication.
    Basic,
    /// The token flow: ask `realm` for a token for `service` and the scopes needed.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (`None` for schemes strata does not speak).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

/// `k=v, k="quoted, \"v\""` → pairs.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == ',' || b[i].is_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != '=' && b[i] != ',' {
            i += 1;
        }
        let name: String = b[start..i].iter().collect::<String>().trim().to_string();
        if i >= b.len() || b[i] != '=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' && i + 1 < b.len() {
                    i += 1;
                }
                val.push(b[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < b.len() && b[i] != ',' {
                val.push(b[i]);
                i += 1;
            }
            val = val.trim().to_string();
        }
        if !name.is_empty() {
            out.push((name, val));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="strata-test-registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=http://x/t, service=svc"),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: Some("svc".into()),
                scope: None
            })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn file_round_trip_keeps_other_keys_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/config.json");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(
            &p,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"old:5000":{"auth":""}},"credHelpers":{"x":"y"},"psFormat":"table"}"#,
        )
        .unwrap();
        let mut f = AuthFile::load(&p).unwrap();
        assert_eq!(
            f.get("docker.io"),
            Some(Credentials {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(f.get("127.0.0.1:5000"), None);
        let c = Credentials {
            username: "strata".into(),
            password: "a:b c".into(),
        };
        f.set("127.0.0.1:5000", &c);
        f.save().unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let g = AuthFile::load(&p).unwrap();
        assert_eq!(g.get("127.0.0.1:5000"), Some(c));
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "table");
        assert_eq!(v["credHelpers"]["x"], "y");
        let mut g = g;
        assert!(g.remove("index.docker.io"));
        assert!(!g.remove("index.docker.io"));
        g.save().unwrap();
        assert_eq!(AuthFile::load(&p).unwrap().get("docker.io"), None);
        assert!(
            AuthFile::load(&dir.path().join("none.json"))
                .unwrap()
                .get("x")
                .is_none()
        );
    }
}
