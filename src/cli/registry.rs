//! `pull`, `push`, `login` and `logout`: the command bodies, printing what docker prints.
//! The work is in [`crate::store::registry`].

use std::io::{BufRead, IsTerminal, Read, Write};

use clap::Args;

use super::{Failure, fail, open_store};
use crate::progress::Progress;
use crate::store::reference::{DEFAULT_DOMAIN, Reference};
use crate::store::registry::auth::{AuthFile, Credentials};
use crate::store::registry::client::url_host;
use crate::store::registry::push::DEFAULT_CHUNK;
use crate::store::registry::{Platform, PullOptions, PushOptions, Registries};

/// `--tls-verify[=BOOL]`, as podman and skopeo spell it.
#[derive(Args, Debug, Clone)]
pub struct TlsArgs {
    /// Require HTTPS and verify certificates (=false: skip verification, allow plain HTTP)
    /// [default: as the registries file says; 127.0.0.0/8 is insecure]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub tls_verify: Option<bool>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Suppress verbose output: print only the image reference
    #[arg(short, long)]
    pub quiet: bool,
    /// Pick this platform (os/arch[/variant]) from a multi-platform image
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Extract the layers during the pull, as docker does (by default they are stored as
    /// blobs and extracted on first use: mount, create, run)
    #[arg(long)]
    pub extract: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// NAME[:TAG|@DIGEST]
    pub name: String,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Suppress verbose output: print only the pushed reference
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The image to push (a name, or an id with DEST)
    pub image: String,
    /// Where to push it (REGISTRY/REPOSITORY[:TAG]) [default: IMAGE]
    pub dest: Option<String>,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Username
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (visible to other users of this machine: prefer --password-stdin)
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Take the password from standard input
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The registry (host[:port]) [default: docker.io]
    pub server: Option<String>,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry (host[:port]) [default: docker.io]
    pub server: Option<String>,
}

/// A registry named on the command line, as `host[:port]` (scheme and path dropped).
fn server_name(s: Option<&str>) -> String {
    match s {
        None => DEFAULT_DOMAIN.to_string(),
        Some(s) => {
            let h = url_host(s);
            match h {
                "index.docker.io" | "registry-1.docker.io" => DEFAULT_DOMAIN.to_string(),
                h => h.to_string(),
            }
        }
    }
}

/// Prints a status line above the progress bars (or nothing with `-q`).
fn reporter(progress: &Progress, quiet: bool) -> impl Fn(&str) + Sync + '_ {
    move |line: &str| {
        if !quiet {
            progress.println(line);
        }
    }
}

pub fn pull(cli: &super::Cli, a: &PullArgs) -> Result<(), Failure> {
    let s = open_store(cli)?;
    let platform = match &a.platform {
        Some(p) => Some(p.parse::<Platform>().map_err(fail)?),
        None => None,
    };
    let given =
        Reference::parse(a.name.strip_prefix("docker://").unwrap_or(&a.name)).map_err(fail)?;
    let regs = Registries::new(s.root(), a.tls.tls_verify)?;
    let progress = Progress::new(a.quiet);
    if !a.quiet && given.tag.is_none() && given.digest.is_none() {
        println!("Using default tag: latest");
    }
    let opts = PullOptions {
        platform,
        extract: a.extract,
        ..PullOptions::default()
    };
    let p = s.pull(
        &a.name,
        &opts,
        &regs,
        &progress,
        &reporter(&progress, a.quiet),
    )?;
    let full = match (&p.reference.digest, &p.reference.tag) {
        (Some(d), _) => format!("{}@{d}", p.reference.repository()),
        (None, t) => format!(
            "{}:{}",
            p.reference.repository(),
            t.as_deref().unwrap_or("latest")
        ),
    };
    if !a.quiet {
        println!("Digest: {}", p.digest);
        if p.updated {
            println!("Status: Downloaded newer image for {}", p.reference);
        } else {
            println!("Status: Image is up to date for {}", p.reference);
        }
    }
    println!("{full}");
    Ok(())
}

pub fn push(cli: &super::Cli, a: &PushArgs) -> Result<(), Failure> {
    let s = open_store(cli)?;
    let regs = Registries::new(s.root(), a.tls.tls_verify)?;
    let progress = Progress::new(a.quiet);
    let chunk_size = match std::env::var("STRATA_PUSH_CHUNK_SIZE") {
        Ok(v) => v.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            fail(format!(
                "STRATA_PUSH_CHUNK_SIZE={v:?}: not a positive number of bytes"
            ))
        })?,
        Err(_) => DEFAULT_CHUNK,
    };
    let opts = PushOptions {
        chunk_size,
        ..PushOptions::default()
    };
    let p = s.push(
        &a.image,
        a.dest.as_deref(),
        &opts,
        &regs,
        &progress,
        &reporter(&progress, a.quiet),
    )?;
    if a.quiet {
        println!(
            "{}:{}",
            p.reference.repository(),
            p.reference.tag_or_latest()
        );
    }
    Ok(())
}

/// Reads a line from the terminal, without echo when `secret`.
fn prompt(label: &str, secret: bool) -> Result<String, Failure> {
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    let stdin = std::io::stdin();
    let saved = if secret {
        match nix::sys::termios::tcgetattr(&stdin) {
            Ok(t) => {
                let mut quiet = t.clone();
                quiet
                    .local_flags
                    .remove(nix::sys::termios::LocalFlags::ECHO);
                let _ = nix::sys::termios::tcsetattr(
                    &stdin,
                    nix::sys::termios::SetArg::TCSANOW,
                    &quiet,
                );
                Some(t)
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let mut line = String::new();
    let res = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &t);
        eprintln!();
    }
    res.map_err(|e| fail(format!("reading {}: {e}", label.trim_end_matches(": "))))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn login(cli: &super::Cli, a: &LoginArgs) -> Result<(), Failure> {
    let server = server_name(a.server.as_deref());
    let tty = std::io::stdin().is_terminal();
    let username = match &a.username {
        Some(u) => u.clone(),
        None if tty && !a.password_stdin => prompt("Username: ", false)?,
        None => {
            return Err(fail(
                "Cannot perform an interactive login from a non TTY device (use -u USER --password-stdin)",
            ));
        }
    };
    let password = if let Some(p) = &a.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p.clone()
    } else if a.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .read_to_string(&mut p)
            .map_err(|e| fail(format!("reading the password from standard input: {e}")))?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if tty {
        prompt("Password: ", true)?
    } else {
        return Err(fail(
            "Cannot perform an interactive login from a non TTY device (use --password-stdin)",
        ));
    };
    if username.is_empty() || password.is_empty() {
        return Err(fail("Error: Username and password are required"));
    }
    let creds = Credentials { username, password };
    let root = cli.root.clone().unwrap_or_else(crate::store::default_root);
    let config = crate::store::registry::RegistriesConfig::load(&root)?;
    let mut file = AuthFile::load(&AuthFile::default_path())?;
    let regs = Registries::with(config, file.clone(), a.tls.tls_verify);
    regs.client_with(&server, Some(creds.clone()))
        .check_credentials()?;
    file.set(&server, &creds);
    file.save()?;
    eprintln!(
        "WARNING! Your password will be stored unencrypted in {}.",
        file.path().display()
    );
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(a: &LogoutArgs) -> Result<(), Failure> {
    let server = server_name(a.server.as_deref());
    let mut file = AuthFile::load(&AuthFile::default_path())?;
    if file.remove(&server) {
        file.save()?;
        println!("Removing login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(())
}
