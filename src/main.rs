//! The `strata` binary: parses the command line, runs it, and maps errors to docker's exit
//! statuses (125 for a bad command line, 1 for a failed command).

use clap::Parser;

fn main() {
    // Installed as `strata-overlay`, the binary is the mount program of `mount -t
    // fuse.strata-overlay` (mount.fuse runs `strata-overlay SOURCE MOUNTPOINT -o OPTIONS`).
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = std::path::Path::new(args.first().map(|a| a.as_os_str()).unwrap_or_default())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if invoked_as.as_deref() == Some("strata-overlay") {
        args.insert(1, "overlay".into());
    }
    let cli = match strata::cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // fuser warns that it could not unmount when the mount was unmounted from outside (the
    // usual way a foreground server ends): not worth a line at the default level.
    let filters = match cli.log_level.as_str() {
        "warn" => "warn,fuser::session=error".to_string(),
        other => other.to_string(),
    };
    env_logger::Builder::new()
        .parse_filters(&filters)
        .format_timestamp(None)
        .init();
    if let Err(f) = strata::cli::run(cli) {
        if !f.message.is_empty() {
            eprintln!("Error: {}", f.message);
        }
        std::process::exit(f.code);
    }
}
