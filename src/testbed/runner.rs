//! Running server commands as an unprivileged user when we are root, and the
//! shell quoting that needs.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::binaries::find_program;
use super::{io_err, TestbedError};

/// libpq variables that would silently redirect or alter our psql sessions.
const LIBPQ_ENV_VARS: [&str; 12] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
];

/// POSIX shell quoting for the watchdog script and `su -c`: plain words stay
/// as they are, anything else is single-quoted.
pub(super) fn shell_quote(word: &[u8]) -> Vec<u8> {
    let plain = !word.is_empty()
        && word
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,+@%".contains(b));
    if plain {
        return word.to_vec();
    }
    let mut quoted = Vec::with_capacity(word.len() + 2);
    quoted.push(b'\'');
    for &b in word {
        if b == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(b);
        }
    }
    quoted.push(b'\'');
    quoted
}

fn shell_join<'a>(words: impl IntoIterator<Item = &'a OsStr>) -> Vec<u8> {
    let mut line = Vec::new();
    for word in words {
        if !line.is_empty() {
            line.push(b' ');
        }
        line.extend(shell_quote(word.as_bytes()));
    }
    line
}

/// Finds `name`'s uid and gid in /etc/passwd content.
fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Whether we run with euid 0. /proc/self is owned by the effective uid;
/// `id -u` covers systems without /proc.
pub(super) fn running_as_root() -> bool {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// How root hands a command to the unprivileged user.
#[derive(Debug, Clone)]
enum PrivDrop {
    Runuser(PathBuf),
    Su(PathBuf),
}

/// The user that owns and runs the server when we are root.
#[derive(Debug, Clone)]
pub(super) struct Unprivileged {
    pub(super) name: String,
    uid: u32,
    gid: u32,
    via: PrivDrop,
}

impl Unprivileged {
    pub(super) fn find() -> Result<Self, TestbedError> {
        let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("read /etc/passwd"))?;
        let (name, (uid, gid)) = ["postgres", "nobody"]
            .into_iter()
            .find_map(|name| passwd_ids(&passwd, name).map(|ids| (name, ids)))
            .ok_or(TestbedError::NoUnprivilegedUser)?;
        let via = if let Some(runuser) = find_program("runuser") {
            PrivDrop::Runuser(runuser)
        } else if let Some(su) = find_program("su") {
            PrivDrop::Su(su)
        } else {
            return Err(TestbedError::NoPrivilegeDrop {
                user: name.to_owned(),
            });
        };
        Ok(Self {
            name: name.to_owned(),
            uid,
            gid,
            via,
        })
    }
}

/// Builds the commands that touch the server, as the unprivileged user when
/// we are root.
#[derive(Debug, Clone)]
pub(super) struct Runner {
    pub(super) user: Option<Unprivileged>,
    /// Our temp dir: the caller's cwd may be unreadable for the server user,
    /// and initdb and postgres complain when they cannot resolve it.
    pub(super) cwd: PathBuf,
}

impl Runner {
    /// The program and arguments to execute `program args` as the right user.
    fn argv(&self, program: &Path, args: &[&OsStr]) -> (OsString, Vec<OsString>) {
        let direct = || args.iter().map(|a| a.to_os_string());
        match &self.user {
            None => (program.as_os_str().to_os_string(), direct().collect()),
            Some(user) => match &user.via {
                PrivDrop::Runuser(runuser) => {
                    let mut argv: Vec<OsString> =
                        vec!["-u".into(), user.name.clone().into(), "--".into()];
                    argv.push(program.as_os_str().to_os_string());
                    argv.extend(direct());
                    (runuser.as_os_str().to_os_string(), argv)
                }
                PrivDrop::Su(su) => {
                    // su hands one string to a shell, so quote every word;
                    // -s overrides a nologin shell (nobody's).
                    let inner = shell_join(
                        std::iter::once(program.as_os_str()).chain(args.iter().copied()),
                    );
                    let argv = vec![
                        user.name.clone().into(),
                        "-s".into(),
                        "/bin/sh".into(),
                        "-c".into(),
                        OsString::from_vec(inner),
                    ];
                    (su.as_os_str().to_os_string(), argv)
                }
            },
        }
    }

