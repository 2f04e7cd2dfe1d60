"""What a run writes and reads back: atomic files (:mod:`.atomic`) and checkpoints (:mod:`.checkpoint`).

The lowest layer with files: models, training, scoring and evaluation all use it, it uses none of them.
"""
