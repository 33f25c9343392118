#!/bin/sh
# Renders the edge's nginx templates the way the official nginx image's entrypoint does
# (/docker-entrypoint.d/20-envsubst-on-templates.sh): every FILE.template under the template directory becomes
# FILE under the output directory (subdirectories kept), with ${NAME} and $NAME replaced by the value of the
# environment variable NAME, for the variables whose names match ^EDGE_ only. nginx's own variables ($uri,
# $host, ...) are left alone.
#
# Unlike the image's script it refuses to render when a template references an EDGE_ variable that is unset or
# empty: it names the variable and the template line, writes nothing and exits 1. (Left unrendered, "${EDGE_X}"
# would reach nginx, which can read it as one of its own variables and silently misbehave.)
#
# Usage: render.sh [TEMPLATE_DIR [OUTPUT_DIR]]
# Defaults: /etc/nginx/edge-templates and /etc/nginx/edge.d, so that the image's entrypoint can run it as
# /docker-entrypoint.d/15-edge-render.sh (it runs every executable *.sh there, and stops on a failure).
# The templates are deliberately not in /etc/nginx/templates, where the image's own script would render them
# without these checks. The test suite renders with an equivalent Rust function and compares both outputs.
# Needs only sh, find, sort, awk and mkdir.
set -eu

template_dir=${1:-/etc/nginx/edge-templates}
output_dir=${2:-/etc/nginx/edge.d}
suffix=.template

die() {
    echo "render.sh: $*" >&2
    exit 1
}

[ -d "$template_dir" ] || die "template directory $template_dir does not exist"

# One awk program for both passes. mode=check prints "FILE:LINE: NAME is not set" for every reference to an
# EDGE_ variable that is unset or empty (and for an unterminated "${EDGE_"); mode=render prints the text with
# the references replaced.
substitute='
BEGIN { failed = 0 }
{
    line = $0
    out = ""
    while ((i = index(line, "$")) > 0) {
        out = out substr(line, 1, i - 1)
        rest = substr(line, i + 1)
        braced = substr(rest, 1, 1) == "{"
        body = braced ? substr(rest, 2) : rest
        if (match(body, /^[A-Za-z_][A-Za-z0-9_]*/) && substr(body, 1, 5) == "EDGE_") {
            name = substr(body, 1, RLENGTH)
            after = substr(body, RLENGTH + 1)
            if (braced && substr(after, 1, 1) != "}") {
                if (mode == "check") print FILENAME ":" FNR ": unterminated ${" name
                failed = 1
                out = out "$"
                line = rest
                continue
            }
            if (!(name in ENVIRON) || ENVIRON[name] == "") {
                if (mode == "check") print FILENAME ":" FNR ": " name " is not set"
                failed = 1
            }
            out = out ENVIRON[name]
            line = braced ? substr(after, 2) : after
            continue
        }
        out = out "$"
        line = rest
    }
    if (mode == "render") print out line
}
END { exit failed }
'

templates=$(find "$template_dir" -follow -type f -name "*$suffix" | sort)
[ -n "$templates" ] || die "no *$suffix files in $template_dir"

# Pass 1: every template, before anything is written.
problems=$(
    echo "$templates" | while IFS= read -r template; do
        awk -v mode=check "$substitute" "$template" || true
    done
)
if [ -n "$problems" ]; then
    echo "$problems" | sed 's/^/render.sh: /' >&2
    die "not rendering: set the variables above (docs/edge.md lists them, conf/nginx/edge.env has defaults)"
fi

# Pass 2: render each template to a temporary file, then move it into place.
echo "$templates" | while IFS= read -r template; do
    relative=${template#"$template_dir"/}
    output="$output_dir/${relative%"$suffix"}"
    mkdir -p "$(dirname "$output")"
    awk -v mode=render "$substitute" "$template" >"$output.tmp"
    mv "$output.tmp" "$output"
    echo "render.sh: $template -> $output"
done
