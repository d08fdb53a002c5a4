#!/bin/sh
# How TaskLib is built and installed as its users receive it. The Dockerfile runs this script, and
# so does the release tier of the test suite (tests/release), so the image's recipe is tested.
#
#   release.sh build SRC OUT                 the sdist and the wheel of the checkout SRC, into OUT
#   release.sh install ARTIFACT PREFIX [EXTRAS]
#                                            a new virtual environment at PREFIX holding ARTIFACT (a
#                                            wheel or an sdist) and its dependencies, nothing else
#
# uv does the same work faster where it is on PATH (the test suite); pip otherwise (the image).
set -eu

usage() { echo "usage: release.sh build SRC OUT | install ARTIFACT PREFIX [EXTRAS]" >&2; exit 2; }
PYTHON=${PYTHON:-python3}

case "${1:-}" in
  build)
    [ $# -eq 3 ] || usage
    if command -v uv >/dev/null 2>&1; then installer="--installer uv"; else installer=""; fi
    # Isolated (PEP 517): the build sees only the build requirements pyproject.toml names.
    # shellcheck disable=SC2086
    "$PYTHON" -m build $installer --outdir "$3" "$2"
    ;;
  install)
    [ $# -eq 3 ] || [ $# -eq 4 ] || usage
    artifact=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
    [ -f "$artifact" ] || { echo "release.sh: no such artifact: $2" >&2; exit 2; }
    requirement="tasklib${4:+[$4]} @ file://$artifact"
    if command -v uv >/dev/null 2>&1; then
      uv venv --quiet --python "$PYTHON" "$3"
      uv pip install --quiet --python "$3/bin/python" "$requirement"
    else
      "$PYTHON" -m venv "$3"
      "$3/bin/python" -m pip install --quiet --no-cache-dir "$requirement"
    fi
    ;;
  *) usage ;;
esac
