//! The `strata` binary: parses the command line, runs it, and maps errors to docker's exit
//! statuses (125 for a bad command line, 1 for a failed command).

use clap::Parser;

fn main() {
    let cli = match strata::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .format_timestamp(None)
        .init();
    if let Err(f) = strata::cli::run(cli) {
        if !f.message.is_empty() {
            eprintln!("Error: {}", f.message);
        }
        std::process::exit(f.code);
    }
}
