//! The service manager's notification protocol (`sd_notify`): with `Type=notify`, systemd
//! holds back units ordered after autosquash until it says READY, and shows its STATUS. A
//! datagram to `$NOTIFY_SOCKET`; without that variable (started by hand, in a container, in
//! tests) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use tracing::debug;

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

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        // A leading '@' names an abstract socket.
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(message.as_bytes(), &addr)
    })();
    if let Err(e) = result {
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
