//! The service manager's notification protocol (`sd_notify`): with `Type=notify`, systemd
//! holds back units ordered after autosquash until it says READY, and shows its STATUS. A
//! datagram to `$NOTIFY_SOCKET`; without that variable (started by hand, in a container, in
//! tests) every call does nothing. The manager also keeps file descriptors for the process
//! that follows (`FDSTORE=1`, passed back as `LISTEN_FDS`): see autosquash-fs's handover
//! module and the supervisor, which speaks the same protocol where systemd does not.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use tracing::{debug, warn};

/// Every mount answers.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// A reload began (`READY` again ends it). `MONOTONIC_USEC` lets systemd match the two.
pub fn reloading() {
    let now = monotonic_usec();
    send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}

/// What the daemon is doing, for `systemctl status`.
pub fn status(status: &str) {
    send(&format!("STATUS={status}"));
}

pub fn stopping() {
    send("STOPPING=1");
}

/// Whether a service manager (systemd, or autosquash's own supervisor) listens: it then
/// also keeps file descriptors for a successor.
pub fn has_manager() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Whether systemd is restarting this service (`systemctl restart`, `try-restart`,
/// `reload-or-restart`: a job of type "restart" runs on its unit) and keeps at least `fds`
/// descriptors in its store, asked when SIGTERM comes. systemd keeps the unit's store across
/// a restart (a stop releases it), so the mounts can be handed to the next process instead
/// of unmounted. False when not started by systemd, and when systemd cannot be asked within
/// 2 s: the mounts are then unmounted, as on a stop.
pub fn restart_keeps(fds: usize) -> bool {
    if std::env::var_os("INVOCATION_ID").is_none() {
        return false;
    }
    let Some(unit) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| own_unit(&c))
    else {
        return false;
    };
    let ask = |args: &[&str]| {
        let mut command = std::process::Command::new("systemctl");
        command.args(args).arg(&unit);
        run_with_timeout(&mut command, std::time::Duration::from_secs(2))
    };
    let answers = ask(&[
        "list-jobs",
        "--no-legend",
        "--plain",
        "--full",
        "--no-pager",
    ])
    .and_then(|jobs| {
        Ok((
            jobs,
            ask(&["show", "--value", "--property=NFileDescriptorStore"])?,
        ))
    });
    match answers {
        Ok((jobs, stored)) => {
            let stored: usize = stored.trim().parse().unwrap_or(0);
            let restart = restarting(&jobs, &unit);
            debug!(
                unit,
                restart, stored, "asked systemd whether it restarts this service"
            );
            restart && stored >= fds
        }
        Err(e) => {
            warn!(unit, error = %e, "cannot ask systemd whether it restarts this service; stopping");
            false
        }
    }
}

/// The service unit a process runs in, from its /proc/PID/cgroup (the unified hierarchy's
/// line, else systemd's named one).
fn own_unit(cgroup: &str) -> Option<String> {
    let unified = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| *p != "/");
    let path = unified.or_else(|| {
        cgroup
            .lines()
            .find_map(|l| l.split_once(":name=systemd:").map(|(_, p)| p))
    })?;
    path.rsplit('/')
        .find(|c| c.ends_with(".service"))
        .map(str::to_owned)
}

/// Whether `systemctl list-jobs` output names a restart job of `unit`.
fn restarting(jobs: &str, unit: &str) -> bool {
    jobs.lines().any(|l| {
        let mut fields = l.split_whitespace().skip(1);
        fields.next() == Some(unit) && fields.next() == Some("restart")
    })
}

/// Runs `command` and returns its standard output, killing it after `timeout`.
fn run_with_timeout(
    command: &mut std::process::Command,
    timeout: std::time::Duration,
) -> std::io::Result<String> {
    use std::io::Read;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                stdout.read_to_string(&mut out)?;
            }
            return if status.success() {
                Ok(out)
            } else {
                Err(std::io::Error::other(format!("{status}")))
            };
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Gives `fds` to the service manager's file descriptor store under `name` (replacing what
/// was stored under it), for the process that follows this one.
pub fn store_fds(name: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    remove_fds(name);
    let socket = manager_socket()?;
    send_with_fds(&socket, format!("FDSTORE=1\nFDNAME={name}").as_bytes(), fds)
}

