//! Writing the image with the system's mksquashfs (`--mksquashfs`); the built-in writer is
//! [`super::image`].

use super::*;

pub fn with_mksquashfs(src: &Path, out: &Path, opts: &BuildArgs) -> Result<()> {
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(src)
        .arg(out)
        .args(["-noappend", "-no-progress", "-quiet"])
        .args(["-b", &opts.block_size.to_string()]);
    match opts.compression {
        Compression::None => cmd.args(["-noI", "-noD", "-noF", "-noX"]),
        c => cmd.args(["-comp", c.name()]),
    };
    if let Some(level) = opts.level {
        match opts.compression {
            Compression::Zstd | Compression::Gzip => {
                cmd.args(["-Xcompression-level", &level.to_string()])
            }
            c => bail!(
                "--level with --mksquashfs: mksquashfs has no level for {}",
                c.name()
            ),
        };
    }
    if opts.all_root {
        cmd.arg("-all-root");
    }
    if let Some(uid) = opts.force_uid {
        cmd.args(["-force-uid", &uid.to_string()]);
    }
    if let Some(gid) = opts.force_gid {
        cmd.args(["-force-gid", &gid.to_string()]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow!("mksquashfs is not installed (squashfs-tools)"),
            _ => anyhow!("cannot run mksquashfs: {e}"),
        })?;
    if !out.status.success() {
        bail!(
            "mksquashfs failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
