"""Synthetic spatial world: seeded rooms, camera walks, a numpy ray caster, episodes and bags.

Pure Python (numpy); importable without ROS. See episode.py for the on-disk layout.
"""
