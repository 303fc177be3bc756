//! Day-to-day operation against a real S3 server: one daemon serving the image root and the
//! plain object view from a config file, and `autosquash status` describing it.

mod common;

use autosquash_testkit::corpus::{mksquashfs, pseudo_random_bytes};
use autosquash_testkit::garage::Garage;
use common::{is_mounted, open_tempdir, wait_for};
use std::process::Command;
use std::time::Duration;

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn a_config_file_serves_images_and_objects_and_status_reports_them() {
    let garage = Garage::start("training");
    let dir = open_tempdir();
    let work = dir.path();
    // A reference genome as a plain object, and an image.
    let genome = pseudo_random_bytes(11, 20 << 20);
    std::fs::write(work.join("ref.fa"), &genome).unwrap();
    garage.put("overlay/home/training/course/ref.fa", &work.join("ref.fa"));
    let src = work.join("tree");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "hello\n").unwrap();
    mksquashfs(&src, &work.join("tools.squash"), &[]);
    garage.put("autosquash/tools.squash", &work.join("tools.squash"));

    let (images, objects) = (work.join("autosquash"), work.join("s3fs"));
    std::fs::create_dir(&images).unwrap();
    std::fs::create_dir(&objects).unwrap();
    let socket = work.join("control.sock");
    let config = work.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 1
[daemon]
memory_limit = "128M"
control_socket = "{socket}"
cache_dir = "{cache}"
[s3]
endpoint_url = "{endpoint}"
force_path_style = true
[[mount]]
source = "s3://training/autosquash/"
mountpoint = "{images}"
[[mount]]
source = "s3://training/"
mountpoint = "{objects}"
view = "objects"
"#,
            socket = socket.display(),
            cache = work.join("cache").display(),
            endpoint = garage.endpoint,
            images = images.display(),
            objects = objects.display(),
        ),
    )
    .unwrap();
    let log = work.join("daemon.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .envs(garage.env())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), "both mounts", || {
        is_mounted(&images) && is_mounted(&objects)
    });

    // The object view: directories from the keys, the large file byte for byte.
    let course = objects.join("overlay/home/training/course");
    let names: Vec<_> = std::fs::read_dir(&course)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ref.fa"]);
    assert_eq!(
        std::fs::metadata(course.join("ref.fa")).unwrap().len(),
        genome.len() as u64
    );
    assert!(
        std::fs::read(course.join("ref.fa")).unwrap() == genome,
        "object view bytes differ"
    );
    assert!(
        std::fs::write(course.join("x"), b"x").is_err(),
        "object view is writable"
    );
    // The image root, from the same daemon.
    assert_eq!(
        std::fs::read_to_string(images.join("tools/hello.txt")).unwrap(),
        "hello\n"
    );

    // Status while a file is open.
    let open = std::fs::File::open(images.join("tools/hello.txt")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args([
            "status",
            "--json",
            "--control-socket",
            socket.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mounts = doc["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 2);
    let root = &mounts[0];
    assert_eq!(root["kind"], "images");
    let image = &root["images_mounted"][0];
    assert_eq!(image["name"], "tools");
    assert!(
        image["kernel_refs"].as_u64().unwrap() >= 1,
        "an open file holds a reference"
    );
    assert_eq!(doc["panics"], 0);
    assert!(image["etag"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(root["store"]["requests"].as_u64().unwrap() >= 2);
    assert_eq!(mounts[1]["kind"], "objects");
    assert!(mounts[1]["store"]["bytes"].as_u64().unwrap() >= genome.len() as u64);
    assert!(doc["cache"]["memory_bytes"].as_u64().unwrap() > 0);
    assert!(doc["cache"]["memory_bytes"].as_u64().unwrap() <= 128 << 20);
    assert!(doc["memory"]["rss_kib"].as_u64().unwrap() > 0);
    drop(open);
    let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(["status", "--control-socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tools") && text.contains("hit ratio"),
        "{text}"
    );

    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(!is_mounted(&images) && !is_mounted(&objects));
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains(autosquash_testkit::garage::SECRET)
    );
}

#[test]
fn status_without_a_daemon_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args(["status", "--control-socket", "/nonexistent/control.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is autosquash serve running?"));
}

#[test]
#[cfg_attr(
    not(all(feature = "root-tests", feature = "s3-tests")),
    ignore = "root-tests and s3-tests rings, need root and Garage: sudo bash tests/run"
)]
fn a_pushed_tarball_shows_up_in_a_running_daemon_without_restart() {
    let garage = Garage::start("pushed");
    let dir = open_tempdir();
    let work = dir.path();
    let tree = work.join("course");
    std::fs::create_dir_all(tree.join("data")).unwrap();
    std::fs::write(tree.join("data/reads.fq"), pseudo_random_bytes(3, 300_000)).unwrap();
    std::fs::write(tree.join("README"), "course material\n").unwrap();
    let tarball = work.join("course.tar.gz");
    let ok = Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    let mnt = work.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let s3 = ["--endpoint-url", &garage.endpoint, "--force-path-style"];
    let mut args = vec!["--list-interval", "1h"];
    args.extend(s3);
    let _daemon =
        common::Daemon::start_with_env("s3://pushed/autosquash/", &mnt, &args, &garage.env());
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    let out = Command::new(env!("CARGO_BIN_EXE_autosquash"))
        .args([
            "push",
            tarball.to_str().unwrap(),
            "s3://pushed/autosquash/course.squash",
            "--quiet",
        ])
        .args(s3)
        .envs(garage.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The listing is an hour old, but a lookup of the new name asks the store at once.
    assert_eq!(
        std::fs::read_to_string(mnt.join("course/README")).unwrap(),
        "course material\n"
    );
    assert_eq!(
        std::fs::read(mnt.join("course/data/reads.fq")).unwrap(),
        pseudo_random_bytes(3, 300_000)
    );
    // The kernel caches the root listing; the daemon invalidates it at its next tick.
    wait_for(
        Duration::from_secs(5),
        "the root listing to show it",
        || {
            std::fs::read_dir(&mnt)
                .unwrap()
                .any(|e| e.unwrap().file_name() == "course")
        },
    );
}
