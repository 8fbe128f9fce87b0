"""The driver: what launch.py narrates (the run's state and each phase of a step: prompts, rollouts,
rewards, learner, weights, outputs, checkpoints), and the commands built on runs (ablation, report).
The top layer: it imports actors/, learner/, rewards/ and the wavalign/ base; nothing imports it
but launch.py, benchmarks/ and tests/."""
