"""The ROS 2 side of vlm2_ros: message conversion (no rclpy needed) and, later, the node.

The rest of the package (model, engine, simulator) imports nothing from here, so it runs
without ROS.
"""
