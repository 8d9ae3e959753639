//! Listening sockets handed from one image of ssqd to the next on `restart`: the old
//! image clears close-on-exec on duplicates of its listeners, names them in
//! `SSQD_LISTEN_FDS` (`portal=3,proxy=7,admin=8`) and re-executes itself (same PID);
//! the new image adopts them, so ports stay the same and connections that arrive in
//! between wait in the kernel's backlog instead of being refused.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

/// The environment variable naming inherited descriptors.
pub const ENV: &str = "SSQD_LISTEN_FDS";

/// Descriptors inherited from the previous image, by name.
#[derive(Debug, Default)]
pub struct Inherited {
    /// name → descriptor.
    fds: HashMap<String, OwnedFd>,
}

fn is_socket(fd: RawFd) -> bool {
    // SAFETY: fstat only writes into the zeroed struct we own; a bad fd returns -1.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    }
}

impl Inherited {
    /// Take the descriptors named in the environment (and clear the variable). Entries
    /// that are not open sockets are ignored.
    pub fn from_env() -> Self {
        let mut fds = HashMap::new();
        if let Ok(v) = std::env::var(ENV) {
            for part in v.split(',') {
                let Some((name, fd)) = part.split_once('=') else {
                    continue;
                };
                let Ok(fd) = fd.parse::<RawFd>() else {
                    continue;
                };
                if fd > 2 && is_socket(fd) {
                    // SAFETY: the previous image passed this descriptor to us for us
                    // alone; nothing else in this process owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    set_cloexec(&owned, true);
                    fds.insert(name.to_string(), owned);
                }
            }
            std::env::remove_var(ENV);
        }
        Inherited { fds }
    }

    /// Take one descriptor by name.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.fds.remove(name)
    }
}

fn set_cloexec(fd: &OwnedFd, on: bool) {
    // SAFETY: F_GETFD/F_SETFD on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags >= 0 {
            let flags = if on {
                flags | libc::FD_CLOEXEC
            } else {
                flags & !libc::FD_CLOEXEC
            };
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags);
        }
    }
}

/// Replace this process with a new image of the same binary and arguments, handing it
/// `fds`. Returns only on failure, with the error.
pub fn reexec(fds: &[(&str, &OwnedFd)]) -> std::io::Error {
    let mut spec = Vec::new();
    for (name, fd) in fds {
        set_cloexec(fd, false);
        spec.push(format!("{name}={}", fd.as_raw_fd()));
    }
    let exe = match executable() {
        Ok(p) => p,
        Err(e) => return e,
    };
    // ETXTBSY: the new binary is still open for writing somewhere (an installer that
    // has not closed it yet). Wait for it a little, up to 2 s.
    let mut tries = 0;
    let err = loop {
        let err = std::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env(ENV, spec.join(","))
            .exec();
        if err.raw_os_error() != Some(libc::ETXTBSY) || tries >= 100 {
            break err;
        }
        tries += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    for (_, fd) in fds {
        set_cloexec(fd, true);
    }
    err
}

/// The binary to re-execute: the path this process was started from. After an upgrade
/// replaced the file, Linux names the old inode `PATH (deleted)`; the new binary at PATH
/// is then the one to run. If PATH is gone altogether, the running image itself.
fn executable() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    if let Some(stripped) = text.strip_suffix(" (deleted)") {
        let path = std::path::PathBuf::from(stripped);
        if path.exists() {
            return Ok(path);
        }
        return Ok(std::path::PathBuf::from("/proc/self/exe"));
    }
    Ok(exe)
}
