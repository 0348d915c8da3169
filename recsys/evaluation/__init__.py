"""Offline evaluation (DESIGN §6): metrics, protocols, baselines and the report."""
