"""`python -m vlm2_ros.node --ros-args ...`: run vlm2_node (the node lives in vlm2_ros.ros.node)."""
import sys

from vlm2_ros.ros.node import main

if __name__ == "__main__":
    sys.exit(main())
