"""Text mining (paper §III.A): post text → ranked fashion hints (``hints/v1``).

Usage::

    miner = TextMiner.load(ontology)
    hints = miner.mine(post)
"""

from training.text.miner import TextMiner

__all__ = ["TextMiner"]
