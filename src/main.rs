mod cli;
mod commands;
mod image_open;
mod index_cache;
mod mount;
mod report;
mod run;
mod umount;

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

    let cli = match parse_args() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    index_cache::configure(cli.cache_dir.clone(), cli.no_index_cache);
    image_open::init(&cli);
    let result: CmdResult = match cli.command {
        Some(Command::Info(args)) => commands::info::run(&args),
        Some(Command::Umount(a)) => umount::run(&a).map_err(Failure::msg),
        Some(Command::Ls(a)) => std::process::exit(commands::ls::run(&a)),
        Some(Command::Cat(a)) => std::process::exit(commands::cat::run(&a)),
        Some(Command::Extract(a)) => std::process::exit(commands::extract::run(&a)),
        Some(Command::Run(a)) => std::process::exit(run::run(&a)),
        Some(Command::Merge(a)) => commands::merge::run(&a),
        None => mount::run(&cli.mount).map_err(Failure::msg),
    };
    if let Err(f) = result {
        exit_with(f);
    }
}

/// Parses the command line; `--version` also says which protections a mount gets here (the
/// kernel is asked only then).
fn parse_args() -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    if std::env::args_os().any(|a| a == "--version") {
        let text: &'static str = Box::leak(imgmount::sandbox::version_text().into_boxed_str());
        cmd = cmd.long_version(text);
    }
    Cli::from_arg_matches(&cmd.try_get_matches()?)
}

/// clap's own errors as one line that starts with `imgmount:` like every other failure (a
/// script reading stderr gets one line per failure); help and version output go to stdout
/// unchanged.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        e.exit();
    }
    eprintln!("imgmount: {}", one_line(&e.render().to_string()));
    std::process::exit(e.exit_code());
}

/// clap's several-line message folded into one: the first line, with an indented list that
/// follows a colon joined onto it, then the usage line; tips and "For more information" go.
fn one_line(text: &str) -> String {
    let text = text.strip_prefix("error: ").unwrap_or(text);
    let mut lines = text.lines().map(str::trim_end).peekable();
    let mut out = lines.next().unwrap_or("invalid command line").to_string();
    if out.ends_with(':') {
        let mut items = Vec::new();
        while let Some(l) = lines.next_if(|l| l.starts_with("  ")) {
            items.push(l.trim());
        }
        out = format!("{} {}", out, items.join(", "));
    }
    if let Some(usage) = lines.find_map(|l| l.strip_prefix("Usage: ")) {
        out = format!("{out} (usage: {usage})");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn clap_messages_fold_into_one_line() {
        let missing = "error: the following required arguments were not provided:\n  <IMAGE>\n  <PATHS>...\n\nUsage: imgmount cat <IMAGE> <PATHS>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(missing),
            "the following required arguments were not provided: <IMAGE>, <PATHS>... (usage: imgmount cat <IMAGE> <PATHS>...)"
        );
        let tip = "error: unexpected argument '--frob' found\n\n  tip: to pass '--frob' as a value, use '-- --frob'\n\nUsage: imgmount [OPTIONS] <IMAGE> <MOUNTPOINT>\n       imgmount <COMMAND>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(tip),
            "unexpected argument '--frob' found (usage: imgmount [OPTIONS] <IMAGE> <MOUNTPOINT>)"
        );
    }
}
