//! Pure: what a container runs, decided from the image config and the `run` flags (docker's
//! rules for Entrypoint/Cmd, Env, WorkingDir, User), plus the names and ids of containers. No
//! system calls here beyond reading an `--env-file` and checking `-v` sources.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Error;

/// The `run` flags, as the command line gives them.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub name: Option<String>,
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub volumes: Vec<String>,
    pub hostname: Option<String>,
    /// `host` or `none`.
    pub network: Option<String>,
    pub entrypoint: Option<String>,
    pub read_only: bool,
    pub tty: bool,
    pub interactive: bool,
    pub auto_remove: bool,
    pub detach: bool,
    pub cmd: Vec<String>,
}

/// A bind mount of a host path into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The host path (absolute, resolved).
    pub source: PathBuf,
    /// The path inside the container (absolute).
    pub target: String,
    pub read_only: bool,
}

/// Everything a container runs with: kept as JSON in the index (`containers.config`), so that
/// `start` runs it again the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The entrypoint and command as decided at creation (kept apart for `commit`).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    /// `USER[:GROUP]` (names or numbers); empty for root.
    pub user: String,
    pub hostname: String,
    /// No network namespace (`host`) or an empty one (`none`).
    pub network_none: bool,
    pub volumes: Vec<Volume>,
    pub read_only: bool,
    pub tty: bool,
    pub interactive: bool,
    pub auto_remove: bool,
    /// The image's StopSignal, if any (`stop` sends it, else SIGTERM).
    pub stop_signal: Option<String>,
    /// The rest of the image config (ExposedPorts, Labels, Volumes, …), kept for `commit`.
    #[serde(default)]
    pub image_config: Value,
}

impl ContainerConfig {
    /// The argv the container runs: entrypoint, then command.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// The default `PATH` of a container whose image sets none (as docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `KEY=VALUE` in an environment list, replacing an earlier value of KEY.
pub fn set_env(env: &mut Vec<String>, entry: String) {
    let key = entry.split('=').next().unwrap_or("").to_string();
    env.retain(|e| e.split('=').next() != Some(key.as_str()));
    env.push(entry);
}

/// The value of `key` in an environment list.
pub fn get_env<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|e| {
        let (k, v) = e.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// One `-e` or `--env-file` line: `K=V`, or `K` alone (the host's value, or nothing).
fn env_entry(raw: &str) -> Result<Option<String>, Error> {
    if raw.is_empty() || raw.starts_with('=') {
        return Err(Error::Invalid(format!(
            "invalid environment variable: {raw}"
        )));
    }
    if raw.contains('=') {
        return Ok(Some(raw.to_string()));
    }
    Ok(std::env::var(raw).ok().map(|v| format!("{raw}={v}")))
}

/// Parses `-v SRC:DST[:ro|rw]`.
pub fn parse_volume(spec: &str) -> Result<Volume, Error> {
    let bad = |why: &str| Error::Invalid(format!("invalid volume specification {spec:?}: {why}"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, m] => (*s, *d, *m),
        _ => return Err(bad("expected SRC:DST[:ro]")),
    };
    let read_only = match mode {
        "" | "rw" => false,
        "ro" => true,
        m => return Err(bad(&format!("unknown mode {m:?} (ro or rw)"))),
    };
    if !src.starts_with('/') {
        return Err(bad(
            "the source must be an absolute host path (named volumes are not supported)",
        ));
    }
    if !dst.starts_with('/') {
        return Err(bad("the destination must be an absolute path"));
    }
    if dst.split('/').any(|c| c == "..") {
        return Err(bad("the destination must not contain '..'"));
    }
    let source = std::fs::canonicalize(src).map_err(|e| {
        Error::Invalid(format!("invalid mount config: bind source path {src}: {e}"))
    })?;
    Ok(Volume {
        source,
        target: dst.to_string(),
        read_only,
    })
}

/// Decides what a container runs from the image config (the `config` object of the image's
/// config blob) and the flags, as `docker run` does.
pub fn build(image_config: &Value, o: &RunOptions, id: &str) -> Result<ContainerConfig, Error> {
    let ic = image_config;
    let (entrypoint, cmd) = match &o.entrypoint {
        // --entrypoint resets the image's Cmd too; an empty one clears the entrypoint.
        Some(e) if e.is_empty() => (Vec::new(), o.cmd.clone()),
        Some(e) => (vec![e.clone()], o.cmd.clone()),
        None => (
            strings(ic.get("Entrypoint")),
            if o.cmd.is_empty() {
                strings(ic.get("Cmd"))
            } else {
                o.cmd.clone()
            },
        ),
    };
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(Error::Invalid("no command specified".into()));
    }
    let hostname = o.hostname.clone().unwrap_or_else(|| id[..12].to_string());
    let mut env = strings(ic.get("Env"));
    if get_env(&env, "PATH").is_none() {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    set_env(&mut env, format!("HOSTNAME={hostname}"));
    for f in &o.env_files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Error::Invalid(format!("open {}: {e}", f.display())))?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(e) = env_entry(line)? {
                set_env(&mut env, e);
            }
        }
    }
    for e in &o.env {
        if let Some(e) = env_entry(e)? {
            set_env(&mut env, e);
        }
    }
    if o.tty && get_env(&env, "TERM").is_none() {
        env.push("TERM=xterm".into());
    }
    let workdir = match &o.workdir {
        Some(w) if !w.starts_with('/') => {
            return Err(Error::Invalid(format!(
                "the working directory '{w}' is invalid, it needs to be an absolute path"
            )));
        }
        Some(w) => w.clone(),
        None => ic
            .get("WorkingDir")
            .and_then(Value::as_str)
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string(),
    };
    let user = o.user.clone().unwrap_or_else(|| {
        ic.get("User")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    });
    let network_none = match o.network.as_deref() {
        None | Some("host") | Some("default") | Some("bridge") => false,
        Some("none") => true,
        Some(n) => {
            return Err(Error::Invalid(format!(
                "network {n} not found (strata knows host and none)"
            )));
        }
    };
    let volumes = o
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ContainerConfig {
        entrypoint,
        cmd,
        env,
        workdir,
        user,
        hostname,
        network_none,
        volumes,
        read_only: o.read_only,
        tty: o.tty,
        interactive: o.interactive,
        auto_remove: o.auto_remove,
        stop_signal: ic
            .get("StopSignal")
            .and_then(Value::as_str)
            .map(str::to_string),
        image_config: ic.clone(),
    })
}

