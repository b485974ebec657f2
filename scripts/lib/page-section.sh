# shellcheck shell=bash
# Sourced by the benchmark scripts that write their own section of
# docs/benchmarks.md.
#
# splice_section PAGE SECTION BEGIN END KEEP: the lines of file SECTION
# replace those from the line BEGIN to the line END in PAGE; without them,
# SECTION is added at the end, below the KEEP line (added too when
# missing) so that scripts/bench-vs-peers.sh keeps it.
splice_section() {
    local page=$1 section=$2 begin=$3 end=$4 keep=$5 tmp
    tmp=$(mktemp)
    if [ -f "$page" ] && grep -qxF "$begin" "$page"; then
        awk -v b="$begin" -v e="$end" -v f="$section" '
            $0 == b { while ((getline line < f) > 0) print line; skip = 1; next }
            skip && $0 == e { skip = 0; next }
            !skip { print }' "$page" >"$tmp"
    else
        { [ -f "$page" ] && cat "$page"
          if [ ! -f "$page" ] || ! grep -qxF "$keep" "$page"; then echo; echo "$keep"; fi
          echo; cat "$section"; } >"$tmp"
    fi
    mv "$tmp" "$page"
}
