mod cli;
mod commands;
mod mount;
mod report;
mod umount;

use clap::Parser;
use cli::{Cli, Command};
use report::{exit_with, CmdResult, Failure};

fn main() {
    // Behave like other Unix tools in a pipeline (`imgmount info x.img | head`): a closed
    // pipe ends the process quietly instead of a write error.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::panic::set_hook(Box::new(|info| {
        eprintln!("imgmount: internal error (please report): {info}");
    }));

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let result: CmdResult = match cli.command {
        Some(Command::Info(args)) => commands::info::run(&args),
        Some(Command::Umount(a)) => umount::run(&a).map_err(Failure::msg),
        Some(Command::Ls(a)) => std::process::exit(commands::ls::run(&a)),
        Some(Command::Cat(a)) => std::process::exit(commands::cat::run(&a)),
        Some(Command::Extract(a)) => std::process::exit(commands::extract::run(&a)),
        Some(Command::Merge(a)) => commands::merge::run(&a),
        None => mount::run(&cli.mount).map_err(Failure::msg),
    };
    if let Err(f) = result {
        exit_with(f);
    }
}

/// clap's own errors, reworded to start with `imgmount:` like every other failure; help and
/// version output go to stdout unchanged.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        e.exit();
    }
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    eprint!("imgmount: {text}");
    if !text.ends_with('\n') {
        eprintln!();
    }
    std::process::exit(e.exit_code());
}
