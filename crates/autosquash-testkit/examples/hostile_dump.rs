//! Writes every crafted hostile image to `DIR/<name>.squash` for inspection by hand
//! (`unsquashfs -s` / `-lls`, a kernel mount): `cargo run -p autosquash-testkit --example
//! hostile_dump -- DIR`. Needs squashfs-tools, like the test kit.

fn main() {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: hostile_dump DIR");
        std::process::exit(2);
    };
    let out = std::path::Path::new(&out);
    std::fs::create_dir_all(out).expect("creating the output directory");
    let work = tempfile::tempdir().expect("a scratch directory");
    for h in autosquash_testkit::hostile::crafted(work.path()) {
        let path = out.join(format!("{}.squash", h.name));
        std::fs::write(&path, &h.bytes).expect("writing an image");
        println!("{}", path.display());
    }
}