/// A new container id: 64 random hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    hex::encode(b)
}

const ADJECTIVES: &[&str] = &[
    "admiring", "bold", "brave", "clever", "dazzling", "eager", "elegant", "festive", "gallant",
    "happy", "jolly", "keen", "lucid", "modest", "nifty", "quirky", "serene", "tender", "upbeat",
    "vibrant", "wizardly", "zealous",
];
const NAMES: &[&str] = &[
    "babbage", "curie", "darwin", "euler", "faraday", "gauss", "hopper", "kepler", "lovelace",
    "maxwell", "noether", "pascal", "ritchie", "shannon", "thompson", "turing", "wozniak",
];

/// A docker-like random name (`adjective_scientist`), from the id's bytes.
pub fn random_name(id: &str) -> String {
    let b = hex::decode(&id[..8]).unwrap_or_else(|_| vec![0; 4]);
    let a = ADJECTIVES[(b[0] as usize) % ADJECTIVES.len()];
    let n = NAMES[(b[1] as usize) % NAMES.len()];
    format!("{a}_{n}_{}", &id[..4])
}

/// Whether a user-given container name is valid (docker: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`).
pub fn valid_name(n: &str) -> bool {
    let n = n.strip_prefix('/').unwrap_or(n);
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric())
        && n.len() >= 2
        && c.all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
}

/// A path inside the container, split into its components (no `.`/`..`/empty ones: `..` at
/// the root stays at the root, as the kernel resolves it).
pub fn components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(cmd: &[&str]) -> RunOptions {
        RunOptions {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..RunOptions::default()
        }
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let ic = json!({"Entrypoint": ["/bin/echo"], "Cmd": ["hello"]});
        assert_eq!(
            build(&ic, &opts(&[]), ID).unwrap().argv(),
            ["/bin/echo", "hello"]
        );
        assert_eq!(
            build(&ic, &opts(&["bye"]), ID).unwrap().argv(),
            ["/bin/echo", "bye"]
        );
        let mut o = opts(&[]);
        o.entrypoint = Some("/bin/true".into());
        assert_eq!(build(&ic, &o, ID).unwrap().argv(), ["/bin/true"]);
        o.entrypoint = Some(String::new());
        o.cmd = vec!["ls".into()];
        assert_eq!(build(&ic, &o, ID).unwrap().argv(), ["ls"]);
        assert!(build(&json!({}), &opts(&[]), ID).is_err());
    }

    #[test]
    fn env_workdir_user_hostname() {
        let ic =
            json!({"Cmd": ["sh"], "Env": ["A=1", "B=2"], "WorkingDir": "/srv", "User": "nobody"});
        let mut o = opts(&[]);
        o.env = vec!["B=3".into(), "C=4".into()];
        let c = build(&ic, &o, ID).unwrap();
        assert_eq!(get_env(&c.env, "A"), Some("1"));
        assert_eq!(get_env(&c.env, "B"), Some("3"));
        assert_eq!(get_env(&c.env, "C"), Some("4"));
        assert_eq!(get_env(&c.env, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(get_env(&c.env, "HOSTNAME"), Some("0123456789ab"));
        assert_eq!((c.workdir.as_str(), c.user.as_str()), ("/srv", "nobody"));
        o.workdir = Some("/tmp".into());
        o.user = Some("0:0".into());
        let c = build(&ic, &o, ID).unwrap();
        assert_eq!((c.workdir.as_str(), c.user.as_str()), ("/tmp", "0:0"));
        o.workdir = Some("rel".into());
        assert!(build(&ic, &o, ID).is_err());
    }

    #[test]
    fn volumes_are_checked() {
        assert!(parse_volume("rel:/x").is_err());
        assert!(parse_volume("/tmp:rel").is_err());
        assert!(parse_volume("/tmp:/x/../y").is_err());
        assert!(parse_volume("/tmp:/x:zz").is_err());
        let v = parse_volume("/tmp:/data:ro").unwrap();
        assert!(v.read_only);
        assert_eq!(v.target, "/data");
    }

    #[test]
    fn names_and_components() {
        assert!(valid_name("web-1"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert_eq!(components("/a/./b/../../../c"), ["c"]);
        assert!(random_name(ID).len() > 5);
    }
}
