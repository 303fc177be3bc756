//! The signals that stop (SIGTERM, SIGINT) and reload (SIGHUP) the daemon, held across the
//! start of a successor: a program that replaces the daemon (an upgrade's exec, the
//! supervisor's restart after a crash) starts with them blocked, so one that arrives while
//! it takes the mounts over waits for it instead of killing it with the default action (a
//! stop sent right after an upgrade was taken for a crash, and lost). The daemon releases
//! them once its handlers are installed; the kernel then delivers what is pending.

use std::os::unix::process::CommandExt;
use std::process::Command;

const HELD: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

#[allow(unsafe_code)]
fn held_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset only writes into it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for signal in HELD {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Makes `command`'s program start with the signals blocked (std empties the signal mask
/// before exec; this runs after that, last before exec).
#[allow(unsafe_code)]
pub fn hold_for(command: &mut Command) {
    let set = held_set();
    // SAFETY: sigprocmask is async-signal-safe, and `set` was made before the fork.
    unsafe {
        command.pre_exec(move || {
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Unblocks the signals in the calling thread, the one whose handlers now wait for them (a
/// no-op for a program started normally). Threads started while they were blocked keep
/// them blocked: a pending signal goes to this thread.
#[allow(unsafe_code)]
pub fn release() {
    let set = held_set();
    // SAFETY: a valid set; pthread_sigmask changes this thread's mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}
