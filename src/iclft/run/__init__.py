"""The experiment: one config in, one run directory out.

* :mod:`iclft.run.config`: the experiment configuration (one YAML file, one pydantic model);
* :mod:`iclft.run.plan`: its stages, in the order they run;
* :mod:`iclft.run.stages`: what each stage kind does, and the context they share;
* :mod:`iclft.run.runner`: runs the plan into a run directory, resumable at any moment;
* :mod:`iclft.run.rescore`: rescoring a run directory's saved outputs under another protocol.
"""
