"""Driver-side pieces of the training pipeline that launch.py narrates: the prompt stream, step
assembly, run outputs, dashboard metrics and checkpoints."""
