"""``report.py``'s work: which rows are read (``rows.py``) and which devices they come from
(``devices.py``), the paper's tables (``paper_tables.py``, ``paper_accuracy.py``), the claims
(``claims.py``), efficiency per device (``efficiency.py``), footnote 5 (``wallclock.py``), the
motion benchmark (``motion.py``), data loading (``loading.py``), figures (``figures.py``), and the
report put together (``render.py``)."""
