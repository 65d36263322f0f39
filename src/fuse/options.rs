//! `-o` mount options: what the user may ask for, parsed strictly so a typo is an error rather
//! than a silently different mount.

use super::adapter::Ownership;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOpts {
    pub rw: bool,
    pub allow_other: bool,
    pub owner: Ownership,
    /// Block cache size for the image, bytes.
    pub cache_bytes: Option<u64>,
    /// FAT timestamps' offset from UTC in minutes (`utc`, `tz=`); `None` = the host's zone.
    pub tz_minutes: Option<i32>,
    /// Punch holes in the image for clusters a read-write mount frees.
    pub discard: bool,
    /// Unmount after this long without a request (`idle_timeout=SECONDS`).
    pub idle_timeout: Option<std::time::Duration>,
    /// `-o cow[=FILE]`: a copy-on-write overlay (see fs_drivers::cow).
    pub cow: Option<fs_drivers::cow::CowStore>,
    /// `-o chunk=SIZE`: the chunk size of a new COW store.
    pub cow_chunk: Option<u64>,
    /// Open the image O_DIRECT (`direct`).
    pub direct: bool,
}

const KNOWN: &str =
    "ro, rw, allow_other, uid=N, gid=N, umask=OOO, fakeroot, cache=SIZE, utc, tz=+HHMM, discard, idle_timeout=SECONDS, cow[=FILE], chunk=SIZE, direct, nosuid, nodev";

/// Parses every `-o` argument (each may hold several comma-separated options); later options
/// override earlier ones, as mount(8) does.
pub fn parse(args: &[String]) -> Result<MountOpts, String> {
    let mut o = MountOpts::default();
    for opt in args.iter().flat_map(|a| a.split(',')) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("", None) => {}
            ("ro", None) => o.rw = false,
            ("rw", None) => o.rw = true,
            ("allow_other", None) => o.allow_other = true,
            ("fakeroot", None) => o.owner.fakeroot = true,
            // Always on; accepted so scripts written for mount(8) keep working.
            ("nosuid" | "nodev", None) => {}
            ("uid", Some(v)) => o.owner.uid = Some(parse_id(key, v)?),
            ("gid", Some(v)) => o.owner.gid = Some(parse_id(key, v)?),
            ("umask", Some(v)) => {
                o.owner.umask = Some(
                    u16::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| format!("umask={v}: expected an octal mode like 022"))?,
                )
            }
            ("cache", Some(v)) => o.cache_bytes = Some(parse_size(v)?),
            ("utc", None) => o.tz_minutes = Some(0),
            ("discard", None) => o.discard = true,
            ("direct", None) => o.direct = true,
            ("idle_timeout", Some(v)) => o.idle_timeout = Some(parse_seconds(key, v)?),
            ("cow", None) => o.cow = Some(fs_drivers::cow::CowStore::Transient),
            ("cow", Some("")) => {
                return Err(
                    "cow=: expected a store file (or plain cow for a transient overlay)".into(),
                )
            }
            ("cow", Some(v)) => o.cow = Some(fs_drivers::cow::CowStore::File(v.into())),
            ("chunk", Some(v)) => {
                let n = parse_size(v)
                    .map_err(|_| format!("chunk={v}: expected a size like 4K or 64K"))?;
                fs_drivers::cow::check_chunk_size(n)?;
                o.cow_chunk = Some(n);
            }
            ("tz", Some(v)) => {
                o.tz_minutes = Some(crate::host::parse_tz(v).ok_or_else(|| {
                    format!("tz={v}: expected UTC or an offset like +0100 or -05:30")
                })?)
            }
            ("uid" | "gid" | "umask" | "cache" | "tz" | "idle_timeout" | "chunk", None) => {
                return Err(format!("mount option '{key}' needs a value ({key}=...)"))
            }
            _ => return Err(format!("unknown mount option '{opt}' (known: {KNOWN})")),
        }
    }
    if o.owner.fakeroot && o.allow_other {
        // Everyone who can reach the mount would be root inside the image.
        return Err(
            "-o fakeroot makes every user of the mount root inside the image: not with allow_other"
                .into(),
        );
    }
    Ok(o)
}

fn parse_id(key: &str, v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| *n != u32::MAX)
        .ok_or_else(|| format!("{key}={v}: expected a number"))
}