/// Drops what the store keeps under `name`.
pub fn remove_fds(name: &str) {
    send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
}

/// The descriptors the service manager passed on (`LISTEN_FDS`, `LISTEN_FDNAMES`, from 3 on),
/// by name; taken once (the variables are removed, so no child inherits them).
#[allow(unsafe_code)]
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY of remove_var: called at startup, before the runtime's threads read the
    // environment.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !for_us || count <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    (0..count.min(1024))
        .map(|i| {
            let fd = 3 + i;
            // SAFETY: the manager passed descriptors 3..3+LISTEN_FDS to this process; each is
            // taken once, here.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            let name = names.next().unwrap_or("unknown").to_owned();
            (name, unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}

fn manager_socket() -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let path = std::env::var_os("NOTIFY_SOCKET")
        .ok_or_else(|| std::io::Error::other("no service manager (NOTIFY_SOCKET)"))?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    // A leading '@' names an abstract socket.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.connect_addr(&addr)?;
    Ok((socket, addr))
}

/// One datagram with `fds` attached (SCM_RIGHTS), on a connected socket.
#[allow(unsafe_code)]
pub fn send_with_fds(
    (socket, _): &(UnixDatagram, SocketAddr),
    message: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let data_len = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header and `raw` (CMSG_SPACE).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                data_len,
            );
        }
    }
    // SAFETY: msg describes valid buffers for the duration of the call.
    if unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram and the descriptors attached to it.
#[allow(unsafe_code)]
pub fn recv_with_fds(socket: &UnixDatagram) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((253 * 4) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg describes valid, writable buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of control messages;
    // every SCM_RIGHTS descriptor is new and owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(cmsg);
                for i in 0..len / 4 {
                    let mut fd = 0i32;
                    std::ptr::copy_nonoverlapping(data.add(i * 4), (&raw mut fd).cast::<u8>(), 4);
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((buf, fds))
}

fn send(message: &str) {
    let result = manager_socket().and_then(|s| send_with_fds(&s, message.as_bytes(), &[]));
    if let Err(e) = result
        && has_manager()
    {
        debug!(error = %e, "cannot notify the service manager");
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd compares it.
fn monotonic_usec() -> u128 {
    // std's Instant is CLOCK_MONOTONIC on Linux, but has no absolute value; /proc/uptime is
    // CLOCK_BOOTTIME. Read the clock itself.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    monotonic(&mut ts);
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u128::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

#[allow(unsafe_code)]
fn monotonic(ts: &mut libc::timespec) {
    // SAFETY: a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, ts) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_unit_and_its_restart_job_are_read_as_systemd_252_writes_them() {
        let hybrid = "13:hugetlb:/\n9:name=systemd:/system.slice/autosquash.service\n\
                      4:memory:/system.slice/autosquash.service\n0::/system.slice/autosquash.service\n";
        assert_eq!(own_unit(hybrid).as_deref(), Some("autosquash.service"));
        let legacy = "4:memory:/x\n1:name=systemd:/system.slice/autosquash.service\n0::/\n";
        assert_eq!(own_unit(legacy).as_deref(), Some("autosquash.service"));
        assert_eq!(own_unit("0::/user.slice/session-1.scope\n"), None);
        let unit = "autosquash.service";
        assert!(restarting("457 autosquash.service restart running\n", unit));
        assert!(!restarting("509 autosquash.service stop running\n", unit));
        assert!(!restarting("", unit));
        assert!(!restarting("12 other.service restart running\n", unit));
    }

    #[test]
    fn messages_reach_the_socket_named_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY of set_var: this is the only test of the crate that touches NOTIFY_SOCKET.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("NOTIFY_SOCKET", &path)
        };
        ready("serving 2 mounts");
        reloading();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving 2 mounts");
        let n = listener.recv(&mut buf).unwrap();
        let reload = std::str::from_utf8(&buf[..n]).unwrap();
        let usec: u128 = reload
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
    }
}
