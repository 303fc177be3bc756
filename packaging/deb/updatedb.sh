# updatedb_prune add|remove: adds autosquash's entries to, or removes them from, PRUNEFS and
# PRUNEPATHS in /etc/updatedb.conf, so that the daily updatedb (plocate, mlocate) does not
# crawl every image of the bucket (each lookup mounts an image; a crawl reads them all).
#  - PRUNEFS gets fuse.autosquash, the type of the daemon's mounts (it passes
#    subtype=autosquash to the kernel): this covers every mountpoint of the config.
#  - PRUNEPATHS also gets the package's mountpoint, /mnt/autosquash, as a second guard
#    (daemons older than the subtype option showed plain "fuse").
# plocate reads only this file (no drop-in directory; its --add-prunepaths flag is for
# callers of updatedb), hence the edit. Each word is added once, and only that word is
# removed on purge; other lines and words are kept as they are. The file belongs to
# plocate: the package's trigger on it redoes the edit when plocate is installed later or
# its upgrade replaces the file.
# This text is included in postinst and postrm by packaging/build-deb.sh.
UPDATEDB_CONF=/etc/updatedb.conf

updatedb_prune() {
	[ -f "$UPDATEDB_CONF" ] || return 0
	_tmp=$(mktemp "$UPDATEDB_CONF.autosquash.XXXXXX")
	awk -v op="$1" '
	BEGIN { want["PRUNEFS"] = "fuse.autosquash"; want["PRUNEPATHS"] = "/mnt/autosquash" }
	{
		for (var in want) {
			if (match($0, "^[ \t]*" var "[ \t]*=[ \t]*\"")) {
				seen[var] = 1
				pre = substr($0, 1, RLENGTH)
				rest = substr($0, RLENGTH + 1)
				q = index(rest, "\"")
				if (q == 0) break
				# Rebuild the quoted list: the word kept once (add) or dropped (remove).
				n = split(substr(rest, 1, q - 1), w, /[ \t]+/)
				list = ""
				found = 0
				for (i = 1; i <= n; i++) {
					if (w[i] == "") continue
					if (w[i] == want[var]) {
						if (found || op == "remove") continue
						found = 1
					}
					list = list (list == "" ? "" : " ") w[i]
				}
				if (op == "add" && !found) list = list (list == "" ? "" : " ") want[var]
				$0 = pre list substr(rest, q)
				break
			}
			if ($0 ~ "^[ \t]*" var "[ \t]*=") { seen[var] = 1; break }
		}
		print
	}
	END {
		if (op != "add") exit
		for (var in want) if (!(var in seen)) print var "=\"" want[var] "\""
	}' "$UPDATEDB_CONF" >"$_tmp" || { rm -f "$_tmp"; return 1; }
	if cmp -s "$_tmp" "$UPDATEDB_CONF"; then
		rm -f "$_tmp"
	else
		chmod --reference="$UPDATEDB_CONF" "$_tmp"
		chown --reference="$UPDATEDB_CONF" "$_tmp"
		mv -f "$_tmp" "$UPDATEDB_CONF"
	fi
}
