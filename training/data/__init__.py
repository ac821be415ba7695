"""The Table II benchmark (``benchmark``): synthetic garments with captions and the hints the text miner
mines from them (``captions``).

Import the submodules themselves: this face imports nothing.
"""
