//! The C library's process calls that std does not wrap: a child that dies with the
//! process that started it (Linux `prctl(PR_SET_PDEATHSIG)`), and a socket handed down to
//! a child (`fcntl`, clearing close-on-exec).
use std::os::raw::{c_int, c_ulong};
use std::os::unix::process::CommandExt;
use std::process::Command;

extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
}

const F_GETFD: c_int = 1;
const F_SETFD: c_int = 2;
const FD_CLOEXEC: c_int = 1;

const PR_SET_PDEATHSIG: c_int = 1;
const SIGKILL: c_ulong = 9;
const ESRCH: i32 = 3;

/// Make the process that `cmd` starts receive SIGKILL when this process ends, however it
/// ends (a `--gpus` parent killed by SIGKILL takes its workers with it). The signal
/// follows the thread that spawns the child: spawn from a thread that lives as long as
/// the child should. A child whose parent is already gone when the hook runs does not
/// start (the spawn fails with ESRCH).
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the hook runs in the forked child before exec and only makes two system
    // calls (prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if std::os::unix::process::parent_id() != parent {
                return Err(std::io::Error::from_raw_os_error(ESRCH));
            }
            Ok(())
        });
    }
}

/// Let the process that `cmd` starts inherit file descriptor `fd` of this process (std
/// opens every file and socket close-on-exec): the child's copy has the flag cleared.
/// The caller keeps `fd` open until the child is spawned.
pub fn inherit_fd(cmd: &mut Command, fd: c_int) {
    // SAFETY: the hook runs in the forked child before exec and makes two fcntl calls on
    // the child's own copy of the descriptor table; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let flags = fcntl(fd, F_GETFD);
            if flags < 0 || fcntl(fd, F_SETFD, flags & !FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
