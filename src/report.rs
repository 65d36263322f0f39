//! How failures reach the user: one line, `imgmount: <what>: <why>`, on stderr, and a non-zero
//! exit. Library errors become text here so every command words them the same way.

use fs_drivers::Error;
use std::fmt::Display;

/// A command's failure: the text after `imgmount: ` and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    /// `<context>: <why>`, where `context` is usually the image or file path.
    pub fn new(context: impl Display, err: &Error) -> Failure {
        Failure {
            message: format!("{context}: {}", describe(err)),
            code: 1,
        }
    }

    pub fn msg(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

pub type CmdResult = Result<(), Failure>;

/// The user-facing text of a library error. Messages the library already writes as whole
/// sentences (`Invalid`, `Unsupported`) are shown as they are; OS errors lose the
/// "(os error N)" tail.
pub fn describe(err: &Error) -> String {
    match err {
        Error::Invalid(s) | Error::Unsupported(s) => s.clone(),
        Error::Io(e) => {
            let text = e.to_string();
            match text.find(" (os error ") {
                Some(i) => text[..i].to_string(),
                None => text,
            }
        }
        other => other.to_string(),
    }
}

/// Prints the failure line and exits.
pub fn exit_with(f: Failure) -> ! {
    eprintln!("imgmount: {}", f.message);
    std::process::exit(f.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_lose_the_errno_tail() {
        let e = Error::Io(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(describe(&e), "No such file or directory");
        let f = Failure::new("disk.img", &e);
        assert_eq!(f.message, "disk.img: No such file or directory");
    }

    #[test]
    fn sentences_are_kept() {
        let e = Error::Invalid("no partition 7 (the disk has partitions 1, 2)".into());
        assert_eq!(
            describe(&e),
            "no partition 7 (the disk has partitions 1, 2)"
        );
        assert_eq!(
            describe(&Error::Corrupt("bad superblock".into())),
            "corrupt filesystem: bad superblock"
        );
    }
}
