"""The streaming engine: the one API every caller (ROS node, bag replay, evaluation) uses."""