/// A positive number of seconds, fractions allowed ("30", "0.5"), up to a year.
fn parse_seconds(key: &str, v: &str) -> Result<std::time::Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 365.0 * 86400.0)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("{key}={v}: expected a number of seconds greater than 0"))
}

/// "64M", "1G", "512K", "1048576" -> bytes (binary multiples).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let err = || format!("cache={v}: expected a size like 64M, 1G or 512K");
    let (digits, shift) = match v.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&v[..v.len() - 1], 10),
        Some(b'M') => (&v[..v.len() - 1], 20),
        Some(b'G') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Non-root users may only pass allow_other when /etc/fuse.conf says `user_allow_other`;
/// fusermount3 would refuse later with a less helpful message.
pub fn check_allow_other(euid: u32, fuse_conf: &str) -> Result<(), String> {
    if euid == 0 {
        return Ok(());
    }
    let allowed = fuse_conf
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other");
    if allowed {
        Ok(())
    } else {
        Err("-o allow_other needs 'user_allow_other' in /etc/fuse.conf (ask your administrator), or mount without it".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<MountOpts, String> {
        parse(&[s.to_string()])
    }

    #[test]
    fn parses_known_options() {
        let o = p("rw,uid=1000,gid=100,umask=027,cache=64M,allow_other").unwrap();
        assert!(o.rw && o.allow_other);
        assert_eq!(o.owner.uid, Some(1000));
        assert_eq!(o.owner.gid, Some(100));
        assert_eq!(o.owner.umask, Some(0o027));
        assert!(!o.discard);
        assert!(p("rw,discard").unwrap().discard);
        assert_eq!(
            p("idle_timeout=1.5").unwrap().idle_timeout,
            Some(std::time::Duration::from_millis(1500))
        );
        for bad in [
            "idle_timeout=0",
            "idle_timeout=-1",
            "idle_timeout=x",
            "idle_timeout=inf",
            "idle_timeout",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(p("utc").unwrap().tz_minutes, Some(0));
        assert_eq!(p("tz=-0530").unwrap().tz_minutes, Some(-330));
        assert!(p("tz=nowhere").is_err());
        assert_eq!(o.cache_bytes, Some(64 << 20));
        assert!(!p("rw,ro").unwrap().rw);
        assert_eq!(parse(&[]).unwrap(), MountOpts::default());
    }

    #[test]
    fn rejects_bad_options() {
        assert!(p("bogus")
            .unwrap_err()
            .contains("unknown mount option 'bogus'"));
        assert!(p("uid=abc").is_err());
        assert!(p("umask=999").is_err());
        assert!(p("umask=17777").is_err());
        assert!(p("cache=12Q").is_err());
        assert!(p("cache=99999999999G").is_err());
        assert!(p("uid").is_err());
        assert!(p("ro=1").is_err());
        assert!(p("fakeroot=1").is_err());
        assert!(p("rw,fakeroot,allow_other")
            .unwrap_err()
            .contains("not with allow_other"));
    }

    #[test]
    fn fakeroot_keeps_uid_and_gid_for_new_files() {
        let o = p("rw,fakeroot,uid=1000").unwrap();
        assert!(o.owner.fakeroot && o.rw);
        assert_eq!((o.owner.uid, o.owner.gid), (Some(1000), None));
        assert!(!p("rw").unwrap().owner.fakeroot);
    }

    #[test]
    fn cow_options() {
        use fs_drivers::cow::CowStore;
        let o = p("cow=/tmp/x.cow,chunk=64K").unwrap();
        assert_eq!(o.cow, Some(CowStore::File("/tmp/x.cow".into())));
        assert_eq!(o.cow_chunk, Some(64 << 10));
        assert_eq!(p("cow").unwrap().cow, Some(CowStore::Transient));
        assert!(p("cow=").is_err());
        assert!(p("chunk=3K").is_err());
        assert!(p("chunk=1M").is_err());
        assert!(p("chunk=2K").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn allow_other_needs_fuse_conf() {
        assert!(check_allow_other(0, "").is_ok());
        assert!(check_allow_other(1000, "#user_allow_other\n").is_err());
        assert!(check_allow_other(1000, "mount_max = 5\nuser_allow_other\n").is_ok());
    }
}
