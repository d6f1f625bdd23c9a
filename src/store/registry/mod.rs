//! The registry client: pull and push images over the OCI distribution API (Docker Registry
//! HTTP API v2), with mirrors, insecure registries and logins.
//!
//! - [`config`]: the registries file (`registry-mirrors`, per-registry `mirrors`,
//!   `insecure-registries`) and which endpoints a pull tries, in order;
//! - [`auth`]: credentials in docker's `config.json` format, and the `WWW-Authenticate`
//!   challenges (basic, bearer token);
//! - [`client`]: one registry endpoint over HTTP(S) (`ureq`): the scheme probe, authentication,
//!   redirects with a limit, size limits, and blob reads that resume with `Range`;
//! - [`pull`] and [`push`]: the two operations, on top of the store's ingest (blobs verified by
//!   digest before they count, leases against prune) and its `add_image`.
//!
//! Like the rest of the store, nothing here mounts anything or prints anything: progress goes
//! to [`crate::progress::Progress`] bars and docker-like status lines to a callback.

pub mod auth;
pub mod client;
pub mod config;
pub mod pull;
pub mod push;

pub use auth::{AuthFile, Credentials};
pub use client::Client;
pub use config::RegistriesConfig;
pub use pull::{Platform, PullOptions, Pulled};
pub use push::{PushOptions, Pushed};

/// What went wrong talking to a registry. Every variant names the registry or the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Nothing answered, or the connection failed before a response.
    #[error("{registry}: cannot reach the registry: {message}")]
    Unreachable { registry: String, message: String },
    /// A request failed midway (connection dropped, timeout, malformed HTTP).
    #[error("{method} {url}: {message}")]
    Transport {
        method: String,
        url: String,
        message: String,
    },
    /// The registry wants credentials, or refused the ones given.
    #[error("{registry}: unauthorized: {message}")]
    Unauthorized { registry: String, message: String },
    /// The registry does not have what was asked for.
    #[error("{what}: not found: {message}")]
    NotFound { what: String, message: String },
    /// Any other unexpected HTTP status.
    #[error("{what}: {method} {url}: HTTP {status}: {message}")]
    Status {
        what: String,
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    /// The registry answered something strata refuses (a redirect loop, a manifest over the
    /// size limit, an unknown media type, a platform missing from an index...).
    #[error("{0}")]
    Protocol(String),
}

use std::path::Path;

use crate::store::error::Result;
use client::Transport;
use config::Endpoint;

/// What a command needs to reach registries: the registries file, the credentials file and
/// the HTTP agents.
#[derive(Clone)]
pub struct Registries {
    transport: Transport,
    auth: AuthFile,
}

impl Registries {
    /// The registries file of the store at `root`, the default credentials file and
    /// `--tls-verify` (`None`: as configured).
    pub fn new(root: &Path, tls_verify: Option<bool>) -> Result<Registries> {
        let config = RegistriesConfig::load(root)?;
        let auth = AuthFile::load(&AuthFile::default_path())?;
        Ok(Registries::with(config, auth, tls_verify))
    }

    /// From parts.
    pub fn with(config: RegistriesConfig, auth: AuthFile, tls_verify: Option<bool>) -> Registries {
        Registries {
            transport: Transport::new(config, tls_verify),
            auth,
        }
    }

    /// The registries configuration.
    pub fn config(&self) -> &RegistriesConfig {
        self.transport.config()
    }

    /// The credentials file.
    pub fn auth(&self) -> &AuthFile {
        &self.auth
    }

    /// A client of `endpoint` of the registry `domain`, with the stored credentials of the
    /// endpoint's host (or, for the registry itself, of `domain`).
    pub fn client(&self, endpoint: Endpoint, domain: &str) -> Client {
        let creds = self.auth.get(&endpoint.host).or_else(|| {
            if endpoint.mirror {
                None
            } else {
                self.auth.get(domain)
            }
        });
        Client::new(&self.transport, endpoint, creds)
    }

    /// A client of the registry `domain` itself with explicit credentials (for `login`).
    pub fn client_with(&self, domain: &str, creds: Option<Credentials>) -> Client {
        Client::new(&self.transport, config::source_endpoint(domain), creds)
    }
}
