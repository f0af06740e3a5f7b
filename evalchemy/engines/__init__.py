"""Evaluation engines that run a plan's tasks against a backend."""
