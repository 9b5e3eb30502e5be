#!/usr/bin/env bash
# The Debian mirror this machine's apt already uses, for tools that build a guest image
# (mmdebstrap) or fetch a .deb: no package registry host is written in this tree, the mirror is
# only ever read from /etc/apt. Source it and call apt_mirror [SUITE], or run it to print.
#
# apt_mirror [SUITE]  prints the URI of the first apt source that carries SUITE (default: this
#                     machine's VERSION_CODENAME, e.g. bookworm) for binary packages: deb822
#                     stanzas in /etc/apt/sources.list.d/*.sources (Types: deb, Suites: SUITE,
#                     URIs: …; Enabled: no skipped), then one-line `deb [opts] URI SUITE …` lines
#                     in /etc/apt/sources.list and /etc/apt/sources.list.d/*.list. Fails (status
#                     1, nothing printed) when there is none.

apt_mirror() {
  local suite=${1:-} f
  if [ -z "$suite" ]; then
    # shellcheck disable=SC1091
    suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  fi
  [ -n "$suite" ] || return 1
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # Stanzas are separated by blank lines; keys are case-insensitive; values may span lines
    # only for Signed-By, which is not read here.
    awk -v suite="$suite" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && enabled != "no" && uri != "") {
          print uri; found = 1; exit
        }
        types = ""; suites = ""; uri = ""; enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { key = tolower($1); $1 = ""; sub(/^[ \t]+/, "") }
      key == "types:" { types = $0 }
      key == "suites:" { suites = $0 }
      key == "uris:" { split($0, u, /[ \t]+/); uri = u[1] }
      key == "enabled:" { enabled = tolower($0) }
      END { if (!found) flush() }
    ' "$f" | head -n 1 | grep . && return 0
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      $1 != "deb" { next }
      { i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ } }
      $(i + 1) == suite { print $i; exit }
    ' "$f" | head -n 1 | grep . && return 0
  done
  return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  apt_mirror "$@" || { echo "no apt source for suite ${1:-of /etc/os-release} in /etc/apt" >&2; exit 1; }
fi
