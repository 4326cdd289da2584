#!/usr/bin/env bash
# Build the package's msg/srv/action interfaces against the ROS 2 wheels installed in a venv and
# make them importable there as vlm2_ros.msg / vlm2_ros.srv / vlm2_ros.action.
#
#   tools/build_ros_interfaces.sh [VENV]      (default: .venv; run by `make ros-interfaces`)
#
# The same CMakeLists.txt as a real ROS 2 install (colcon) is configured with plain CMake:
# - CMAKE_PREFIX_PATH and AMENT_PREFIX_PATH point at the venv, where the ros-* wheels put their
#   CMake configs and ament index (without AMENT_PREFIX_PATH: "No 'rosidl_typesupport_c' found").
# - VLM2_INSTALL_PYTHON=OFF: pip installs the vlm2_ros package itself, editable, from the tree.
# - The install goes to a staging prefix; from there the shared libraries go to <venv>/lib
#   (on LD_LIBRARY_PATH through ros_wheels_bootstrapper's re-exec of the venv's Python) and the
#   generated Python modules to the gitignored vlm2_ros/msg, srv, action folders and
#   vlm2_ros/vlm2_ros_s__*.so of the source tree. Generating beside the source, rather than
#   into site-packages, keeps one vlm2_ros package on sys.path: a second vlm2_ros in
#   site-packages would shadow the editable source package, or be shadowed by it.
# The build folder is kept, so a second run rebuilds only what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-$ROOT/.venv}" && pwd)"
BUILD="$ROOT/build/ros_interfaces"
STAGE="$BUILD/install"
PY="$VENV/bin/python"
JOBS="${JOBS:-2}"

[ -x "$PY" ] || { echo "build_ros_interfaces: no Python at $PY" >&2; exit 1; }
# cmake, g++ and make are on the project's base image; install them where they are missing.
missing=""
for tool in cmake g++ make; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "build_ros_interfaces: installing$missing (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake g++ make >/dev/null
  else
    echo "build_ros_interfaces: missing$missing; install them (Debian: apt-get install cmake g++ make)" >&2
    exit 1
  fi
fi
"$PY" - <<'PYEOF' || { echo "build_ros_interfaces: Python.h not found for $PY (Debian's python3: apt-get install python3-dev)" >&2; exit 1; }
import os, sysconfig
raise SystemExit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PYEOF

export CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
start=$(date +%s)
cmake -S "$ROOT" -B "$BUILD" --log-level=WARNING \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$STAGE" \
  -DPython3_EXECUTABLE="$PY" \
  -DPython3_FIND_VIRTUALENV=ONLY \
  -DVLM2_INSTALL_PYTHON=OFF \
  -DBUILD_TESTING=OFF
cmake --build "$BUILD" -j "$JOBS" -- --no-print-directory >"$BUILD/build.log" 2>&1 \
  || { tail -n 60 "$BUILD/build.log" >&2; echo "build_ros_interfaces: build failed, full log: $BUILD/build.log" >&2; exit 1; }
rm -rf "$STAGE"
cmake --install "$BUILD" >/dev/null

site="$(echo "$STAGE"/lib/python3*/site-packages/vlm2_ros)"
[ -d "$site/msg" ] || { echo "build_ros_interfaces: no generated Python package in $STAGE" >&2; exit 1; }
# Libraries: copy (not symlink) so the venv does not depend on the build folder.
cp -f "$STAGE"/lib/libvlm2_ros__*.so "$VENV/lib/"
# Python: replace the generated folders and extension modules wholesale (stale types go away).
rm -rf "$ROOT/vlm2_ros/msg" "$ROOT/vlm2_ros/srv" "$ROOT/vlm2_ros/action" "$ROOT"/vlm2_ros/vlm2_ros_s__*.so
cp -r "$site/msg" "$site/srv" "$site/action" "$ROOT/vlm2_ros/"
cp -f "$site"/vlm2_ros_s__*.so "$ROOT/vlm2_ros/"
# Check in a fresh interpreter (the bootstrapper re-exec sets LD_LIBRARY_PATH).
(cd "$ROOT" && env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE -u PYTHONPATH "$PY" -c \
  "from vlm2_ros.msg import MemoryStatus; from vlm2_ros.srv import SpatialQuery; from vlm2_ros.action import Ask")
echo "build_ros_interfaces: vlm2_ros.msg/srv/action built and installed in $(( $(date +%s) - start )) s"
