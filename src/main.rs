mod cli;
mod mount;
mod umount;

use clap::Parser;
use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {
        Some(Command::Info(_)) => Err("info: not built yet".into()),
        Some(Command::Umount(a)) => umount::run(&a),
        Some(Command::Ls(_)) | Some(Command::Cat(_)) | Some(Command::Extract(_)) => {
            Err("this command is not built yet".into())
        }
        None => mount::run(&cli.mount),
    };
    if let Err(msg) = result {
        eprintln!("imgmount: {msg}");
        std::process::exit(1);
    }
}
