//! Attacks on the mount: writes of every kind, a setuid-root binary, a device node, a
//! root-only file, object keys built to escape or confuse the root, and the secret key in logs
//! at the most verbose level. Setuid and device checks run on the kernel's own squashfs mount
//! of the same image too, where they must succeed: the checks can fail.

// Raw syscalls (mknod, chown, truncate) whose errno is the point of the checks.
#![allow(unsafe_code)]

use crate::common::{KernelMount, open_tempdir, sh};
use crate::load::errno_name;
use crate::setup::{self, PREFIX};
use crate::{Outcome, Scale};
use autosquash_testkit::corpus::mksquashfs;
use autosquash_testkit::garage::{Garage, KEY_ID, REGION, SECRET};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn as_nobody(cmd: &str) -> (bool, String, String) {
    sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '{cmd}'"
    ))
}

fn build_image(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("tree");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy("/usr/bin/id", src.join("id")).unwrap();
    std::fs::set_permissions(src.join("id"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(src.join("secret"), "root only\n").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(src.join("public"), "everyone\n").unwrap();
    std::fs::set_permissions(src.join("public"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let null = CString::new(src.join("null").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path; creates /dev/null's twin (char 1:3).
    let rc = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = dir.join("sec.squash");
    mksquashfs(&src, &image, &["-comp", "zstd"]);
    image
}

/// Uploads under a key given verbatim (percent-encoded as needed), `..` segments included.
fn put_raw(garage: &Garage, encoded_key: &str, file: &Path) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "--path-as-is",
            "--aws-sigv4",
            &format!("aws:amz:{REGION}:s3"),
        ])
        .args(["--user", &format!("{KEY_ID}:{SECRET}")])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-T"])
        .arg(file)
        .arg(format!(
            "{}/{}/{encoded_key}",
            garage.endpoint, garage.bucket
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "put {encoded_key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ls -a` of a directory, one escaped name per line.
fn raw_listing(dir: &Path) -> Vec<String> {
    let (ok, out, err) = sh(&format!(
        "ls -a1 --quoting-style=escape '{}'",
        dir.display()
    ));
    assert!(ok, "ls {}: {err}", dir.display());
    out.lines().map(String::from).collect()
}

fn errno_of(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "succeeded".into(),
        Err(e) => errno_name(&e),
    }
}

fn libc_errno(rc: i32) -> String {
    if rc == 0 {
        "succeeded".into()
    } else {
        errno_name(&std::io::Error::last_os_error())
    }
}

pub fn run(_scale: Scale, out: &mut Outcome) {
    let work = open_tempdir();
    let image = build_image(work.path());
    let garage = setup::garage("security");
    garage.put(&format!("{PREFIX}sec.squash"), &image);
    let hostile_keys = [
        "autosquash/../escape.squash",
        "autosquash/..squash",
        "autosquash/...squash",
        "autosquash/.squash",
        "autosquash/sub/nested.squash",
        "autosquash//double.squash",
        "autosquash/new%0Aline.squash",
        "autosquash/tab%09.squash",
        "autosquash/esc%1B%5B31m.squash",
        "autosquash/del%7F.squash",
    ];
    for key in hostile_keys {
        put_raw(&garage, key, &image);
    }
    let served = setup::serve_s3_with_env(
        &garage,
        &garage.endpoint,
        &["--allow-other"],
        &[("AUTOSQUASH_LOG", "trace".into())],
    );
    let mnt = &served.mnt;
    let p = |name: &str| mnt.join("sec").join(name);

    // Every kind of write answers EROFS.
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let writes: Vec<(&str, String)> = vec![
        (
            "create a file",
            errno_of(std::fs::File::create(p("new")).map(drop)),
        ),
        (
            "open for writing",
            errno_of(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p("public"))
                    .map(drop),
            ),
        ),
        (
            "chmod",
            errno_of(std::fs::set_permissions(
                p("public"),
                std::fs::Permissions::from_mode(0o777),
            )),
        ),
        // SAFETY: valid paths.
        (
            "chown",
            libc_errno(unsafe { libc::chown(c(&p("public")).as_ptr(), 1, 1) }),
        ),
        (
            "truncate",
            libc_errno(unsafe { libc::truncate(c(&p("public")).as_ptr(), 0) }),
        ),
        ("unlink", errno_of(std::fs::remove_file(p("public")))),
        ("rename", errno_of(std::fs::rename(p("public"), p("moved")))),
        (
            "mknod (fifo)",
            libc_errno(unsafe { libc::mknod(c(&p("fifo")).as_ptr(), libc::S_IFIFO | 0o644, 0) }),
        ),
        (
            "mknod (device)",
            libc_errno(unsafe {
                libc::mknod(
                    c(&p("dev")).as_ptr(),
                    libc::S_IFCHR | 0o644,
                    libc::makedev(1, 3),
                )
            }),
        ),
        ("mkdir", errno_of(std::fs::create_dir(p("dir")))),
        (
            "mkdir at the root",
            errno_of(std::fs::create_dir(mnt.join("newimage"))),
        ),
        (
            "rmdir of an image",
            errno_of(std::fs::remove_dir(mnt.join("sec"))),
        ),
        (
            "symlink",
            errno_of(std::os::unix::fs::symlink("public", p("link"))),
        ),
        (
            "hard link",
            errno_of(std::fs::hard_link(p("public"), p("hard"))),
        ),
        (
            "setxattr",
            errno_of(xattr::set(p("public"), "user.x", b"1")),
        ),
        (
            "removexattr",
            errno_of(xattr::remove(p("public"), "user.x")),
        ),
    ];
    let bad: Vec<_> = writes.iter().filter(|(_, e)| e != "EROFS").collect();
    out.figure(
        "write operations tried",
        writes
            .iter()
            .map(|(w, e)| format!("{w}: {e}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.check(
        bad.is_empty(),
        format!("every write answers EROFS (not: {bad:?})"),
    );

    // Setuid and devices: refused here, honoured by the kernel's mount of the same image.
    let kernel = KernelMount::new(&image, &work.path().join("kernel"));
    let euid = |dir: &Path| {
        as_nobody(&format!("{}/id -u", dir.display()))
            .1
            .trim()
            .to_string()
    };
    let (ours, theirs) = (euid(&mnt.join("sec")), euid(&kernel.0));
    out.figure(
        "effective uid of the setuid-root `id` run by nobody",
        format!("{ours} (kernel squashfs with suid: {theirs})"),
    );
    out.check(ours == "65534", "a setuid binary gains nothing");
    out.check(
        theirs == "0",
        "control: the same binary gains root on a suid mount",
    );
    let open_dev = |p: &Path| errno_of(std::fs::File::open(p).map(drop));
    let (ours, theirs) = (open_dev(&p("null")), open_dev(&kernel.0.join("null")));
    out.figure(
        "opening a char device from the image",
        format!("{ours} (kernel squashfs with dev: {theirs})"),
    );
    out.check(ours == "EACCES", "device nodes cannot be opened");
    out.check(theirs == "succeeded", "control: it opens on a dev mount");
    drop(kernel);

    // Modes of the image are enforced for other users.
    let (secret_ok, _, secret_err) = as_nobody(&format!("cat {}", p("secret").display()));
    let (public_ok, public, _) = as_nobody(&format!("cat {}", p("public").display()));
    let root_reads = std::fs::read_to_string(p("secret")).is_ok_and(|s| s == "root only\n");
    out.figure(
        "nobody reading a 0600 root file / a 0644 file",
        format!(
            "{} / {}",
            secret_err.trim(),
            if public_ok { "read" } else { "refused" }
        ),
    );
    out.check(
        !secret_ok && secret_err.contains("Permission denied"),
        "nobody cannot read a 0600 root file",
    );
    out.check(
        public_ok && public == "everyone\n",
        "control: nobody reads a public file",
    );
    out.check(root_reads, "root reads the 0600 file");

    // Keys built to escape or confuse: the root shows usable names only.
    let listing = raw_listing(mnt);
    out.figure("object keys planted", hostile_keys.join("  "));
    out.figure("root listing (ls -a)", listing.join("  "));
    let shown: Vec<_> = listing.iter().filter(|n| *n != "." && *n != "..").collect();
    let usable =
        |n: &str| !n.contains('\\') && !n.contains('/') && n != "." && n != ".." && !n.is_empty();
    out.check(
        shown.iter().all(|n| usable(n)),
        format!("no control characters, slashes, `.` or `..` among the images: {shown:?}"),
    );
    out.check(
        shown.iter().any(|n| *n == "sec"),
        "the good image is listed",
    );
    for probe in ["..", ".", "new\nline", "sub", "esc\x1b[31m"] {
        let r = std::fs::symlink_metadata(mnt.join(probe).join("public"));
        out.check(
            r.is_err(),
            format!("{probe:?}/public does not resolve into an image"),
        );
    }
    let escaped = std::fs::symlink_metadata(mnt.join("../escape")).is_ok()
        || std::fs::symlink_metadata(mnt.parent().unwrap().join("escape")).is_ok();
    out.check(!escaped, "nothing appears outside the mountpoint");

    // The object view of the same bucket: `..` and empty segments are not entries.
    let objects = work.path().join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let mut env = garage.env();
    env.push(("AUTOSQUASH_LOG", "trace".into()));
    let view = crate::common::Daemon::start_with_env(
        format!("s3://{}/", garage.bucket),
        &objects,
        &[
            "--endpoint-url",
            &garage.endpoint,
            "--force-path-style",
            "--view",
            "objects",
        ],
        &env,
    );
    let top = raw_listing(&objects);
    let inner = raw_listing(&objects.join("autosquash"));
    out.figure("object view: bucket root (ls -a)", top.join("  "));
    out.figure("object view: autosquash/ (ls -a)", inner.join("  "));
    let dots = |l: &[String]| l.iter().filter(|n| *n == "." || *n == "..").count();
    out.check(
        dots(&top) == 2 && dots(&inner) == 2,
        "no extra `.` or `..` entries in the object view",
    );
    out.check(
        top.iter().all(|n| !n.contains('/')) && inner.iter().all(|n| !n.contains('/')),
        "no slashes in object view names",
    );
    let sec_bytes = std::fs::read(objects.join("autosquash/sec.squash")).ok();
    out.check(
        sec_bytes == Some(std::fs::read(&image).unwrap()),
        "object view serves the image's bytes",
    );

    // The secret never reaches a log, even at trace level with the SDK's own logging.
    let (ok, _, cli_log) = sh(&format!(
        "AUTOSQUASH_LOG=trace AWS_ACCESS_KEY_ID={KEY_ID} AWS_SECRET_ACCESS_KEY={SECRET} AWS_REGION={REGION} \
         AWS_EC2_METADATA_DISABLED=true {} ls s3://{}/{PREFIX} --endpoint-url {} --force-path-style",
        env!("CARGO_BIN_EXE_autosquash"),
        garage.bucket,
        garage.endpoint
    ));
    let logs = [served.daemon.log_text(), view.log_text(), cli_log];
    let lines: usize = logs.iter().map(|l| l.lines().count()).sum();
    out.figure(
        "log lines searched (daemon, object view, CLI; all at trace)",
        lines,
    );
    out.check(ok, "the CLI listed the bucket");
    out.check(lines > 100, "trace logging was on");
    out.check(
        logs.iter()
            .all(|l| !l.contains(SECRET) && !l.contains(&SECRET[..16])),
        "the secret key appears in no log",
    );
}
