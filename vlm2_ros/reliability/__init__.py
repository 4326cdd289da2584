"""Reliability under load, faults and bad input: soak, crash loop, bad-input matrix, fuzzing,
unsafe-loading scan, and the report that runs them all (`vlm2 bench reliability-report`).

Only the modules that drive a node (node_process, soak, crash_loop, bad_inputs) import ROS, and
only inside the functions that need it.
"""
