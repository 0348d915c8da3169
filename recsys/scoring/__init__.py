"""Scoring every user: the worker-side top-N logic and the Spark mapInArrow stage."""
