"""VLM² model components: one module per idea, no ROS."""
