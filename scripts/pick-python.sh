#!/usr/bin/env bash
# Prints the interpreter to build .venv from: the newest Python >= 3.11 that can create a venv,
# preferring the distribution's own build (/usr/bin). Debian's python3.11 is statically linked
# and PGO-built: it starts ~1.5 ms faster than a pyenv build with a shared libpython, which is a
# tenth of a Nagios check's whole wall time (bench/check_vs_sipsak.sh).
set -u
for py in /usr/bin/python3.14 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11 \
          python3.14 python3.13 python3.12 python3.11 python3; do
    path=$(command -v "$py" 2>/dev/null) || continue
    if "$path" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "$path"
        exit 0
    fi
done
echo "pick-python: no Python >= 3.11 with the venv and ensurepip modules (apt-get install python3-venv)" >&2
exit 1
