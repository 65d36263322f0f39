//! Every command-line usage error is one `imgmount:` line on stderr and exit status 2, so a
//! script that logs stderr gets one line per failure (clap alone prints a paragraph).

mod common;

use common::imgmount;

/// Runs imgmount with `args` and checks the one-line usage error that names `expect`.
fn usage_error(args: &[&str], expect: &str) {
    let r = imgmount(args);
    assert_eq!(r.status.code(), Some(2), "{args:?}: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want one line, got {:?}",
        r.stderr
    );
    assert!(
        lines[0].starts_with("imgmount: "),
        "{args:?}: {:?}",
        r.stderr
    );
    assert!(
        lines[0].contains(expect),
        "{args:?}: {:?} lacks {expect:?}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{args:?}: stdout {:?}", r.stdout);
}

#[test]
fn mount() {
    usage_error(
        &["-p", "0", "disk.img", "/mnt"],
        "'0' is not a partition number",
    );
    usage_error(&["disk.img"], "<MOUNTPOINT>");
    usage_error(
        &["--frob", "disk.img", "/mnt"],
        "unexpected argument '--frob'",
    );
    usage_error(&["-t", "ntfs", "disk.img", "/mnt"], "invalid value 'ntfs'");
}

#[test]
fn umount() {
    usage_error(&["umount"], "<MOUNTPOINT>");
    usage_error(&["umount", "a", "b"], "unexpected argument 'b'");
    usage_error(&["umount", "--all", "a"], "cannot be used with");
}

#[test]
fn run() {
    usage_error(&["run", "x.img"], "<CMD>");
    usage_error(
        &["run", "-p", "0", "x.img", "--", "true"],
        "'0' is not a partition number",
    );
    usage_error(
        &["run", "--kill-after", "soon", "x.img", "--", "true"],
        "invalid value 'soon'",
    );
}

#[test]
fn info() {
    usage_error(&["info"], "<IMAGE>");
    usage_error(
        &["info", "--bogus", "x.img"],
        "unexpected argument '--bogus'",
    );
}

#[test]
fn ls() {
    usage_error(&["ls"], "<IMAGE>");
    usage_error(&["ls", "-p", "0", "x.img"], "'0' is not a partition number");
}

#[test]
fn cat() {
    usage_error(&["cat", "x.img"], "<PATH>");
    usage_error(
        &["cat", "-p", "x", "x.img", "/a"],
        "'x' is not a partition number",
    );
}

#[test]
fn extract() {
    usage_error(&["extract", "x.img"], "<PATH>");
    usage_error(
        &["extract", "x.img", "/a", "dest", "more"],
        "unexpected argument 'more'",
    );
}

#[test]
fn merge() {
    usage_error(&["merge", "x.img"], "<STORE>");
    usage_error(
        &["merge", "x.img", "s.cow", "more"],
        "unexpected argument 'more'",
    );
}

#[test]
fn help_subcommand_with_an_unknown_name() {
    usage_error(&["help", "frob"], "frob");
}

#[test]
fn unknown_subcommand_options_still_one_line() {
    usage_error(
        &["ls", "--json", "--frob", "x.img"],
        "unexpected argument '--frob'",
    );
}

#[test]
fn help_and_version_are_not_errors() {
    for args in [&["--help"][..], &["--version"], &["ls", "--help"]] {
        let r = imgmount(args);
        assert!(r.ok(), "{args:?}: {r:?}");
        assert!(r.stderr.is_empty(), "{args:?}: {:?}", r.stderr);
        assert!(!r.stdout.is_empty());
    }
}

#[test]
fn non_utf8_paths_are_accepted() {
    use std::os::unix::ffi::OsStrExt;
    // A name that is not UTF-8 reaches the command (which then says the image is missing)
    // instead of clap refusing the argument.
    let name = std::ffi::OsStr::from_bytes(b"/caf\xe9");
    let r = imgmount([
        std::ffi::OsStr::new("cat"),
        std::ffi::OsStr::new("/nonexistent/x.img"),
        name,
    ]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("x.img"), "{:?}", r.stderr);
}
