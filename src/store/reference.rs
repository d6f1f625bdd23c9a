//! Image references as docker parses them: `busybox` is `docker.io/library/busybox:latest`,
//! `host:port/repo:tag`, `repo@sha256:…`. Names are validated here, once, so that nothing
//! malformed reaches the index.

use std::fmt;

use super::digest::Digest;

/// The registry of names without a domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The namespace of single-component names on the default registry.
pub const OFFICIAL_NAMESPACE: &str = "library";
/// The tag of references without one.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME: usize = 255;

/// A parsed, normalized reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry host (with port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub domain: String,
    /// The repository path in that registry, e.g. `library/busybox`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // a separator
        let start = i;
        if ch == b'.' {
            i += 1;
        } else if ch == b'_' {
            i += 1;
            if i < b.len() && b[i] == b'_' {
                i += 1;
            }
        } else if ch == b'-' {
            while i < b.len() && b[i] == b'-' {
                i += 1;
            }
        } else {
            return false;
        }
        if i == b.len() || !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) || i == start {
            return false;
        }
    }
    true
}

fn is_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) || p.len() > 5)
    {
        return false;
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() || c == b':');
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Whether `t` is a valid tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.' || *c == b'-')
}

impl Reference {
    /// Parses and normalizes a reference.
    pub fn parse(s: &str) -> Result<Reference, String> {
        let bad = |why: &str| Err(format!("invalid reference format {s:?}: {why}"));
        if s.is_empty() {
            return bad("empty");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => match d.parse::<Digest>() {
                Ok(d) => (r, Some(d)),
                Err(_) => {
                    return bad("the digest must be sha256: followed by 64 lowercase hex digits");
                }
            },
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !is_tag(t)
        {
            return bad(
                "a tag may contain only letters, digits, '_', '.' and '-' (at most 128, not starting with '.' or '-')",
            );
        }
        if name.is_empty() {
            return bad("no repository name");
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                if !is_domain(first) {
                    return bad("invalid registry host");
                }
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return bad("repository name must be lowercase");
        }
        if !path.split('/').all(is_path_component) {
            return bad(
                "a repository name is made of lowercase letters, digits and separators ('.', '_', '__', '-') between '/'",
            );
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path
        };
        if domain.len() + 1 + path.len() > MAX_NAME {
            return bad("repository name longer than 255 characters");
        }
        Ok(Reference {
            domain,
            path,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// Parses a reference and gives it the `latest` tag if it has neither tag nor digest.
    pub fn parse_tagged(s: &str) -> Result<Reference, String> {
        let mut r = Reference::parse(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        Ok(r)
    }

    /// The full repository name, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag, `latest` if none.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }
}

/// The short form docker shows for a full repository name: `docker.io/library/x` → `x`,
/// `docker.io/u/x` → `u/x`; other registries keep their host.
pub fn familiar(repository: &str) -> &str {
    if let Some(rest) = repository.strip_prefix("docker.io/") {
        rest.strip_prefix("library/")
            .filter(|r| !r.contains('/'))
            .unwrap_or(rest)
    } else {
        repository
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(familiar(&self.repository()))?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.repository(), "docker.io/library/busybox");
        assert_eq!(r.tag, None);
        let r = Reference::parse("127.0.0.1:5000/a/b:1.0").unwrap();
        assert_eq!(
            (r.domain.as_str(), r.path.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "a/b", Some("1.0"))
        );
        let r = Reference::parse("localhost/x").unwrap();
        assert_eq!(r.repository(), "localhost/x");
        let r = Reference::parse("user/repo:tag").unwrap();
        assert_eq!(r.repository(), "docker.io/user/repo");
        assert_eq!(r.to_string(), "user/repo:tag");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.digest.unwrap().to_string(), d);
        assert_eq!(familiar("docker.io/library/busybox"), "busybox");
        assert_eq!(familiar("quay.io/x/y"), "quay.io/x/y");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:tag with space",
            "busybox:-x",
            "busy box",
            "a//b",
            "a/../b",
            "../etc",
            "x@sha256:abc",
            "x:$(reboot)",
            "-x",
            "x-",
            "x/-y",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
