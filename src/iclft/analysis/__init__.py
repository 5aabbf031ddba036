"""Mechanistic analysis: anatomy (named places in a model), activation capture, activation and
attribution patching, circuits and circuit shift.

Importing this package does not import torch; import the submodules.
"""
