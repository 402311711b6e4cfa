"""Evaluation of runs on their protocol (the metrics themselves are attnhash.metrics), plots and reports."""
