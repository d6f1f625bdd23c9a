//! One registry endpoint over HTTP(S), with `ureq` (blocking, rustls; no async runtime).
//!
//! - The scheme is probed once with `GET /v2/`: HTTPS, then plain HTTP for insecure
//!   registries; the answer's `WWW-Authenticate` challenge is remembered.
//! - Authentication: none, basic (credentials on every request), or bearer tokens fetched from
//!   the challenge's realm (with the credentials if there are any) and cached per scope. A 401
//!   is retried once after a new challenge; a second 401 is an error that says whether
//!   credentials were sent.
//! - Redirects are followed by hand (blob reads go to storage backends on real registries), at
//!   most [`MAX_REDIRECTS`], refusing a URL already visited; credentials go only to the
//!   registry's own host.
//! - Manifests are read up to [`MAX_MANIFEST`] bytes; blob reads resume with `Range` after a
//!   dropped connection ([`BlobReader`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use ureq::http::{self, Response};
use ureq::{Agent, SendBody};

use super::RegistryError;
use super::auth::{Challenge, Credentials, parse_challenge};
use super::config::{Endpoint, RegistriesConfig};
use crate::store::digest::Digest;
use crate::store::error::{Error, Result};
use crate::store::image;

/// The largest manifest or index strata accepts from a registry.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The most redirects one request follows.
pub const MAX_REDIRECTS: usize = 10;
/// How many times a blob read is resumed after the connection drops.
const MAX_RESUMES: u32 = 3;
/// Error bodies are read up to this size.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// The media types a manifest request accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A request body that can be sent again (after a 401, say).
#[derive(Clone, Copy)]
pub enum Payload<'a> {
    None,
    Bytes(&'a [u8]),
    /// `len` bytes of a file from `offset`.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
        /// Counts the bytes sent.
        bar: Option<&'a indicatif::ProgressBar>,
    },
}

/// The HTTP agents and security policy shared by every client of one command.
#[derive(Clone)]
pub struct Transport {
    verify: Agent,
    no_verify: Agent,
    config: RegistriesConfig,
    /// `--tls-verify`: `Some(false)` makes every registry insecure, `Some(true)` none.
    tls_verify: Option<bool>,
}

fn agent(verify: bool) -> Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(!verify)
        .build();
    let read_timeout = std::env::var("STRATA_REGISTRY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(60);
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_per_read(Some(Duration::from_secs(read_timeout)))
        .timeout_per_write(Some(Duration::from_secs(read_timeout)))
        .tls_config(tls)
        .build()
        .new_agent()
}

impl Transport {
    /// Agents for `config`, with the command line's `--tls-verify`.
    pub fn new(config: RegistriesConfig, tls_verify: Option<bool>) -> Transport {
        Transport {
            verify: agent(true),
            no_verify: agent(false),
            config,
            tls_verify,
        }
    }

    /// The registries configuration.
    pub fn config(&self) -> &RegistriesConfig {
        &self.config
    }

    /// Whether `host` is reached without certificate verification (and may fall back to HTTP).
    pub fn insecure(&self, host: &str) -> bool {
        match self.tls_verify {
            Some(v) => !v,
            None => self.config.is_insecure(host),
        }
    }

    fn agent_for(&self, url: &str) -> &Agent {
        if self.insecure(url_host(url)) {
            &self.no_verify
        } else {
            &self.verify
        }
    }
}

