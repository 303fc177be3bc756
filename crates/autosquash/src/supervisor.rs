//! `autosquash serve` without systemd (started by hand, in a container): a small parent
//! process that keeps the mounts' connections while the process serving them (its child,
//! the same program) may die, and starts a new one that takes them over (see autosquash-fs's
//! handover module).
//!
//! It plays systemd's part of the protocol and nothing more, so the daemon has one way of
//! handing on whoever holds its connections: the child finds the supervisor in
//! `$NOTIFY_SOCKET`, stores descriptors with `FDSTORE=1`/`FDNAME=` and drops them with
//! `FDSTOREREMOVE=1`; a successor gets them as `LISTEN_FDS`/`LISTEN_FDNAMES`. SIGTERM, SIGINT
//! and SIGHUP are passed to the child; the supervisor ends when the child ends by itself
//! (a stop, or an error at startup), and starts a new child when it was killed by a signal.
//!
//! Threads: one, polling (100 ms) for the child's end, a signal to pass on, and messages.
//! Under systemd (`$NOTIFY_SOCKET` set) there is no supervisor: systemd's own store holds the
//! descriptors and `Restart=on-failure` starts the successor.

use crate::notify::recv_with_fds;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Whether `serve` runs under a supervisor: as root (the mounts it makes itself can be handed
/// on), without a service manager, unless `AUTOSQUASH_SUPERVISOR=0`.
#[allow(unsafe_code)]
pub fn wanted() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root && !crate::notify::has_manager()
        && std::env::var_os("AUTOSQUASH_SUPERVISOR").is_none_or(|v| v != "0")
}

/// The last signal to pass on to the child (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    PENDING.store(signal, Ordering::Relaxed);
}

/// Runs the child until it ends by itself, starting it again when it is killed.
#[allow(unsafe_code)]
pub fn run() -> ExitCode {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    // A socket in a directory only root can enter (an abstract socket would take descriptors
    // from anyone on the machine and hand them to the next child as its mounts).
    let (_dir, socket) = match tempfile::Builder::new()
        .prefix("autosquash-supervisor.")
        .tempdir()
        .and_then(|dir| {
            let socket = UnixDatagram::bind(dir.path().join("notify"))?;
            Ok((dir, socket))
        }) {
        Ok(made) => made,
        Err(e) => {
            error!(error = %e, "cannot make the supervisor's socket");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = socket.set_read_timeout(Some(Duration::from_millis(100))) {
        error!(error = %e, "cannot make the supervisor's socket");
        return ExitCode::FAILURE;
    }
    let mut store: BTreeMap<String, Vec<OwnedFd>> = BTreeMap::new();
    let mut quick_deaths = 0u32;
    loop {
        let started = Instant::now();
        let path = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        let Some(path) = path else {
            error!("the supervisor's socket has no path");
            return ExitCode::FAILURE;
        };
        let mut child = match spawn(&path, &store) {
            Ok(child) => child,
            Err(e) => {
                error!(error = %e, "cannot start the serving process");
                return ExitCode::FAILURE;
            }
        };
        let status = loop {
            let signal = PENDING.swap(0, Ordering::Relaxed);
            if signal != 0 {
                // SAFETY: kill with the child's pid, which is not yet reaped.
                unsafe { libc::kill(child.id() as i32, signal) };
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => {
                    error!(error = %e, "cannot wait for the serving process");
                    return ExitCode::FAILURE;
                }
            }
            receive(&socket, &mut store);
        };
        // What it stored just before it died.
        while receive(&socket, &mut store) {}
        let Some(signal) = status.signal() else {
            // It ended by itself: a stop or a startup error; its code is ours.
            let code = status.code().unwrap_or(1);
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        };
        quick_deaths = match started.elapsed() < Duration::from_secs(10) {
            true => quick_deaths + 1,
            false => 0,
        };
        // At once the first time (readers are waiting), then backing off from one that dies
        // again and again.
        let delay = match quick_deaths {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(100) * 2u32.pow((n - 2).min(6)),
        };
        warn!(
            signal,
            kept = store.len(),
            restart_in = ?delay,
            "the serving process was killed; starting a new one on the kept connections"
        );
        std::thread::sleep(delay);
        info!("starting the serving process again");
    }
}

/// Takes one message from the child, if one comes within the socket's timeout.
fn receive(socket: &UnixDatagram, store: &mut BTreeMap<String, Vec<OwnedFd>>) -> bool {
    let Ok((message, fds)) = recv_with_fds(socket) else {
        return false;
    };
    let text = String::from_utf8_lossy(&message);
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("FDNAME="))
        .unwrap_or("stored")
        .to_owned();
    if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
        store.remove(&name);
    }
    if text.lines().any(|l| l == "FDSTORE=1") && !fds.is_empty() {
        store.entry(name).or_default().extend(fds);
    }
    true
}

/// Starts the serving process: this program with the same arguments, the supervisor in
/// `$NOTIFY_SOCKET`, the stored descriptors from 3 on. It dies with the supervisor.
#[allow(unsafe_code)]
fn spawn(socket: &Path, store: &BTreeMap<String, Vec<OwnedFd>>) -> std::io::Result<Child> {
    // After a package upgrade the running program's file is gone ("... (deleted)"): the new
    // one at the same path is started.
    let exe = std::env::current_exe()?;
    let exe = match exe.to_str().and_then(|e| e.strip_suffix(" (deleted)")) {
        Some(path) => std::path::PathBuf::from(path),
        None => exe,
    };
    let mut names = Vec::new();
    let mut raw = Vec::new();
    for (name, fds) in store {
        for fd in fds {
            names.push(name.as_str());
            raw.push(fd.as_raw_fd());
        }
    }
    let mut command = Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env("NOTIFY_SOCKET", socket);
    if !raw.is_empty() {
        command
            .env("LISTEN_FDS", raw.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
    }
    // Made here: nothing may allocate between fork and exec.
    let mut high: Vec<i32> = Vec::with_capacity(raw.len());
    // SAFETY: only async-signal-safe calls between fork and exec: prctl, fcntl, dup2, close.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let first_free = 3 + raw.len() as i32;
            // Copies above the targets first, so no target overwrites a source.
            high.clear();
            for &fd in &raw {
                let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, first_free);
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(copy);
            }
            for (i, &copy) in high.iter().enumerate() {
                if libc::dup2(copy, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(copy);
            }
            Ok(())
        });
    }
    crate::signals::hold_for(&mut command);
    command.spawn()
}
