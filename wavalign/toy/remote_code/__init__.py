"""Modeling code that a tiny test checkpoint ships beside its weights (its config's `auto_map`), as
VITA-Audio and GLM-4-Voice checkpoints ship theirs: loaded only with model.trust_remote_code.
These files are copied into the checkpoint; transformers imports them from there, not from here."""
