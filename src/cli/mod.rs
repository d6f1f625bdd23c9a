//! The `strata` command line: clap definitions and the rendering of each command's result the
//! way docker (or podman, where docker has no such command) prints it. No store logic lives
//! here; every command is a call into the library.

pub mod containers;
pub mod format;
pub mod mount;
pub mod registry;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::progress::Progress;
use crate::store::archive::SaveFormat;
use crate::store::import::ImportOptions;
use crate::store::reference::{Reference, familiar};
use crate::store::{self, Digest, Error, Store, image};
use format::{Row, ago, ellipsis, go_time, human_size, print_rows};

/// strata: a userspace union filesystem and container image store.
#[derive(Parser, Debug)]
#[command(name = "strata", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The store directory [default: /var/lib/strata as root, $XDG_DATA_HOME/strata otherwise]
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace)
    #[arg(
        long,
        global = true,
        env = "STRATA_LOG",
        default_value = "warn",
        value_name = "LEVEL"
    )]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Import the contents of a rootfs tarball (plain, gzip or zstd) to create an image
    Import(ImportArgs),
    /// Load images from a docker-archive, an OCI archive or an OCI layout directory
    Load(LoadArgs),
    /// Save images to a docker-archive, an OCI archive or an OCI layout directory
    Save(SaveArgs),
    /// List images
    Images(ImagesArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag { source: String, target: String },
    /// Remove one or more images
    Rmi {
        /// Remove the image even if it has several tags or is used by a container
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Display detailed information on images
    Inspect {
        /// Format the output using a Go-like template
        #[arg(short, long)]
        format: Option<String>,
        /// Only "image" objects exist so far
        #[arg(long = "type", default_value = "image")]
        kind: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show the history of an image
    History(HistoryArgs),
    /// Show the strata version information
    Version {
        #[arg(short, long)]
        format: Option<String>,
    },
    /// Display store-wide information
    Info {
        #[arg(short, long)]
        format: Option<String>,
    },
    /// Manage the store
    #[command(subcommand)]
    System(SystemCommand),
    /// Check the store: re-hash every blob, compare every layer with its index
    Fsck,
    /// Mount lower directories and an upper directory as one union (as mount -t overlay)
    Overlay(mount::OverlayArgs),
    /// Mount an image read-only and print the mount point; with no argument, list strata mounts
    Mount {
        /// An image
        target: Option<String>,
        /// Where to mount it [default: ROOT/mounts/<image id>]
        dir: Option<PathBuf>,
    },
    /// Unmount strata mounts (by mount point or image)
    #[command(alias = "unmount")]
    Umount {
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Download an image from a registry
    Pull(registry::PullArgs),
    /// Upload an image to a registry
    Push(registry::PushArgs),
    /// Log in to a registry
    Login(registry::LoginArgs),
    /// Log out from a registry
    Logout(registry::LogoutArgs),
    /// Create and run a new container from an image
    Run(containers::RunArgs),
    /// Create a new container
    Create(containers::RunArgs),
    /// List containers
    Ps(containers::PsArgs),
    /// Start one or more stopped containers
    Start {
        /// Attach STDOUT/STDERR and forward signals
        #[arg(short, long)]
        attach: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop one or more running containers
    Stop {
        /// Seconds to wait before killing the container
        #[arg(short = 't', long = "time", alias = "timeout", default_value = "10")]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart one or more containers
    Restart {
        /// Seconds to wait before killing the container
        #[arg(short = 't', long = "time", alias = "timeout", default_value = "10")]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Kill one or more running containers
    Kill {
        /// Signal to send to the container
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove one or more containers
    Rm {
        /// Force the removal of a running container (uses SIGKILL)
        #[arg(short, long)]
        force: bool,
        /// Remove anonymous volumes associated with the container (there are none)
        #[arg(short, long)]
        volumes: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Fetch the logs of a container
    Logs {
        /// Follow log output
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Execute a command in a running container
    Exec(containers::ExecArgs),
    /// Block until one or more containers stop, then print their exit codes
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Create a new image from a container's changes
    Commit {
        /// Commit message
        #[arg(short, long)]
        message: Option<String>,
        /// Author
        #[arg(short, long)]
        author: Option<String>,
        container: String,
        /// REPOSITORY[:TAG]
        name: Option<String>,
    },
    /// Inspect changes to files or directories on a container's filesystem
    Diff { container: String },
    /// Export a container's filesystem as a tar archive
    Export {
        /// Write to a file, instead of STDOUT
        #[arg(short, long)]
        output: Option<PathBuf>,
        container: String,
    },
    /// Copy files/folders between a container and the local filesystem
    Cp { src: String, dest: String },
    /// (internal) The background monitor of a detached container
    #[command(hide = true)]
    ContainerMonitor {
        #[arg(long)]
        notify_fd: Option<i32>,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Show disk usage
    Df {
        #[arg(short, long)]
        verbose: bool,
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove unused data (dangling images, and what killed processes left behind)
    Prune {
        /// Remove all images not used by a container, not only dangling ones
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
    },
    /// Display store-wide information (as `strata info`)
    Info {
        #[arg(short, long)]
        format: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL)
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,
    /// Set a commit message for the imported image
    #[arg(short, long)]
    pub message: Option<String>,
    /// A tarball, or - for standard input
    pub file: String,
    /// REPOSITORY[:TAG]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from a tar archive or an OCI layout directory instead of standard input
    #[arg(short, long, value_name = "FILE|DIR")]
    pub input: Option<PathBuf>,
    /// Suppress the progress output
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Write to a file (or a directory for oci-dir) instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// docker-archive, oci-archive or oci-dir
    #[arg(long, default_value = "docker-archive")]
    pub format: String,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// Show all images (there are no intermediate images; kept for docker compatibility)
    #[arg(short, long)]
    pub all: bool,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Show digests
    #[arg(long)]
    pub digests: bool,
    /// Format output: a Go-like template, 'table TEMPLATE', or 'json'
    #[arg(long)]
    pub format: Option<String>,
    /// REPOSITORY[:TAG]
    pub filter: Option<String>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Print sizes and dates in human readable format
    #[arg(short = 'H', long, default_value = "true", action = clap::ArgAction::Set)]
    pub human: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Only show image IDs
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long)]
    pub format: Option<String>,
    pub image: String,
}

/// What went wrong, with the exit status to leave with.
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

impl From<format::TemplateError> for Failure {
    fn from(e: format::TemplateError) -> Failure {
        Failure {
            message: e.to_string(),
            code: 1,
        }
    }
}

pub(crate) fn fail(msg: impl Into<String>) -> Failure {
    Failure {
        message: msg.into(),
        code: 1,
    }
}

fn open_store(cli: &Cli) -> Result<Store, Failure> {
    let root = cli.root.clone().unwrap_or_else(store::default_root);
    Ok(Store::open(&root)?)
}

fn short_id(d: &Digest, no_trunc: bool) -> String {
    if no_trunc {
        d.to_string()
    } else {
        d.short().to_string()
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Version { format } => return version(format.as_deref()),
        Command::Overlay(a) => return mount::overlay(a),
        Command::Mount { target, dir } => {
            return mount::mount(&open_store(&cli)?, target.as_deref(), dir.as_deref());
        }
        Command::Umount { targets } => {
            let store = open_store(&cli).ok();
            return mount::umount(store.as_ref(), targets);
        }
        Command::Pull(a) => return registry::pull(&cli, a),
        Command::Push(a) => return registry::push(&cli, a),
        Command::Login(a) => return registry::login(&cli, a),
        Command::Logout(a) => return registry::logout(a),
        Command::Run(a) => {
            let s = open_store(&cli).map_err(|f| Failure { code: 125, ..f })?;
            return containers::run(&s, a);
        }
        Command::Create(a) => {
            let s = open_store(&cli).map_err(|f| Failure { code: 125, ..f })?;
            return containers::create(&s, a);
        }
        Command::Ps(a) => return containers::ps(&open_store(&cli)?, a),
        Command::Start {
            attach,
            containers: c,
        } => {
            return containers::start(&open_store(&cli)?, *attach, c);
        }
        Command::Stop {
            time,
            containers: c,
        } => {
            return containers::stop(&open_store(&cli)?, *time, c);
        }
        Command::Restart {
            time,
            containers: c,
        } => {
            return containers::restart(&open_store(&cli)?, *time, c);
        }
        Command::Kill {
            signal,
            containers: c,
        } => {
            return containers::kill(&open_store(&cli)?, signal, c);
        }
        Command::Rm {
            force,
            volumes: _,
            containers: c,
        } => {
            return containers::rm(&open_store(&cli)?, *force, c);
        }
        Command::Logs { follow, container } => {
            return containers::logs(&open_store(&cli)?, *follow, container);
        }
        Command::Exec(a) => {
            let s = open_store(&cli).map_err(|f| Failure { code: 125, ..f })?;
            return containers::exec(&s, a);
        }
        Command::Wait { containers: c } => return containers::wait(&open_store(&cli)?, c),
        Command::Commit {
            message,
            author,
            container,
            name,
        } => {
            return containers::commit(
                &open_store(&cli)?,
                container,
                name.as_deref(),
                message.as_deref(),
                author.as_deref(),
            );
        }
        Command::Diff { container } => return containers::diff(&open_store(&cli)?, container),
        Command::Export { output, container } => {
            return containers::export(&open_store(&cli)?, output.as_deref(), container);
        }
        Command::Cp { src, dest } => return containers::cp(&open_store(&cli)?, src, dest),
        Command::ContainerMonitor { notify_fd, id } => {
            let notify = notify_fd.and_then(crate::sys::inherited_fd);
            let s = match open_store(&cli) {
                Ok(s) => s,
                Err(f) => {
                    if let Some(n) = notify {
                        let mut b = vec![125u8];
                        b.extend_from_slice(f.message.as_bytes());
                        let _ = nix::unistd::write(&n, &b);
                    }
                    return Err(Failure { code: 125, ..f });
                }
            };
            let code = crate::runner::monitor::monitor_main(&s, id, notify);
            std::process::exit(code);
        }
        Command::Import(a) => {
            let s = open_store(&cli)?;
            let opts = ImportOptions {
                changes: a.changes.clone(),
                message: a.message.clone(),
            };
            let id = s.import(&a.file, a.name.as_deref(), &opts, &Progress::new(false))?;
            println!("{id}");
        }
        Command::Load(a) => {
            let s = open_store(&cli)?;
            if a.input.is_none() && std::io::stdin().is_terminal() {
                return Err(fail(
                    "requested load from stdin, but stdin is empty (use -i FILE)",
                ));
            }
            let loaded = s.load(a.input.as_deref(), &Progress::new(a.quiet))?;
            for (id, names) in &loaded.images {
                if names.is_empty() {
                    println!("Loaded image ID: {id}");
                }
                for n in names {
                    println!("Loaded image: {n}");
                }
            }
        }
        Command::Save(a) => {
            let s = open_store(&cli)?;
            let fmt: SaveFormat = a.format.parse().map_err(fail)?;
            if a.output.is_none() && std::io::stdout().is_terminal() {
                return Err(fail(
                    "cowardly refusing to save to a terminal. Use the -o flag or redirect",
                ));
            }
            s.save(&a.images, fmt, a.output.as_deref(), &Progress::new(false))?;
        }
        Command::Images(a) => images(&open_store(&cli)?, a)?,
        Command::Tag { source, target } => open_store(&cli)?.tag(source, target)?,
        Command::Rmi { force, images } => {
            let s = open_store(&cli)?;
            let mut failed = None;
            for name in images {
                match s.remove_image(name, *force) {
                    Ok(r) => {
                        for u in r.untagged {
                            println!("Untagged: {u}");
                        }
                        for d in r.deleted {
                            println!("Deleted: {d}");
                        }
                    }
                    Err(e) => {
                        eprintln!("Error: {e}");
                        failed = Some(fail(""));
                    }
                }
            }
            if let Some(f) = failed {
                return Err(f);
            }
        }
        Command::Inspect {
            format,
            kind,
            names,
        } => {
            if kind != "image" {
                return Err(fail(format!("unknown --type {kind:?}: only \"image\"")));
            }
            inspect(&open_store(&cli)?, names, format.as_deref())?
        }
        Command::History(a) => history(&open_store(&cli)?, a)?,
        Command::Info { format } | Command::System(SystemCommand::Info { format }) => {
            info(&open_store(&cli)?, format.as_deref())?
        }
        Command::System(SystemCommand::Df { verbose, format }) => {
            df(&open_store(&cli)?, *verbose, format.as_deref())?
        }
        Command::System(SystemCommand::Prune { all, force }) => {
            if !force {
                eprintln!(
                    "WARNING! This will remove:\n  - all {}images without at least one container associated to them\n  - everything an interrupted strata process left behind",
                    if *all { "" } else { "dangling " }
                );
                eprint!("Are you sure you want to continue? [y/N] ");
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Ok(());
                }
            }
            let r = open_store(&cli)?.prune(*all)?;
            if !r.images.is_empty() {
                println!("Deleted Images:");
                for d in &r.images {
                    println!("deleted: {d}");
                }
                println!();
            }
            if r.stale_leases > 0 || !r.orphans.is_empty() {
                println!(
                    "Removed {} stale lease(s) and {} leftover file(s) of interrupted operations",
                    r.stale_leases,
                    r.orphans.len()
                );
                println!();
            }
            println!("Total reclaimed space: {}", human_size(r.reclaimed));
        }
        Command::Fsck => {
            let s = open_store(&cli)?;
            let problems = s.fsck()?;
            for p in &problems {
                println!("{p}");
            }
            if !problems.is_empty() {
                return Err(fail(format!(
                    "fsck: {} problem(s) in {}",
                    problems.len(),
                    s.root().display()
                )));
            }
            println!(
                "fsck: {} ok ({} blobs, {} layers, {} images)",
                s.root().display(),
                s.index().count("blobs")?,
                s.index().count("layers")?,
                s.index().count("images")?
            );
        }
    }
    Ok(())
}

fn created_unix(created: &Option<String>) -> i64 {
    created
        .as_deref()
        .and_then(image::parse_rfc3339)
        .unwrap_or(0)
}

fn images(s: &Store, a: &ImagesArgs) -> Result<(), Failure> {
    let filter = match &a.filter {
        Some(f) => Some(Reference::parse(f).map_err(fail)?),
        None => None,
    };
    let mut imgs = s.index().images()?;
    imgs.sort_by(|x, y| {
        created_unix(&y.created)
            .cmp(&created_unix(&x.created))
            .then(y.added.cmp(&x.added))
    });
    let tags = s.index().tags()?;
    // With `--digests`, as docker: one row per tag and digest of its repository (the image's
    // RepoDigests); else one row per tag, its Digest the manifest the tag was stored with.
    let mut rows: Vec<Row> = Vec::new();
    for img in &imgs {
        let mine: Vec<_> = tags.iter().filter(|t| t.image_id == img.id).collect();
        let created = created_unix(&img.created);
        let mut names: Vec<(String, String, Option<String>)> = mine
            .iter()
            .map(|t| {
                (
                    familiar(&t.repository).to_string(),
                    t.tag.clone(),
                    t.manifest_digest.as_ref().map(|d| d.to_string()),
                )
            })
            .collect();
        if let Some(f) = &filter {
            names.retain(|(r, t, _)| {
                familiar(&f.repository()) == r && f.tag.as_ref().is_none_or(|ft| ft == t)
            });
            if names.is_empty() {
                continue;
            }
        }
        if names.is_empty() {
            names.push(("<none>".into(), "<none>".into(), None));
        }
        let named = if a.digests {
            let repo_digests = repo_digests_of(s, &img.id, &mine)?;
            let mut named = Vec::new();
            for (repo, tag, digest) in names {
                let prefix = format!("{repo}@");
                let of_repo: Vec<String> = repo_digests
                    .iter()
                    .filter_map(|rd| rd.strip_prefix(&prefix).map(str::to_string))
                    .collect();
                if of_repo.is_empty() {
                    named.push((repo, tag, digest));
                    continue;
                }
                for d in of_repo {
                    named.push((repo.clone(), tag.clone(), Some(d)));
                }
            }
            named
        } else {
            names
        };
        for (repo, tag, digest) in named {
            let id = if a.no_trunc {
                img.id.to_string()
            } else {
                img.id.short().to_string()
            };
            rows.push(vec![
                ("Containers", json!("N/A")),
                ("CreatedAt", json!(go_time(created))),
                ("CreatedSince", json!(ago(created))),
                ("Digest", json!(digest.unwrap_or_else(|| "<none>".into()))),
                ("ID", json!(id)),
                ("Repository", json!(repo)),
                ("SharedSize", json!("N/A")),
                ("Size", json!(human_size(img.size))),
                ("Tag", json!(tag)),
                ("UniqueSize", json!("N/A")),
                ("VirtualSize", json!(human_size(img.size))),
            ]);
        }
    }
    if a.quiet {
        for r in &rows {
            let id = r
                .iter()
                .find(|(k, _)| *k == "ID")
                .map(|(_, v)| v.as_str().unwrap_or("").to_string())
                .unwrap_or_default();
            println!("{id}");
        }
        return Ok(());
    }
    let mut headers = vec![("Repository", "REPOSITORY"), ("Tag", "TAG")];
    if a.digests {
        headers.push(("Digest", "DIGEST"));
    }
    headers.extend([
        ("ID", "IMAGE ID"),
        ("CreatedSince", "CREATED"),
        ("Size", "SIZE"),
    ]);
    let all_headers = [
        ("Repository", "REPOSITORY"),
        ("Tag", "TAG"),
        ("Digest", "DIGEST"),
        ("ID", "IMAGE ID"),
        ("CreatedSince", "CREATED"),
        ("CreatedAt", "CREATED AT"),
        ("Size", "SIZE"),
        ("VirtualSize", "VIRTUAL SIZE"),
        ("SharedSize", "SHARED SIZE"),
        ("UniqueSize", "UNIQUE SIZE"),
        ("Containers", "CONTAINERS"),
    ];
    match a.format.as_deref() {
        None => print_rows(&rows, &headers, None)?,
        Some(f) if f.starts_with("table") && f.trim() != "table" => {
            print_rows(&rows, &all_headers, Some(f))?
        }
        Some(f) => print_rows(&rows, &headers, Some(f))?,
    }
    Ok(())
}

/// An image's RepoDigests (`repository@digest`, familiar names, sorted): the manifest each of
/// its tags was stored with, and the digests it was pulled or pushed by.
fn repo_digests_of(
    s: &Store,
    id: &Digest,
    tags: &[&crate::store::index::TagRow],
) -> Result<Vec<String>, Failure> {
    let mut out: Vec<String> = tags
        .iter()
        .filter_map(|t| {
            t.manifest_digest
                .as_ref()
                .map(|d| format!("{}@{d}", familiar(&t.repository)))
        })
        .collect();
    for (repo, d) in s.index().repo_digests_of(id)? {
        out.push(format!("{}@{d}", familiar(&repo)));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The inspect document of one image, as `docker image inspect` prints it.
fn inspect_doc(s: &Store, name: &str) -> Result<Value, Failure> {
    // A container first, then an image, as docker looks them up.
    if let Ok(c) = crate::runner::find(s, name) {
        return containers::inspect_doc(s, &c);
    }
    let r = s.resolve(name)?;
    let row = s
        .index()
        .image(&r.id)?
        .ok_or_else(|| fail(format!("No such image: {name}")))?;
    let config: Value = serde_json::from_slice(&s.read_blob(&r.id)?)
        .map_err(|e| fail(format!("{}: config: {e}", r.id)))?;
    let tags = s.index().tags_of(&r.id)?;
    let repo_tags: Vec<String> = tags
        .iter()
        .map(|t| format!("{}:{}", familiar(&t.repository), t.tag))
        .collect();
    let repo_digests = repo_digests_of(s, &r.id, &tags.iter().collect::<Vec<_>>())?;
    let layers = s.index().image_layers(&r.id)?;
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|d| s.layer_diff(d).display().to_string())
        .collect();
    let manifest = s.read_blob(&r.manifest)?;
    let mt = image::parse_manifest(&manifest, &r.manifest.to_string())?.media_type;
    let comment = config
        .get("history")
        .and_then(Value::as_array)
        .and_then(|h| h.last())
        .and_then(|h| h.get("comment"))
        .cloned()
        .unwrap_or(json!(""));
    Ok(json!({
        "Id": r.id.to_string(),
        "RepoTags": repo_tags,
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": comment,
        "Created": config.get("created").cloned().unwrap_or(json!("")),
        "Author": config.get("author").cloned().unwrap_or(json!("")),
        "Config": config.get("config").cloned().unwrap_or(json!({})),
        "Architecture": row.architecture.clone().unwrap_or_default(),
        "Variant": config.get("variant").cloned().unwrap_or(Value::Null),
        "Os": row.os.clone().unwrap_or_default(),
        "Size": row.size,
        "GraphDriver": {"Name": "strata", "Data": {"LowerDir": lower.join(":")}},
        "RootFS": {"Type": "layers", "Layers": layers.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        "Descriptor": {"mediaType": mt, "digest": r.manifest.to_string(), "size": manifest.len()},
    }))
}

fn inspect(s: &Store, names: &[String], format: Option<&str>) -> Result<(), Failure> {
    let mut docs = Vec::new();
    let mut failed = false;
    for n in names {
        match inspect_doc(s, n) {
            Ok(d) => docs.push(d),
            Err(f) => {
                eprintln!("Error: {}", f.message);
                failed = true;
            }
        }
    }
    match format {
        None | Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(docs)).expect("JSON values serialize")
        ),
        Some(f) => {
            for d in &docs {
                println!("{}", format::render(f, d)?);
            }
        }
    }
    if failed {
        return Err(fail("").silent());
    }
    Ok(())
}

impl Failure {
    /// A failure whose message was already printed.
    fn silent(mut self) -> Failure {
        self.message.clear();
        self
    }
}

fn history(s: &Store, a: &HistoryArgs) -> Result<(), Failure> {
    let r = s.resolve(&a.image)?;
    let config: Value = serde_json::from_slice(&s.read_blob(&r.id)?)
        .map_err(|e| fail(format!("{}: config: {e}", r.id)))?;
    let layers = s.index().image_layers(&r.id)?;
    let sizes: Vec<u64> = layers
        .iter()
        .map(|d| s.index().layer(d).map(|l| l.map(|l| l.size).unwrap_or(0)))
        .collect::<Result<_, _>>()?;
    let hist: Vec<Value> = config
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // (created, created_by, comment, size), oldest first
    let mut entries: Vec<(Option<String>, String, String, u64)> = Vec::new();
    if hist.is_empty() {
        for sz in &sizes {
            entries.push((None, String::new(), String::new(), *sz));
        }
    } else {
        let mut li = 0;
        for h in &hist {
            let empty = h
                .get("empty_layer")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let size = if empty {
                0
            } else {
                let sz = sizes.get(li).copied().unwrap_or(0);
                li += 1;
                sz
            };
            entries.push((
                h.get("created").and_then(Value::as_str).map(str::to_string),
                h.get("created_by")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                h.get("comment")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                size,
            ));
        }
    }
    let mut rows: Vec<Row> = Vec::new();
    let n = entries.len();
    for (i, (created, by, comment, size)) in entries.into_iter().rev().enumerate() {
        let _ = n;
        let id = if i == 0 {
            short_id(&r.id, a.no_trunc)
        } else {
            "<missing>".to_string()
        };
        let when = created_unix(&created);
        let created_s = if a.human {
            ago(when)
        } else {
            created.clone().unwrap_or_default()
        };
        let by = if a.no_trunc { by } else { ellipsis(&by, 45) };
        let size_s = if a.human {
            human_size(size)
        } else {
            size.to_string()
        };
        rows.push(vec![
            ("ID", json!(id)),
            ("CreatedSince", json!(created_s)),
            ("CreatedAt", json!(created.unwrap_or_default())),
            ("CreatedBy", json!(by)),
            ("Size", json!(size_s)),
            ("Comment", json!(comment)),
        ]);
    }
    if a.quiet {
        for r in &rows {
            println!("{}", r[0].1.as_str().unwrap_or(""));
        }
        return Ok(());
    }
    let headers = [
        ("ID", "IMAGE"),
        ("CreatedSince", "CREATED"),
        ("CreatedBy", "CREATED BY"),
        ("Size", "SIZE"),
        ("Comment", "COMMENT"),
    ];
    print_rows(&rows, &headers, a.format.as_deref())?;
    Ok(())
}

fn version(format: Option<&str>) -> Result<(), Failure> {
    let (os, arch) = image::host_platform();
    let v = json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "SchemaVersion": store::index::SCHEMA_VERSION,
        "Os": os,
        "Arch": arch,
        "KernelVersion": crate::sys::kernel_release(),
    });
    match format {
        Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("JSON values serialize")
        ),
        Some(f) => println!("{}", format::render(f, &v)?),
        None => {
            println!("strata:");
            println!(" Version:        {}", env!("CARGO_PKG_VERSION"));
            println!(" Index schema:   {}", store::index::SCHEMA_VERSION);
            println!(" OS/Arch:        {os}/{arch}");
            println!(
                " Kernel:         {}",
                v["KernelVersion"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// What this machine offers a FUSE server: `/dev/fuse`, and passthrough (kernel ≥ 6.9 and
/// CAP_SYS_ADMIN).
pub fn fuse_support() -> (bool, bool, String) {
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    let release = crate::sys::kernel_release();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (maj, min) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    let new_enough = (maj, min) >= (6, 9);
    let cap = crate::sys::has_capability(crate::sys::CAP_SYS_ADMIN);
    let why = match (fuse, new_enough, cap) {
        (false, _, _) => "no usable /dev/fuse".to_string(),
        (true, false, _) => format!("kernel {release} is older than 6.9: userspace I/O"),
        (true, true, false) => "no CAP_SYS_ADMIN: userspace I/O".to_string(),
        (true, true, true) => format!("kernel {release} with CAP_SYS_ADMIN"),
    };
    (fuse, fuse && new_enough && cap, why)
}

fn info(s: &Store, format: Option<&str>) -> Result<(), Failure> {
    let idx = s.index();
    let blobs = idx.blobs()?;
    let layers = idx.layers()?;
    let (fuse, passthrough, why) = fuse_support();
    let ns = crate::cow::format::XattrNs::for_this_process();
    let v = json!({
        "StoreRoot": s.root().display().to_string(),
        "Index": s.root().join("index.db").display().to_string(),
        "SchemaVersion": idx.schema_version()?,
        "Images": idx.count("images")?,
        "Tags": idx.count("tags")?,
        "Layers": layers.len(),
        "LayersPending": layers.iter().filter(|l| l.is_pending()).count(),
        "LayersSize": layers.iter().filter_map(|l| l.content_size()).sum::<u64>(),
        "Blobs": blobs.len(),
        "BlobsSize": blobs.iter().map(|b| b.size).sum::<u64>(),
        "Containers": idx.count("containers")?,
        "OpaqueXattr": ns.opaque_key(),
        "Fuse": fuse,
        "Passthrough": passthrough,
        "PassthroughReason": why,
        "IoUring": crate::fuse::io_uring_offered(),
        "KernelVersion": crate::sys::kernel_release(),
        "Version": env!("CARGO_PKG_VERSION"),
    });
    match format {
        Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("JSON values serialize")
        ),
        Some(f) => println!("{}", format::render(f, &v)?),
        None => {
            println!("Store:");
            println!(
                " Root:            {}",
                v["StoreRoot"].as_str().unwrap_or("")
            );
            println!(
                " Index:           {} (schema {}, WAL)",
                v["Index"].as_str().unwrap_or(""),
                v["SchemaVersion"]
            );
            println!(" Images:          {} ({} tags)", v["Images"], v["Tags"]);
            let pending = match v["LayersPending"].as_u64().unwrap_or(0) {
                0 => String::new(),
                n => format!("; {n} pending: pulled, extracted on first use"),
            };
            println!(
                " Layers:          {} ({} of files{pending})",
                v["Layers"],
                human_size(v["LayersSize"].as_u64().unwrap_or(0)),
            );
            println!(
                " Blobs:           {} ({})",
                v["Blobs"],
                human_size(v["BlobsSize"].as_u64().unwrap_or(0))
            );
            println!(" Containers:      {}", v["Containers"]);
            println!(
                " Layer format:    kernel overlayfs (whiteouts: char 0/0; opaque: {}=y)",
                ns.opaque_key()
            );
            println!(
                "FUSE:             {}",
                if fuse {
                    "available (/dev/fuse)"
                } else {
                    "not available"
                }
            );
            println!(
                "Passthrough:      {} ({why})",
                if passthrough {
                    "available"
                } else {
                    "not available"
                }
            );
            println!(
                "Requests:         {}",
                if v["IoUring"].as_bool().unwrap_or(false) {
                    "io_uring, one queue per CPU (the kernel's enable_uring is on; root only)"
                        .to_string()
                } else {
                    format!(
                        "/dev/fuse (for io_uring, as root: echo 1 > {})",
                        crate::fuse::IO_URING_PARAM
                    )
                }
            );
            println!(
                "Kernel:           {}",
                v["KernelVersion"].as_str().unwrap_or("")
            );
            println!("strata version:   {}", env!("CARGO_PKG_VERSION"));
        }
    }
    Ok(())
}

fn df(s: &Store, verbose: bool, format: Option<&str>) -> Result<(), Failure> {
    let idx = s.index();
    let imgs = idx.images()?;
    let tags = idx.tags()?;
    let layers = idx.layers()?;
    let blobs = idx.blobs()?;
    let active_imgs = imgs
        .iter()
        .filter(|i| idx.containers_using(&i.id).map(|n| n > 0).unwrap_or(false))
        .count();
    let dangling: Vec<_> = imgs
        .iter()
        .filter(|i| !tags.iter().any(|t| t.image_id == i.id))
        .collect();
    let layer_bytes: u64 = layers.iter().filter_map(|l| l.content_size()).sum();
    let pending = layers.iter().filter(|l| l.is_pending()).count();
    let blob_bytes: u64 = blobs.iter().map(|b| b.size).sum();
    let reclaim_imgs: u64 = dangling.iter().map(|i| i.size).sum();
    let containers = idx.count("containers")?;
    let pct = |part: u64, whole: u64| (part * 100).checked_div(whole).unwrap_or(0);
    let img_size: u64 = layer_bytes + blob_bytes;
    let rows: Vec<Row> = vec![
        vec![
            ("Type", json!("Images")),
            ("TotalCount", json!(imgs.len().to_string())),
            ("Active", json!(active_imgs.to_string())),
            ("Size", json!(human_size(img_size))),
            (
                "Reclaimable",
                json!(format!(
                    "{} ({}%)",
                    human_size(reclaim_imgs),
                    pct(reclaim_imgs, img_size)
                )),
            ),
        ],
        vec![
            ("Type", json!("Containers")),
            ("TotalCount", json!(containers.to_string())),
            ("Active", json!("0")),
            ("Size", json!(human_size(0))),
            ("Reclaimable", json!(format!("{} (0%)", human_size(0)))),
        ],
        vec![
            ("Type", json!("Layers")),
            ("TotalCount", json!(layers.len().to_string())),
            ("Active", json!(layers.len().to_string())),
            ("Size", json!(human_size(layer_bytes))),
            ("Reclaimable", json!(format!("{} (0%)", human_size(0)))),
        ],
        vec![
            ("Type", json!("Blobs")),
            ("TotalCount", json!(blobs.len().to_string())),
            ("Active", json!(blobs.len().to_string())),
            ("Size", json!(human_size(blob_bytes))),
            ("Reclaimable", json!(format!("{} (0%)", human_size(0)))),
        ],
    ];
    let headers = [
        ("Type", "TYPE"),
        ("TotalCount", "TOTAL"),
        ("Active", "ACTIVE"),
        ("Size", "SIZE"),
        ("Reclaimable", "RECLAIMABLE"),
    ];
    print_rows(&rows, &headers, format)?;
    if pending > 0 && format.is_none() {
        println!(
            "\n{pending} of the layers pending: pulled, extracted on first use (their blobs count under Blobs)"
        );
    }
    if verbose {
        println!("\nImages space usage:\n");
        let mut lines = vec!["REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE".to_string()];
        for i in &imgs {
            let mine: Vec<_> = tags.iter().filter(|t| t.image_id == i.id).collect();
            let created = ago(created_unix(&i.created));
            if mine.is_empty() {
                lines.push(format!(
                    "<none>\t<none>\t{}\t{created}\t{}",
                    i.id.short(),
                    human_size(i.size)
                ));
            }
            for t in mine {
                lines.push(format!(
                    "{}\t{}\t{}\t{created}\t{}",
                    familiar(&t.repository),
                    t.tag,
                    i.id.short(),
                    human_size(i.size)
                ));
            }
        }
        print!("{}", format::tabulate(&lines));
        println!("\nLayers space usage:\n");
        let mut lines = vec!["LAYER (DIFF_ID)\tENTRIES\tFILES SIZE\tTAR SIZE".to_string()];
        for l in &layers {
            match &l.state {
                store::index::LayerState::Extracted {
                    entries,
                    content_size,
                    ..
                } => lines.push(format!(
                    "{}\t{entries}\t{}\t{}",
                    l.diff_id.short(),
                    human_size(*content_size),
                    human_size(l.size)
                )),
                store::index::LayerState::Pending { .. } => lines.push(format!(
                    "{}\t-\tpending\t~{}",
                    l.diff_id.short(),
                    human_size(l.size)
                )),
            }
        }
        print!("{}", format::tabulate(&lines));
    }
    Ok(())
}
