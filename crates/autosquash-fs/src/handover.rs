//! Keeping a mount alive across the death of the process that serves it.
//!
//! A FUSE mount lives as long as some process holds its `/dev/fuse` connection open. The
//! daemon gives a copy of each mount's connection, with a log of what the kernel may still
//! reference (its [`StateLog`]), to a *holder*: systemd's file descriptor store, or the
//! daemon's own supervisor process where there is no systemd (see the autosquash crate). When
//! the serving process dies the kernel keeps the mount and queues its requests (readers wait
//! instead of failing); the next process takes the connection over ([`takeover`]), reopens
//! what the log names, and asks the kernel to send again the requests the dead one had read
//! but not answered ([`resend`], `FUSE_NOTIFY_RESEND`, Linux 6.9).
//!
//! Every FUSE thread reads the one connection (no cloned fds): requests read through a
//! cloned fd are failed by the kernel when that fd closes with its process, while those read
//! through a file the holder keeps open stay queued for the resend.
//!
//! fuser's `Session::from_fd` insists on a handshake (FUSE_INIT), which a taken-over
//! connection has had already. Instead of patching fuser, [`takeover`] lets it handshake
//! over a socket pair fed one made-up INIT, then puts the real connection in the socket's
//! place with `dup3`, so the session reads the kernel from then on.

use fuser::{Config, Filesystem, Session, SessionACL};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

/// Opens `/dev/fuse` and mounts it at `mountpoint` read-only, nosuid, nodev, with kernel
/// permission checks, through mount(2) (root only): the connection is then ours to hand on,
/// which fusermount3's is too, but a mount made here needs no helper to be taken off.
#[allow(unsafe_code)]
pub fn mount(mountpoint: &Path, fsname: &str, allow_other: bool) -> std::io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd = OwnedFd::from(dev);
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        // SAFETY: getuid and getgid cannot fail.
        unsafe { libc::getuid() },
        unsafe { libc::getgid() },
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let c = |s: &[u8]| CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL));
    let source = c(format!("autosquash:{fsname}").as_bytes())?;
    let target = c(mountpoint.as_os_str().as_bytes())?;
    let fstype = c(b"fuse.autosquash")?;
    let data = c(data.as_bytes())?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// A session over `connection`, a `/dev/fuse` connection another process initialized and
/// served (see the module's comment for how fuser's handshake is satisfied).
#[allow(unsafe_code)]
pub fn takeover<FS: Filesystem>(
    fs: FS,
    connection: OwnedFd,
    acl: SessionACL,
    config: Config,
) -> std::io::Result<Session<FS>> {
    let (ours, theirs) = socket_pair()?;
    theirs.send(&made_up_init())?;
    let session = Session::from_fd(fs, ours, acl, config)?;
    // The handshake read the made-up INIT from the socket (and answered it there). Now the
    // session's descriptor becomes the connection itself.
    let fd = session.as_fd().as_raw_fd();
    // SAFETY: both descriptors are open; dup3 atomically replaces `fd` (the socket, closed by
    // it) with a copy of the connection, and the session keeps owning `fd`.
    if unsafe { libc::dup3(connection.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(theirs);
    Ok(session)
}

/// A connected SOCK_SEQPACKET pair: one message per read, as from `/dev/fuse`.
#[allow(unsafe_code)]
fn socket_pair() -> std::io::Result<(OwnedFd, UnixDatagram)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socketpair returned two new descriptors that nothing else owns.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((a, UnixDatagram::from(b)))
}

/// FUSE_INIT as the kernel sends it: a 40-byte request header and the 64-byte fuse_init_in of
/// protocol 7.45, with only FUSE_INIT_EXT set (what fuser answers goes nowhere).
fn made_up_init() -> Vec<u8> {
    const FUSE_INIT: u32 = 26;
    const FUSE_INIT_EXT: u32 = 1 << 30;
    let mut m = Vec::with_capacity(104);
    m.extend(104u32.to_le_bytes()); // len
    m.extend(FUSE_INIT.to_le_bytes()); // opcode
    m.extend(1u64.to_le_bytes()); // unique
    m.extend(0u64.to_le_bytes()); // nodeid
    m.extend([0u8; 16]); // uid, gid, pid, total_extlen + padding
    m.extend(7u32.to_le_bytes()); // major
    m.extend(45u32.to_le_bytes()); // minor
    m.extend((1u32 << 20).to_le_bytes()); // max_readahead
    m.extend(FUSE_INIT_EXT.to_le_bytes()); // flags
    m.extend([0u8; 48]); // flags2, unused
    m
}

/// Asks the kernel to queue again every request of `connection` that was read but not
/// answered (a dead server's), so the waiting callers get their answers from the new one.
pub fn resend(connection: BorrowedFd<'_>) -> std::io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut m = Vec::with_capacity(16);
    m.extend(16u32.to_le_bytes());
    m.extend(FUSE_NOTIFY_RESEND.to_le_bytes());
    m.extend(0u64.to_le_bytes());
    let file = File::from(connection.try_clone_to_owned()?);
    (&file).write_all(&m)
}

/// What a mount's successor must know to answer the kernel's references: an append-only log
/// of lines in a memfd, which the holder keeps with the connection. Appends are single
/// `write`s of whole lines; a line cut short by a crash is ignored on reading.
pub struct StateLog {
    file: Mutex<File>,
}

impl StateLog {
    /// A new, empty log.
    #[allow(unsafe_code)]
    pub fn create(name: &str) -> std::io::Result<Self> {
        let name = CString::new(format!("autosquash-state:{name}"))
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// A log a predecessor wrote, and its complete lines.
    pub fn adopt(fd: OwnedFd) -> std::io::Result<(Self, Vec<String>)> {
        let mut file = File::from(fd);
        file.seek(SeekFrom::Start(0))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Later appends go after the last complete line, over a torn one.
        file.set_len(complete as u64)?;
        file.seek(SeekFrom::End(0))?;
        let lines = String::from_utf8_lossy(&bytes[..complete])
            .lines()
            .map(str::to_owned)
            .collect();
        Ok((
            Self {
                file: Mutex::new(file),
            },
            lines,
        ))
    }

    /// Appends one line (without its newline).
    pub fn append(&self, line: &str) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&bytes)
    }

    /// Replaces the whole log with `lines` (compaction).
    pub fn rewrite(&self, lines: &[String]) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&bytes)
    }

    /// A descriptor of the log for the holder.
    pub fn fd(&self) -> std::io::Result<OwnedFd> {
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.as_fd().try_clone_to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_log_survives_its_writer_and_drops_a_torn_line() {
        let log = StateLog::create("test").unwrap();
        log.append("one").unwrap();
        log.append("two").unwrap();
        let fd = log.fd().unwrap();
        // A crash in the middle of a line.
        File::from(log.fd().unwrap()).write_all(b"thr").unwrap();
        drop(log);
        let (log, lines) = StateLog::adopt(fd).unwrap();
        assert_eq!(lines, ["one", "two"]);
        log.append("four").unwrap();
        let (_, lines) = StateLog::adopt(log.fd().unwrap()).unwrap();
        assert_eq!(lines, ["one", "two", "four"]);
        log.rewrite(&["five".to_owned()]).unwrap();
        let (_, lines) = StateLog::adopt(log.fd().unwrap()).unwrap();
        assert_eq!(lines, ["five"]);
    }

    #[test]
    fn the_made_up_init_is_as_long_as_it_says() {
        let m = made_up_init();
        assert_eq!(m.len(), 104);
        assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), 104);
    }
}
