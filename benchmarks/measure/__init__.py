"""What is measured: cost (``cost.py``), memory (``memory.py``), speed (``speed.py``) with the one
timing discipline (``timing.py``) and the machine's peak (``peak.py``), the loader against the model
(``loader.py``), where a step's time goes (``profile.py``) and the fiber convs one by one
(``fiber_convs.py``); every model under the same ``Workload`` (``workload.py``)."""
