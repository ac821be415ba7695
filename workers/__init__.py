"""The top layer: stream stages, one module each (``text``, ``classify``, ``trainer``), and the composition root
(``cli``, ``launcher``, ``benchmarks``) that wires them."""