    pub(super) fn command(&self, program: &Path, args: &[&OsStr]) -> Command {
        let (program, args) = self.argv(program, args);
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(&self.cwd).stdin(Stdio::null());
        for var in LIBPQ_ENV_VARS {
            cmd.env_remove(var);
        }
        cmd
    }

    /// The same command as one shell line, for the watchdog script.
    pub(super) fn shell_line(&self, program: &Path, args: &[&OsStr]) -> Vec<u8> {
        let (program, args) = self.argv(program, args);
        shell_join(std::iter::once(program.as_os_str()).chain(args.iter().map(OsString::as_os_str)))
    }

    /// Runs a command to completion, capturing its output.
    pub(super) fn run(&self, program: &Path, args: &[&OsStr]) -> Result<Output, TestbedError> {
        self.command(program, args)
            .output()
            .map_err(|source| TestbedError::Spawn {
                program: program.display().to_string(),
                source,
            })
    }

    /// Gives `path` to the server user, so it can write there.
    pub(super) fn chown(&self, path: &Path) -> Result<(), TestbedError> {
        match &self.user {
            Some(user) => std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(io_err(format!("chown {} to {}", path.display(), user.name))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_users_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n\
                      broken:x:notanumber:1::/:/bin/sh\n";
        assert_eq!(passwd_ids(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_ids(passwd, "nobody"), Some((65534, 65534)));
        assert_eq!(passwd_ids(passwd, "post"), None);
        assert_eq!(passwd_ids(passwd, "broken"), None);
        assert_eq!(passwd_ids("", "root"), None);
    }

    #[test]
    fn shell_quotes_words() {
        assert_eq!(shell_quote(b"/usr/bin/pg_ctl"), b"/usr/bin/pg_ctl".to_vec());
        assert_eq!(shell_quote(b""), b"''".to_vec());
        assert_eq!(shell_quote(b"a b"), b"'a b'".to_vec());
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'".to_vec());
        assert_eq!(shell_quote(b"$HOME;rm"), b"'$HOME;rm'".to_vec());
        let line = shell_join([OsStr::new("echo"), OsStr::new("a'b c")]);
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(OsString::from_vec(line))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a'b c\n");
    }

    #[test]
    fn runner_wraps_commands_for_the_server_user() {
        let user = |via| Unprivileged {
            name: "postgres".to_owned(),
            uid: 101,
            gid: 104,
            via,
        };
        let args = [OsStr::new("-D"), OsStr::new("/tmp/x y")];
        let direct = Runner {
            user: None,
            cwd: PathBuf::from("/tmp"),
        };
        assert_eq!(
            direct.shell_line(Path::new("/bin/pg_ctl"), &args),
            b"/bin/pg_ctl -D '/tmp/x y'".to_vec()
        );
        let runuser = Runner {
            user: Some(user(PrivDrop::Runuser(PathBuf::from("/usr/sbin/runuser")))),
            cwd: PathBuf::from("/tmp"),
        };
        assert_eq!(
            runuser.shell_line(Path::new("/bin/pg_ctl"), &args),
            b"/usr/sbin/runuser -u postgres -- /bin/pg_ctl -D '/tmp/x y'".to_vec()
        );
        let su = Runner {
            user: Some(user(PrivDrop::Su(PathBuf::from("/bin/su")))),
            cwd: PathBuf::from("/tmp"),
        };
        assert_eq!(
            su.shell_line(Path::new("/bin/pg_ctl"), &args),
            b"/bin/su postgres -s /bin/sh -c '/bin/pg_ctl -D '\\''/tmp/x y'\\'''".to_vec()
        );
    }
}