/// The `host[:port]` of a URL.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// Resolves a `Location` against the URL it came from.
pub fn resolve_url(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        return loc.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let host = url_host(base);
    if let Some(l) = loc.strip_prefix("//") {
        return format!("{scheme}://{l}");
    }
    if loc.starts_with('/') {
        return format!("{scheme}://{host}{loc}");
    }
    let path = &rest[host.len()..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    format!("{scheme}://{host}{dir}{loc}")
}

/// Percent-encodes a query value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Adds `k=v` to a URL's query.
pub fn add_query(url: &str, k: &str, v: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{k}={}", query_escape(v))
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

/// The message of an error response: the registry's `errors` (code and message), or the
/// start of the body.
pub fn error_message(resp: Response<ureq::Body>) -> String {
    let status = resp.status();
    let mut body = Vec::new();
    let _ = resp
        .into_body()
        .into_reader()
        .take(MAX_ERROR_BODY)
        .read_to_end(&mut body);
    if let Ok(v) = serde_json::from_slice::<Value>(&body)
        && let Some(errs) = v.get("errors").and_then(Value::as_array)
    {
        let msgs: Vec<String> = errs
            .iter()
            .map(|e| {
                let code = e.get("code").and_then(Value::as_str).unwrap_or("");
                let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
                match (code.is_empty(), msg.is_empty()) {
                    (_, false) if !code.is_empty() => {
                        format!("{}: {msg}", code.to_ascii_lowercase().replace('_', " "))
                    }
                    (_, false) => msg.to_string(),
                    (false, true) => code.to_ascii_lowercase().replace('_', " "),
                    (true, true) => String::new(),
                }
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
    }
    let text: String = String::from_utf8_lossy(&body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no explanation")
            .to_lowercase()
    } else {
        text.to_string()
    }
}

/// A client of one endpoint (a registry or one of its mirrors).
pub struct Client {
    transport: Transport,
    endpoint: Endpoint,
    /// The registry whose credentials apply (a mirror uses its own host's).
    cred_name: String,
    creds: Option<Credentials>,
    base: Mutex<Option<String>>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<HashMap<String, String>>,
}

impl Client {
    /// A client of `endpoint`, authenticating with `creds` if the registry asks.
    pub fn new(transport: &Transport, endpoint: Endpoint, creds: Option<Credentials>) -> Client {
        let cred_name = endpoint.host.clone();
        Client {
            transport: transport.clone(),
            endpoint,
            cred_name,
            creds,
            base: Mutex::new(None),
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether credentials will be offered.
    pub fn has_credentials(&self) -> bool {
        self.creds.is_some()
    }

    fn unreachable(&self, message: String) -> Error {
        RegistryError::Unreachable {
            registry: self.endpoint.display(),
            message,
        }
        .into()
    }

    /// One HTTP exchange, no redirects, no retries.
    fn raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        payload: Payload<'_>,
        auth: Option<&str>,
    ) -> std::result::Result<Response<ureq::Body>, ureq::Error> {
        let agent = self.transport.agent_for(url);
        let mut b = http::Request::builder()
            .method(http::Method::from_bytes(method.as_bytes()).map_err(http::Error::from)?)
            .uri(url);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        match payload {
            Payload::None => agent.run(b.body(SendBody::none())?),
            Payload::Bytes(d) => agent.run(b.body(d)?),
            Payload::File {
                path,
                offset,
                len,
                bar,
            } => {
                let mut f = File::open(path)?;
                f.seek(SeekFrom::Start(offset))?;
                let r = f.take(len);
                let body = match bar {
                    Some(bar) => SendBody::from_owned_reader(bar.clone().wrap_read(r)),
                    None => SendBody::from_owned_reader(r),
                };
                agent.run(b.header("Content-Length", len.to_string()).body(body)?)
            }
        }
    }

    /// The base URL (`scheme://host`), probing the registry with `GET /v2/` the first time.
    pub fn base(&self) -> Result<String> {
        let mut guard = self.base.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = guard.as_ref() {
            return Ok(b.clone());
        }
        let host = &self.endpoint.host;
        let schemes: Vec<&str> = match &self.endpoint.scheme {
            Some(s) => vec![s.as_str()],
            None if self.transport.insecure(host) => vec!["https", "http"],
            None => vec!["https"],
        };
        let mut errors = Vec::new();
        for s in schemes {
            let url = format!("{s}://{host}/v2/");
            match self.raw("GET", &url, &[], Payload::None, None) {
                Ok(resp) => {
                    let st = resp.status().as_u16();
                    if st == 401 {
                        let ch = resp
                            .headers()
                            .get_all("www-authenticate")
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .find_map(parse_challenge);
                        *self.challenge.lock().unwrap_or_else(|p| p.into_inner()) = ch;
                    } else if !(200..300).contains(&st) {
                        let msg = error_message(resp);
                        errors.push(format!(
                            "GET {url}: HTTP {st} ({msg}); not a registry (API v2)?"
                        ));
                        continue;
                    }
                    let base = format!("{s}://{host}");
                    *guard = Some(base.clone());
                    return Ok(base);
                }
                Err(e) => errors.push(format!("{url}: {}", describe(&e))),
            }
        }
        Err(self.unreachable(errors.join("; ")))
    }

    fn scope_key(scopes: &[String]) -> String {
        scopes.join(" ")
    }

    /// The `Authorization` header for a request needing `scopes`, fetching a token if the
    /// registry uses tokens and none is cached.
    fn auth_header(&self, scopes: &[String]) -> Result<Option<String>> {
        let ch = self
            .challenge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match ch {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.creds.as_ref().map(|c| c.basic_header())),
            Some(Challenge::Bearer { .. }) => {
                let key = Self::scope_key(scopes);
                if let Some(t) = self
                    .tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let t = self.fetch_token(ch.as_ref().expect("some"), scopes)?;
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    /// Trades the credentials (or nothing) for a token at the challenge's realm.
    fn fetch_token(&self, ch: &Challenge, scopes: &[String]) -> Result<String> {
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = ch
        else {
            return Err(RegistryError::Protocol("not a bearer challenge".into()).into());
        };
        let mut url = realm.clone();
        if let Some(s) = service {
            url = add_query(&url, "service", s);
        }
        let mut asked = false;
        for s in scopes {
            url = add_query(&url, "scope", s);
            asked = true;
        }
        if !asked && let Some(s) = scope {
            url = add_query(&url, "scope", s);
        }
        let auth = self.creds.as_ref().map(|c| c.basic_header());
        let mut seen = vec![url.clone()];
        let resp = loop {
            let resp = self
                .raw("GET", &url, &[], Payload::None, auth.as_deref())
                .map_err(|e| RegistryError::Transport {
                    method: "GET".into(),
                    url: url.clone(),
                    message: format!("token request failed: {}", describe(&e)),
                })?;
            match resp.status().as_u16() {
                301 | 302 | 303 | 307 | 308 => {
                    url = self.next_redirect(&resp, &url, &mut seen)?;
                }
                _ => break resp,
            }
        };
        let st = resp.status().as_u16();
        if st == 401 || st == 403 {
            let msg = error_message(resp);
            return Err(self.refused(&msg));
        }
        if !(200..300).contains(&st) {
            return Err(RegistryError::Status {
                what: "token request".into(),
                method: "GET".into(),
                url,
                status: st,
                message: error_message(resp),
            }
            .into());
        }
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|e| RegistryError::Transport {
                method: "GET".into(),
                url: url.clone(),
                message: e.to_string(),
            })?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Protocol(format!("token from {url}: not JSON: {e}")))?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .or_else(|| v.get("access_token").and_then(Value::as_str))
            .ok_or_else(|| {
                RegistryError::Protocol(format!("token from {url}: no token in the answer"))
            })?
            .to_string();
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Self::scope_key(scopes), token.clone());
        Ok(token)
    }

    /// The error for refused credentials (or missing ones).
    fn refused(&self, registry_msg: &str) -> Error {
        let message = match &self.creds {
            Some(c) => format!(
                "the registry refused the credentials of {:?}: incorrect username or password ({registry_msg})",
                c.username
            ),
            None => format!(
                "authentication required ({registry_msg}); log in with: strata login {}",
                self.cred_name
            ),
        };
        RegistryError::Unauthorized {
            registry: self.endpoint.display(),
            message,
        }
        .into()
    }

    fn next_redirect(
        &self,
        resp: &Response<ureq::Body>,
        url: &str,
        seen: &mut Vec<String>,
    ) -> Result<String> {
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                RegistryError::Protocol(format!(
                    "{url}: redirect (HTTP {}) without a Location",
                    resp.status().as_u16()
                ))
            })?;
        let next = resolve_url(url, loc);
        if seen.contains(&next) {
            return Err(RegistryError::Protocol(format!(
                "redirect loop: {url} redirects to {next}, which was visited already (from {})",
                seen[0]
            ))
            .into());
        }
        if seen.len() > MAX_REDIRECTS {
            return Err(RegistryError::Protocol(format!(
                "{}: more than {MAX_REDIRECTS} redirects",
                seen[0]
            ))
            .into());
        }
        seen.push(next.clone());
        Ok(next)
    }

    /// Sends a request to the registry (`path` below the base URL, or a full URL such as an
    /// upload location), authenticating for `scopes` and following redirects when `follow`.
    /// Returns the final response whatever its status, except 401 (an error).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        payload: Payload<'_>,
        scopes: &[String],
        follow: bool,
    ) -> Result<Response<ureq::Body>> {
        let base = self.base()?;
        let mut url = if path.contains("://") {
            path.to_string()
        } else {
            format!("{base}{path}")
        };
        let own_host = url_host(&base).to_string();
        let mut seen = vec![url.clone()];
        let mut retried = false;
        loop {
            let ours = url_host(&url) == own_host;
            let auth = if ours {
                self.auth_header(scopes)?
            } else {
                None
            };
            let resp = self
                .raw(method, &url, headers, payload, auth.as_deref())
                .map_err(|e| RegistryError::Transport {
                    method: method.into(),
                    url: url.clone(),
                    message: describe(&e),
                })?;
            let st = resp.status().as_u16();
            if st == 401 && ours {
                let ch = resp
                    .headers()
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(parse_challenge);
                let old = self
                    .challenge
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                // Retry once when the challenge tells something new: a scheme not tried yet,
                // or a token that may have expired.
                let retry = !retried
                    && match &ch {
                        Some(Challenge::Basic) => {
                            self.creds.is_some() && old != Some(Challenge::Basic)
                        }
                        Some(Challenge::Bearer { .. }) => true,
                        None => false,
                    };
                if retry {
                    retried = true;
                    self.tokens
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&Self::scope_key(scopes));
                    *self.challenge.lock().unwrap_or_else(|p| p.into_inner()) = ch;
                    continue;
                }
                let msg = error_message(resp);
                return Err(self.refused(&msg));
            }
            if follow && matches!(st, 301 | 302 | 303 | 307 | 308) {
                url = self.next_redirect(&resp, &url, &mut seen)?;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Fetches a manifest or index by tag or digest: its bytes (at most [`MAX_MANIFEST`]),
    /// media type (from `Content-Type` or the document) and the digest of the bytes.
    pub fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        scopes: &[String],
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>, Digest)> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.send(
            "GET",
            &path,
            &[("Accept", MANIFEST_ACCEPT.to_string())],
            Payload::None,
            scopes,
            true,
        )?;
        let st = resp.status().as_u16();
        if st == 404 {
            return Err(RegistryError::NotFound {
                what: what.to_string(),
                message: error_message(resp),
            }
            .into());
        }
        if !(200..300).contains(&st) {
            return Err(self.status_error(what, "GET", &path, resp));
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .filter(|s| !s.is_empty());
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(n) = content_length(&resp)
            && n > MAX_MANIFEST
        {
            return Err(too_large(what, n));
        }
        let mut data = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut data)
            .map_err(|e| RegistryError::Transport {
                method: "GET".into(),
                url: format!("{}{path}", self.endpoint.display()),
                message: format!("reading {what}: {e}"),
            })?;
        if data.len() as u64 > MAX_MANIFEST {
            return Err(too_large(what, data.len() as u64));
        }
        let digest = Digest::of(&data);
        if let Some(h) = header_digest
            && h.starts_with("sha256:")
            && h != digest.to_string()
        {
            return Err(Error::DigestMismatch {
                what: format!("{what} (the registry's Docker-Content-Digest)"),
                expected: h,
                actual: digest.to_string(),
            });
        }
        Ok((data, ct, digest))
    }

    /// The error for an unexpected status.
    pub fn status_error(
        &self,
        what: &str,
        method: &str,
        path: &str,
        resp: Response<ureq::Body>,
    ) -> Error {
        let status = resp.status().as_u16();
        let url = if path.contains("://") {
            path.to_string()
        } else {
            format!("{}{path}", self.endpoint.display())
        };
        let message = error_message(resp);
        if status == 404 {
            return RegistryError::NotFound {
                what: what.to_string(),
                message,
            }
            .into();
        }
        RegistryError::Status {
            what: what.to_string(),
            method: method.into(),
            url,
            status,
            message,
        }
        .into()
    }

    /// Reads a small blob (a config) whole and checks it against its descriptor.
    pub fn get_small_blob(
        &self,
        repo: &str,
        desc: &image::Desc,
        scopes: &[String],
        what: &str,
    ) -> Result<Vec<u8>> {
        let limit = crate::store::blobs::MAX_JSON_BLOB;
        if desc.size > limit {
            return Err(RegistryError::Protocol(format!(
                "{what}: {} is {} bytes, more than the {limit}-byte limit",
                desc.digest, desc.size
            ))
            .into());
        }
        let mut r = self.blob_reader(repo, &desc.digest, Some(desc.size), scopes)?;
        let mut data = Vec::new();
        r.read_to_end(&mut data)
            .map_err(|e| RegistryError::Transport {
                method: "GET".into(),
                url: format!(
                    "{}/v2/{repo}/blobs/{}",
                    self.endpoint.display(),
                    desc.digest
                ),
                message: e.to_string(),
            })?;
        let got = Digest::of(&data);
        if got != desc.digest {
            return Err(Error::DigestMismatch {
                what: format!("{what} {}", desc.digest),
                expected: desc.digest.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(data)
    }

    /// A reader of a blob that resumes after a dropped connection.
    pub fn blob_reader<'c>(
        &'c self,
        repo: &str,
        digest: &Digest,
        size: Option<u64>,
        scopes: &[String],
    ) -> Result<BlobReader<'c>> {
        let mut r = BlobReader {
            client: self,
            path: format!("/v2/{repo}/blobs/{digest}"),
            scopes: scopes.to_vec(),
            size,
            got: 0,
            inner: None,
            resumes: 0,
        };
        r.open()?;
        Ok(r)
    }

    /// Checks the credentials (`login`): probes the registry, then `GET /v2/` with them (a
    /// basic registry) or trades them for a token (a bearer one). A registry that needs no
    /// credentials accepts any.
    pub fn check_credentials(&self) -> Result<()> {
        let path = "/v2/";
        let resp = self.send("GET", path, &[], Payload::None, &[], true)?;
        if !(200..300).contains(&resp.status().as_u16()) {
            return Err(self.status_error("login", "GET", path, resp));
        }
        Ok(())
    }

    /// Whether the registry has a blob in `repo` (`HEAD`).
    pub fn has_blob(&self, repo: &str, digest: &Digest, scopes: &[String]) -> Result<bool> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send("HEAD", &path, &[], Payload::None, scopes, true)?;
        match resp.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(&format!("blob {digest}"), "HEAD", &path, resp)),
        }
    }
}

