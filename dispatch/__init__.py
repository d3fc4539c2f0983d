"""Optimisation: forecasts, scheduling with Pyomo and HiGHS, flexibility, bids, allocation."""
