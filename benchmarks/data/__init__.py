"""Data: video and image datasets in their official layouts (``datasets.py``) and the motion
benchmark, generated (``motion.py``)."""
