"""vlm2_ros: VLM² (Vision-Language Memory for Spatial Reasoning) as a streaming perception core.

Everything under this package except `vlm2_ros.ros` is importable without ROS.
"""
__version__ = "0.1.0"
