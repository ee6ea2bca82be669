"""``keras-clmr explain filters|listen|taggram|map``: see keras_clmr.interpret.command.

An argparse command (GNU-style options); it lives with the pictures in keras_clmr.interpret.
"""

from keras_clmr.interpret.command import main

__all__ = ["main"]
