//! The unprivileged OS users the tests run database servers as: the tests run as root, and
//! PostgreSQL and MariaDB refuse to.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// An OS user a Debian server package created (`postgres`, `mysql`).
#[derive(Debug, Clone, Copy)]
pub struct OsUser {
    name: &'static str,
    uid: u32,
    gid: u32,
}

impl OsUser {
    /// Looks the user up; `package` names the Debian package that creates it, for the
    /// message when it is missing.
    pub fn named(name: &'static str, package: &str) -> Self {
        let id = |flag: &str| -> u32 {
            let output = Command::new("id")
                .args([flag, name])
                .output()
                .unwrap_or_else(|e| panic!("id {name}: {e}"));
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("the `{name}` OS user (Debian {package} package)"))
        };
        Self {
            name,
            uid: id("-u"),
            gid: id("-g"),
        }
    }

    /// `program` run as this user, from `/tmp`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .uid(self.uid)
            .gid(self.gid)
            .env("HOME", "/tmp")
            .current_dir("/tmp");
        command
    }

    /// Gives `path` to this user.
    pub fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.name));
    }
}
