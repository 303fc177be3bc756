#!/usr/bin/env bash
# Builds the Debian package from a staging tree with dpkg-deb (no source package, no
# cargo-deb): target/debian/autosquash_<version>_<arch>.deb, whose path is printed last.
#
# Usage: bash packaging/build-deb.sh [--no-build]
#   --no-build   package target/release/autosquash as it is (default: cargo build --release)
# Environment: DEB_REVISION (default 1), DEB_MAINTAINER ("Name <address>"),
#   SOURCE_DATE_EPOCH (default: the last commit's date), CARGO_TARGET_DIR.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
build=1
for arg in "$@"; do
  case $arg in
    --no-build) build=0 ;;
    *) echo "build-deb.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { echo "build-deb: $*" >&2; }

if ((build)); then
  log "cargo build --release -p autosquash"
  cargo build --release --locked -p autosquash >&2
fi
binary=$target/release/autosquash
[[ -x $binary ]] || { log "$binary is missing (run without --no-build)"; exit 1; }

# Versions: the crate's, with a Debian revision. A Cargo pre-release (0.2.0-rc.1) sorts
# before its release in Debian only when written with a tilde (0.2.0~rc.1).
pkgid=$(cargo pkgid -p autosquash)
upstream=${pkgid##*[#@]}
version=${upstream/-/\~}-${DEB_REVISION:-1}
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-autosquash developers <autosquash@example.invalid>}
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}

out=$target/debian
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
doc=$stage/usr/share/doc/autosquash

# The files.
install -D -m 0755 "$binary" "$stage/usr/bin/autosquash"
# As dh_strip: the release profile keeps line tables (debug = 1) for backtraces in
# development; the package does not ship them.
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/autosquash"
install -D -m 0755 packaging/cleanup-mounts "$stage/usr/libexec/autosquash/cleanup-mounts"
install -D -m 0644 packaging/autosquash.service "$stage/lib/systemd/system/autosquash.service"
# Metrics for node_exporter's textfile collector: installed, not enabled (the postinst
# enables autosquash.service only).
install -D -m 0755 packaging/write-metrics "$stage/usr/libexec/autosquash/write-metrics"
install -D -m 0644 packaging/autosquash-metrics.service "$stage/lib/systemd/system/autosquash-metrics.service"
install -D -m 0644 packaging/autosquash-metrics.timer "$stage/lib/systemd/system/autosquash-metrics.timer"
install -D -m 0644 packaging/config.toml "$stage/etc/autosquash/config.toml"
install -D -m 0644 packaging/deb/lintian-overrides "$stage/usr/share/lintian/overrides/autosquash"
install -d "$doc"
install -m 0644 README.md "$doc/README.md"
for f in docs/INSTALL.md docs/CONFIGURATION.md docs/SEMANTICS.md docs/TROUBLESHOOTING.md; do
  [[ -f $f ]] && install -m 0644 "$f" "$doc/"
done
gzip -9n "$doc"/*.md
install -m 0644 packaging/deb/copyright "$doc/copyright"
# The crates compiled into the binary, and their licenses, appended to the copyright file.
{
  echo
  echo "Comment: The binary statically links these Rust crates (name version: license),"
  echo " as resolved by Cargo.lock for this build:"
  cargo tree --locked -p autosquash -e normal --prefix none --format ' {p}: {l}' 2>/dev/null |
    sed -e 's/ (\/[^)]*)//' -e 's/ (\*)$//' -e 's/^ \(.*\) v\([^:]*\):/ \1 \2:/' |
    grep -v '^ autosquash' | LC_ALL=C sort -u
} >>"$doc/copyright"
{
  printf 'autosquash (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Package of autosquash %s, built from commit %s.\n\n' "$upstream" "$commit"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz"
install -d "$stage/usr/share/man/man1"
bash packaging/manpage.sh "$binary" "$upstream" | gzip -9n >"$stage/usr/share/man/man1/autosquash.1.gz"
chmod 0644 "$stage/usr/share/man/man1/autosquash.1.gz"

# Maintainer scripts: the updatedb helper is pasted into the two that use it.
for script in postinst prerm postrm; do
  awk -v lib="$here/deb/updatedb.sh" '
    $0 == "#UPDATEDB#" { while ((getline line < lib) > 0) print line; next }
    { print }' "packaging/deb/$script" >"$stage/DEBIAN/$script"
  chmod 0755 "$stage/DEBIAN/$script"
done
install -m 0644 packaging/deb/conffiles packaging/deb/triggers "$stage/DEBIAN/"

# Depends: fuse3 (fusermount3, /etc/fuse.conf, and mount for cleanup-mounts) and the
# shared libraries of the binary, as dpkg-shlibdeps computes them for dh_shlibdeps.
shlibs=
shlib_dir=$(mktemp -d)
trap 'rm -rf "$shlib_dir"' EXIT
mkdir "$shlib_dir/debian"
printf 'Source: autosquash\n\nPackage: autosquash\nArchitecture: any\n' >"$shlib_dir/debian/control"
if line=$(cd "$shlib_dir" && dpkg-shlibdeps -O "-e$stage/usr/bin/autosquash" 2>/dev/null); then
  shlibs=${line#shlibs:Depends=}
fi
depends="fuse3, ${shlibs:-libc6 (>= 2.36)}"

installed_size=$(du -k -s --apparent-size --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$maintainer/" \
  -e "s/@DEPENDS@/$depends/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
  packaging/deb/control.in >"$stage/DEBIAN/control"

# md5sums of everything but the conffiles (dpkg keeps their sums itself).
(cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
  LC_ALL=C sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/control"

find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb=$out/autosquash_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
log "built $deb"
echo "$deb"
