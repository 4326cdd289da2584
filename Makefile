# Two commands for users: `make demo` and `make test`. Everything else here is how they set up.
# Set-up is incremental: the venv is rebuilt only when requirements.txt or setup.py change, and the
# ROS interfaces only when requirements-ros.txt or the package's interface/build files change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# ROS 2 wheels (requirements-ros.txt), then msg/srv/action built into vlm2_ros/{msg,srv,action}
# by tools/build_ros_interfaces.sh (generated beside the editable source package: see that script).
ROS_STAMP := $(VENV)/.ros-installed
IFACE_STAMP := vlm2_ros/msg/.built
IFACE_SRCS := $(wildcard msg/*.msg srv/*.srv action/*.action) CMakeLists.txt package.xml \
	cmake/vlm2_python_include_fixes.cmake tools/build_ros_interfaces.sh

.PHONY: all venv ros-interfaces test demo bench clean

all: test

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip==26.3 setuptools==84.2.1 wheel==0.48.0

$(STAMP): requirements.txt setup.py | $(VPY)
	$(VPY) -m pip install --quiet -r requirements.txt
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(ROS_STAMP): requirements-ros.txt $(STAMP)
	$(VPY) -m pip install --quiet -r requirements-ros.txt -c requirements.txt
	touch $@

$(IFACE_STAMP): $(IFACE_SRCS) $(ROS_STAMP)
	bash tools/build_ros_interfaces.sh $(VENV)
	touch $@

ros-interfaces: $(IFACE_STAMP)

venv: $(STAMP) $(IFACE_STAMP)

# VLM2_REQUIRE_ROS=1: the ROS interface tests fail (rather than skip) if the interfaces built
# above do not import.
test: venv
	VLM2_REQUIRE_ROS=1 $(VPY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/vlm2 demo

clean:
	rm -rf $(VENV) build *.egg-info vlm2_ros/msg vlm2_ros/srv vlm2_ros/action vlm2_ros/*.so
