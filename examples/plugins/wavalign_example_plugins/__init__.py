"""A worked example of wavalign-ray plug-ins, outside the project: a reward function, a reward class
and a speech decoder, named in pipeline.yaml by import path and shipped to the workers with
run.runtime_env.py_modules (README: "Your own rewards and decoder")."""
