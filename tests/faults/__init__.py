"""Fault injection for profilestream: a seeded event stream, a cluster of real
worker processes to break, and end-of-run checks against ``tests.reference``.

``scripts/faults.py`` runs the scenarios from the command line;
``tests/test_faults.py`` runs the CI-sized ones.
"""
