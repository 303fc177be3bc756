//! The `autosquash` command line.
//!
//! `serve` as root without a service manager runs as two processes: the supervisor (this
//! program's first process, one thread, see `supervisor`) and the daemon it starts, which
//! has the tokio runtime and the FUSE threads (see autosquash-fs). Every other command is one
//! process.

mod cmd;
mod config;
mod mountpoint;
mod notify;
mod signals;
mod source;
mod supervisor;
mod units;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "Serve squashfs images from S3 (or a local directory) as read-only directories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List a directory inside an image, or the images of a directory store.
    Ls(cmd::inspect::LsArgs),
    /// Write a file from inside an image to standard output.
    Cat(cmd::inspect::CatArgs),
    /// Serve the images of a source as directories under a mountpoint (foreground).
    Serve(cmd::serve::ServeArgs),
    /// Build a few demo images and serve them (no root or extra tools needed to build them).
    Demo(cmd::demo::DemoArgs),
    /// Build a squashfs image from a directory or a tar archive (no root needed).
    Pack(cmd::pack::PackArgs),
    /// Pack if needed, then upload an image to s3://bucket/prefix/NAME.squash.
    Push(cmd::push::PushArgs),
    /// Make symlinks under a target tree point to every file of a source tree.
    Link(cmd::link::LinkArgs),
    /// Show what the running daemon serves: images, versions, open files, cache, store counters.
    Status(cmd::status::StatusArgs),
    /// Check that an s3:// prefix can be served: credentials, listing, ranges, If-Match, clock, speed.
    Doctor(cmd::doctor::DoctorArgs),
}

/// The daemon reports what it mounts; one-shot commands only speak up about problems.
fn default_log(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) | Command::Demo(_) => "info",
        _ => "warn",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AUTOSQUASH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log(&cli.command))),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: the journal and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Before any thread exists: the supervisor forks.
    if matches!(cli.command, Command::Serve(_)) && supervisor::wanted() {
        return supervisor::run();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("autosquash: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ls(args) => cmd::inspect::ls(args).await,
            Command::Cat(args) => cmd::inspect::cat(args).await,
            Command::Serve(args) => cmd::serve::serve(args).await,
            Command::Demo(args) => cmd::demo::demo(args).await,
            Command::Pack(args) => cmd::pack::pack(args).await,
            Command::Push(args) => cmd::push::push(args).await,
            Command::Link(args) => cmd::link::link(args),
            Command::Status(args) => cmd::status::status(args).await,
            Command::Doctor(args) => cmd::doctor::doctor(args).await,
        }
    });
    // Work left when the command is done (readahead still fetching, blocking file reads) is
    // abandoned after a short grace instead of holding up the exit (systemd's stop timeout).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autosquash: {e:#}");
            ExitCode::FAILURE
        }
    }
}
