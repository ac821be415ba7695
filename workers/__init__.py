"""The top layer: stream stages, one module each (``text``, ``classify``, ``trainer``, ``profiles``, ``catalogue``),
and the composition root (``cli``, ``launcher``, ``benchmarks``) that wires them."""

#: The stream stages, one module each; what ``stylestream worker`` runs and ``stylestream up`` starts.
STAGES = ("text", "classify", "trainer", "profiles", "catalogue")
