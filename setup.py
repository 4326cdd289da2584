"""pip/setuptools build of the vlm2_ros Python package (the venv route used by `make`).

On a real ROS 2 install colcon builds this directory through CMakeLists.txt (ament_cmake), which
also generates the msg/srv/action interfaces; this file is what `pip install -e .` uses.
"""
from setuptools import find_packages, setup

setup(
    name="vlm2_ros",
    version="0.1.0",
    description="VLM2 spatial-memory perception: geometry-aware dual-memory VLM as a ROS 2 node",
    license="Apache-2.0",
    packages=find_packages(include=["vlm2_ros", "vlm2_ros.*"]),
    include_package_data=True,
    package_data={"vlm2_ros": ["weights/**/*"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["vlm2 = vlm2_ros.cli:main", "vlm2_node = vlm2_ros.node:main"]},
)
