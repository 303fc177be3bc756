#!/usr/bin/env bash
# Writes the autosquash(1) manual page to stdout, built from the binary's own --help texts
# so that it never disagrees with the program. Used by build-deb.sh.
# Usage: bash packaging/manpage.sh path/to/autosquash VERSION
set -euo pipefail
bin=$1
version=$2
date=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%d)

# Text as a roff no-fill block: backslashes escaped, lines that would read as requests
# protected. Long lines are left as they are (clap does not wrap here).
verbatim() {
  echo ".nf"
  sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/" -e 's/-/\\-/g'
  echo ".fi"
}

commands=$("$bin" --help | awk '/^Commands:/ { on = 1; next } on && /^$/ { exit } on { print $1 }' | grep -vx help)

cat <<HEAD
.TH AUTOSQUASH 1 "$date" "autosquash $version" "User Commands"
.SH NAME
autosquash \\- squashfs images in an S3 bucket as read\\-only directories
.SH SYNOPSIS
.B autosquash
.I command
.RI [ options ]
.SH DESCRIPTION
.B autosquash serve
shows every
.IR name .squash
object under an S3 prefix (or in a local directory) as a read\\-only directory
.IR mountpoint / name ,
by default under
.IR /mnt/autosquash .
An image is mounted on its first lookup, read with ranged requests and
decompressed in the daemon, cached, and forgotten again when idle.
The Debian package runs it as the systemd service
.BR autosquash.service ,
configured in
.IR /etc/autosquash/config.toml .
The other commands look inside images, build and upload them, and report on the
running daemon.
.SH COMMANDS
HEAD
for c in $commands; do
  echo ".SS autosquash $c"
  "$bin" "$c" --help | verbatim
done
cat <<'TAIL'
.SH FILES
.TP
.I /etc/autosquash/config.toml
The configuration of
.BR "autosquash serve" :
the buckets, mountpoints and cache; see CONFIGURATION.md.gz below.
.TP
.I /etc/default/autosquash
Optional environment of the service (mode 0600), such as
.B AWS_ACCESS_KEY_ID
and
.B AWS_SECRET_ACCESS_KEY
where no EC2 instance role supplies credentials.
.TP
.I /run/autosquash/control.sock
Where
.B autosquash status
asks the daemon.
.SH ENVIRONMENT
.TP
.B AUTOSQUASH_LOG
A tracing filter for the log: info (the default of serve), debug, ...
.TP
.BR AWS_REGION ", " AWS_PROFILE ", " AWS_ACCESS_KEY_ID ", " AWS_SECRET_ACCESS_KEY ", " AWS_SESSION_TOKEN
The AWS SDK's usual settings; on EC2 the instance role is used without any.
.SH SEE ALSO
.BR fusermount3 (1),
.BR mksquashfs (1),
.BR systemctl (1);
INSTALL.md.gz, CONFIGURATION.md.gz, SEMANTICS.md.gz and TROUBLESHOOTING.md.gz in
.IR /usr/share/doc/autosquash/ .
TAIL
