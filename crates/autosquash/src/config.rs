//! The configuration file (`/etc/autosquash/config.toml`): every serve flag, plus several
//! mounts served by one daemon sharing one cache. Flags given on the command line override it.
//! Unknown keys are errors (with their line), so a typo never silently does nothing.

use crate::source::S3Args;
use crate::units::{parse_duration, parse_size};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/autosquash/config.toml";
pub const DEFAULT_SOCKET: &str = "/run/autosquash/control.sock";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/autosquash";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub version: u32,
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub s3: S3Section,
    #[serde(default, rename = "mount")]
    pub mounts: Vec<MountSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    pub memory_limit: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub cache_size: Option<String>,
    /// Largest image fetched whole into the disk cache once used ("0": never).
    pub hydrate_max: Option<String>,
    /// Bytes per second one image's hydration may fetch ("0": no limit).
    pub hydrate_bandwidth: Option<String>,
    pub control_socket: Option<PathBuf>,
    pub wait_for_store: Option<bool>,
    /// Address (`host:port`) on which to serve `GET /metrics`; unset: no HTTP listener.
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: Option<bool>,
    pub no_sign_request: Option<bool>,
    pub profile: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// One directory per `<name>.squash` image.
    #[default]
    Images,
    /// The objects themselves as read-only files (like an s3fs mount).
    Objects,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSection {
    pub source: String,
    pub mountpoint: PathBuf,
    #[serde(default)]
    pub view: View,
    pub idle_timeout: Option<String>,
    pub list_interval: Option<String>,
    pub negative_ttl: Option<String>,
    pub allow_other: Option<bool>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Fetch the whole of each image in use into the disk cache (default true).
    pub hydrate: Option<bool>,
}

/// Reads `path`; `None` when no path was asked for and the default file does not exist.
pub fn load(path: Option<&Path>) -> Result<Option<ConfigFile>> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_PATH), false),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let config: ConfigFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if config.version != 1 {
        bail!(
            "{}: unsupported version {} (this autosquash reads version 1)",
            path.display(),
            config.version
        );
    }
    Ok(Some(config))
}

/// One mount, every value resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct MountSpec {
    pub source: String,
    pub mountpoint: PathBuf,
    pub view: View,
    pub idle_timeout: Duration,
    pub list_interval: Duration,
    pub negative_ttl: Duration,
    pub allow_other: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub hydrate: bool,
}

impl MountSection {
    pub fn resolve(&self) -> Result<MountSpec> {
        let duration = |v: &Option<String>, default: &str| -> Result<Duration> {
            parse_duration(v.as_deref().unwrap_or(default)).map_err(anyhow::Error::msg)
        };
        Ok(MountSpec {
            source: self.source.clone(),
            mountpoint: self.mountpoint.clone(),
            view: self.view,
            idle_timeout: duration(&self.idle_timeout, "5m")?,
            list_interval: duration(&self.list_interval, "60s")?,
            negative_ttl: duration(&self.negative_ttl, "60s")?,
            allow_other: self.allow_other.unwrap_or(false),
            uid: self.uid,
            gid: self.gid,
            hydrate: self.hydrate.unwrap_or(true),
        })
    }
}

fn size(value: &Option<String>) -> Result<Option<u64>> {
    value
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(anyhow::Error::msg)
}

impl ConfigFile {
    pub fn memory_limit(&self) -> Result<Option<u64>> {
        self.daemon
            .memory_limit
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(anyhow::Error::msg)
    }

    pub fn cache_size(&self) -> Result<Option<u64>> {
        size(&self.daemon.cache_size)
    }

    pub fn hydrate_max(&self) -> Result<Option<u64>> {
        size(&self.daemon.hydrate_max)
    }

    pub fn hydrate_bandwidth(&self) -> Result<Option<u64>> {
        size(&self.daemon.hydrate_bandwidth)
    }

    /// S3 settings of the file, overridden by the ones given as flags.
    pub fn s3_with(&self, flags: &S3Args) -> Result<S3Args> {
        let f = &self.s3;
        let timeout = match (flags.timeout, &f.timeout) {
            (Some(t), _) => Some(t),
            (None, Some(t)) => Some(
                crate::source::positive_duration(t)
                    .map_err(|e| anyhow::anyhow!("s3.timeout: {e}"))?,
            ),
            (None, None) => None,
        };
        Ok(S3Args {
            region: flags.region.clone().or_else(|| f.region.clone()),
            endpoint_url: flags
                .endpoint_url
                .clone()
                .or_else(|| f.endpoint_url.clone()),
            force_path_style: flags.force_path_style || f.force_path_style.unwrap_or(false),
            no_sign_request: flags.no_sign_request || f.no_sign_request.unwrap_or(false),
            profile: flags.profile.clone().or_else(|| f.profile.clone()),
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ConfigFile>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path))
    }

    #[test]
    fn a_full_file_parses_and_resolves() {
        let c = parse(
            r#"version = 1
[daemon]
memory_limit = "512M"
metrics_listen = "127.0.0.1:9753"
[s3]
region = "eu-west-1"
[[mount]]
source = "s3://bucket/autosquash/"
mountpoint = "/mnt/autosquash"
idle_timeout = "10m"
allow_other = true
[[mount]]
source = "s3://bucket/"
mountpoint = "/mnt/s3fs"
view = "objects"
"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.memory_limit().unwrap(), Some(512 << 20));
        assert_eq!(c.daemon.metrics_listen.as_deref(), Some("127.0.0.1:9753"));
        assert_eq!(c.mounts.len(), 2);
        let m = c.mounts[0].resolve().unwrap();
        assert_eq!(m.idle_timeout, Duration::from_secs(600));
        assert!(m.allow_other);
        assert_eq!(c.mounts[1].view, View::Objects);
        let flags = S3Args {
            region: Some("us-east-2".into()),
            ..S3Args::default()
        };
        assert_eq!(
            c.s3_with(&flags).unwrap().region.as_deref(),
            Some("us-east-2")
        );
        assert_eq!(
            c.s3_with(&S3Args::default()).unwrap().region.as_deref(),
            Some("eu-west-1")
        );
    }

    #[test]
    fn unknown_keys_and_versions_are_rejected_with_the_line() {
        let err = parse("version = 1\n[daemon]\nmemroy_limit = \"1G\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("memroy_limit"),
            "{err}"
        );
        let err = parse("version = 2\n").unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        assert!(
            parse("[daemon]\n").is_err(),
            "a file without version was accepted"
        );
        assert!(load(Some(Path::new("/nonexistent/x.toml"))).is_err());
    }
}
