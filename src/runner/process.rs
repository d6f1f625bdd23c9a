//! The last steps before the container's command runs, inside its root (after the pivot, or
//! after `exec` joined the namespaces): the user and groups from the container's own
//! `/etc/passwd` and `/etc/group`, docker's default capabilities, `no_new_privs`, the working
//! directory, the `PATH` search, and `execve`. A failure says which exit status it means:
//! 127 for a command that is not found, 126 for one that cannot be executed, 125 otherwise.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

use super::spec::{ContainerConfig, get_env, set_env};

/// Why the command did not start, with docker's exit status for it.
#[derive(Debug, Clone)]
pub struct StartError {
    pub code: i32,
    pub message: String,
}

impl StartError {
    fn strata(message: impl Into<String>) -> StartError {
        StartError {
            code: 125,
            message: message.into(),
        }
    }
}

/// Docker's default capabilities (bit numbers of linux/capability.h).
pub const DEFAULT_CAPS: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    // Not MKNOD, which docker grants: docker's device cgroup decides which devices may be
    // opened, and strata sets none up, so a device node made in a container could reach the
    // host's disks.
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// The default capabilities as a bit mask.
pub fn default_cap_mask() -> u64 {
    DEFAULT_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c))
}

/// A user resolved from the container's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `USER[:GROUP]` (names or numbers) against the passwd and group files' contents,
/// as docker does: a numeric user need not exist; a name must.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<User, String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let users: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let groups: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let entry = match u.parse::<u32>() {
        Ok(n) => users.iter().find(|f| f[2].parse() == Ok(n)),
        Err(_) => users.iter().find(|f| f[0] == u),
    };
    let (uid, mut gid, home, name) = match (u.parse::<u32>(), entry) {
        (_, Some(f)) => (
            f[2].parse()
                .map_err(|_| format!("bad uid in /etc/passwd for {u}"))?,
            f[3].parse().unwrap_or(0),
            f[5].to_string(),
            Some(f[0]),
        ),
        (Ok(n), None) => (n, 0, "/".to_string(), None),
        (Err(_), None) => {
            return Err(format!(
                "unable to find user {u}: no matching entries in passwd file"
            ));
        }
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    let mut supp = vec![gid];
    if let (Some(name), None) = (name, g) {
        for f in &groups {
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(n) = f[2].parse::<u32>()
                && !supp.contains(&n)
            {
                supp.push(n);
            }
        }
    }
    Ok(User {
        uid,
        gid,
        groups: supp,
        home,
    })
}

/// Finds `cmd` in `PATH` (a name with a `/` is taken as it is).
fn find_command(cmd: &str, path: &str) -> Result<String, StartError> {
    if cmd.contains('/') {
        return Ok(cmd.to_string());
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = format!("{dir}/{cmd}");
        if let Ok(m) = std::fs::metadata(&p)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(p);
        }
    }
    Err(StartError {
        code: 127,
        message: format!("exec: \"{cmd}\": executable file not found in $PATH"),
    })
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, StartError> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| StartError::strata(format!("{s:?} contains a NUL byte")))
        })
        .collect()
}

/// Becomes the container's user with docker's capabilities, enters the working directory and
/// executes the command. Returns only on failure.
pub fn exec(cfg: &ContainerConfig, argv: &[String], env_extra: &[String]) -> StartError {
    match try_exec(cfg, argv, env_extra) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_exec(
    cfg: &ContainerConfig,
    argv: &[String],
    env_extra: &[String],
) -> Result<std::convert::Infallible, StartError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let user = resolve_user(&cfg.user, &passwd, &group).map_err(StartError::strata)?;
    let mut env = cfg.env.clone();
    for e in env_extra {
        set_env(&mut env, e.clone());
    }
    if get_env(&env, "HOME").is_none() {
        env.push(format!(
            "HOME={}",
            if user.home.is_empty() {
                "/"
            } else {
                &user.home
            }
        ));
    }
    // The working directory is made if missing (as docker), before the user changes.
    if let Err(e) = std::fs::create_dir_all(&cfg.workdir) {
        return Err(StartError::strata(format!("mkdir {}: {e}", cfg.workdir)));
    }
    crate::sys::drop_bounding_capabilities(default_cap_mask())
        .map_err(|e| StartError::strata(format!("drop capabilities: {e}")))?;
    let gids: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&gids).map_err(|e| StartError::strata(format!("setgroups: {e}")))?;
    nix::unistd::setgid(Gid::from_raw(user.gid))
        .map_err(|e| StartError::strata(format!("setgid {}: {e}", user.gid)))?;
    nix::unistd::setuid(Uid::from_raw(user.uid))
        .map_err(|e| StartError::strata(format!("setuid {}: {e}", user.uid)))?;
    // A change of user clears the parent-death signal: the process must still die with
    // strata's monitor.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if user.uid == 0 {
        crate::sys::set_capabilities(default_cap_mask())
            .map_err(|e| StartError::strata(format!("capset: {e}")))?;
    }
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| StartError::strata(format!("no_new_privs: {e}")))?;
    nix::unistd::chdir(cfg.workdir.as_str()).map_err(|e| {
        StartError::strata(format!(
            "chdir to cwd (\"{}\") set in config: {e}",
            cfg.workdir
        ))
    })?;
    let Some(cmd) = argv.first() else {
        return Err(StartError::strata("no command specified"));
    };
    let path = get_env(&env, "PATH").unwrap_or(super::spec::DEFAULT_PATH);
    let prog = find_command(cmd, path)?;
    let c_prog = cstrings(std::slice::from_ref(&prog))?.remove(0);
    let c_argv = cstrings(argv)?;
    let c_env = cstrings(&env)?;
    crate::sys::cloexec_from(3);
    let e = match nix::unistd::execve(&c_prog, &c_argv, &c_env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(match e {
        Errno::ENOENT => StartError {
            code: 127,
            message: format!("exec: \"{prog}\": stat {prog}: no such file or directory"),
        },
        Errno::EACCES | Errno::EISDIR | Errno::ENOEXEC | Errno::EPERM | Errno::ETXTBSY => {
            StartError {
                code: 126,
                message: format!("exec: \"{prog}\": permission denied ({e})"),
            }
        }
        e => StartError::strata(format!("exec {prog}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nalice:x:1000:\nwheel:x:10:alice\n";

    #[test]
    fn users_resolve_as_docker() {
        let r = resolve_user("", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let n = resolve_user("nobody", PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid), (65534, 65534));
        let a = resolve_user("alice", PASSWD, GROUP).unwrap();
        assert_eq!(a.groups, vec![1000, 10]);
        let x = resolve_user("4242:nogroup", PASSWD, GROUP).unwrap();
        assert_eq!((x.uid, x.gid, x.home.as_str()), (4242, 65534, "/"));
        assert!(resolve_user("mallory", PASSWD, GROUP).is_err());
        assert!(resolve_user("0:nosuch", PASSWD, GROUP).is_err());
    }
}