fn content_length(resp: &Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

fn too_large(what: &str, n: u64) -> Error {
    RegistryError::Protocol(format!(
        "{what}: the registry sent {n} bytes or more, over the {} MiB limit for manifests",
        MAX_MANIFEST >> 20
    ))
    .into()
}

/// A streamed blob download. When the connection drops (a read error, or the end before the
/// blob's size), it asks again from the byte it stopped at (`Range: bytes=N-`); a registry
/// that answers 200 instead of 206 is read from the start with the first N bytes skipped.
/// It never yields more than the blob's size.
pub struct BlobReader<'c> {
    client: &'c Client,
    path: String,
    scopes: Vec<String>,
    size: Option<u64>,
    got: u64,
    inner: Option<Box<dyn Read + Send + 'static>>,
    resumes: u32,
}

impl BlobReader<'_> {
    fn open(&mut self) -> Result<()> {
        let mut headers = Vec::new();
        if self.got > 0 {
            headers.push(("Range", format!("bytes={}-", self.got)));
        }
        let resp = self.client.send(
            "GET",
            &self.path,
            &headers,
            Payload::None,
            &self.scopes,
            true,
        )?;
        let st = resp.status().as_u16();
        let what = format!(
            "blob {}",
            self.path.rsplit('/').next().unwrap_or(&self.path)
        );
        match st {
            200 => {
                let mut r = resp.into_body().into_reader();
                if self.got > 0 {
                    // No range support: skip what was read already.
                    let skipped =
                        io::copy(&mut (&mut r).take(self.got), &mut io::sink()).map_err(|e| {
                            RegistryError::Transport {
                                method: "GET".into(),
                                url: self.path.clone(),
                                message: format!("resuming {what}: {e}"),
                            }
                        })?;
                    if skipped != self.got {
                        return Err(RegistryError::Protocol(format!(
                            "{what}: shorter on a second read ({skipped} bytes)"
                        ))
                        .into());
                    }
                }
                self.inner = Some(Box::new(r));
                Ok(())
            }
            206 if self.got > 0 => {
                let cr = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let want = format!("bytes {}-", self.got);
                if !cr.starts_with(&want) {
                    return Err(RegistryError::Protocol(format!(
                        "{what}: asked for {want}, got Content-Range {cr:?}"
                    ))
                    .into());
                }
                self.inner = Some(Box::new(resp.into_body().into_reader()));
                Ok(())
            }
            _ => Err(self.client.status_error(&what, "GET", &self.path, resp)),
        }
    }

    fn resume(&mut self, why: &io::Error) -> io::Result<()> {
        self.inner = None;
        if self.resumes >= MAX_RESUMES {
            return Err(io::Error::other(format!(
                "connection lost after {} bytes, {} times: {why}",
                self.got, self.resumes
            )));
        }
        self.resumes += 1;
        log::info!(
            "{}: connection lost after {} bytes ({why}); resuming (attempt {})",
            self.path,
            self.got,
            self.resumes
        );
        std::thread::sleep(Duration::from_millis(100 * u64::from(self.resumes)));
        self.open().map_err(io::Error::other)
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return Err(io::Error::other("blob reader failed earlier"));
            };
            let max = match self.size {
                Some(s) => {
                    let left = s.saturating_sub(self.got);
                    if left == 0 {
                        // The whole blob was read: anything more is a lie about its size.
                        let mut one = [0u8; 1];
                        return match inner.read(&mut one) {
                            Ok(0) | Err(_) => Ok(0),
                            Ok(_) => Err(io::Error::other(format!(
                                "the registry sent more than the {s} bytes of the blob"
                            ))),
                        };
                    }
                    buf.len().min(left.min(usize::MAX as u64) as usize)
                }
                None => buf.len(),
            };
            match inner.read(&mut buf[..max]) {
                Ok(0) if self.size.is_some_and(|s| self.got < s) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body ended at {} bytes", self.got),
                    );
                    self.resume(&e)?;
                }
                Ok(n) => {
                    self.got += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.resume(&e)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(url_host("http://127.0.0.1:5000/v2/x"), "127.0.0.1:5000");
        assert_eq!(url_host("https://h?x"), "h");
        assert_eq!(
            resolve_url(
                "http://h:1/v2/a/blobs/uploads/",
                "/v2/a/blobs/uploads/u?x=1"
            ),
            "http://h:1/v2/a/blobs/uploads/u?x=1"
        );
        assert_eq!(resolve_url("http://h/a/b?q", "c"), "http://h/a/c");
        assert_eq!(resolve_url("https://h/a", "//o/p"), "https://o/p");
        assert_eq!(resolve_url("http://h/a", "http://o/p"), "http://o/p");
        assert_eq!(
            add_query("http://h/t?service=s", "scope", "repository:a/b:pull,push"),
            "http://h/t?service=s&scope=repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
