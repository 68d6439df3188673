"""The machine a run is on: where it happened (``environment.py``), other processes' CPU time
(``contention.py``), whether a timing was disturbed (``disturbance.py``), and the process's runtime
settings (``runtime.py``: freed memory kept, the GPU policy)."""
