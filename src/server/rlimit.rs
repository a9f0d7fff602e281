//! The open-files limit: raised at start from the soft limit to the hard one, because the soft default on many
//! distributions (1024) would silently cap herald at about 900 connections.

use std::io;

/// The open-files limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now in force (the hard limit, unless raising failed).
    pub now: u64,
    /// The hard limit.
    pub hard: u64,
}

fn get() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the valid, properly aligned rlimit we pass and reads nothing else.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 {
        Ok(lim)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a no-op when they are equal).
pub fn raise_open_files() -> io::Result<OpenFiles> {
    let lim = get()?;
    let before = lim.rlim_cur;
    let hard = lim.rlim_max;
    if before < hard {
        let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: setrlimit reads the valid rlimit we pass; raising the soft limit up to the hard one is always
        // permitted for an unprivileged process.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(OpenFiles { before, now: get()?.rlim_cur, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let first = raise_open_files().expect("raise");
        assert_eq!(first.now, first.hard);
        let again = raise_open_files().expect("raise again");
        assert_eq!(again.before, again.hard, "raising is idempotent");
    }
}
